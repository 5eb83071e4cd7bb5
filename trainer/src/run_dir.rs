//! A run folder's layout, owned here and nowhere else:
//!
//! ```text
//! RUN_DIR/
//!   config.toml       the config the run was started with
//!   store.sqlite      the run store (rollout's `Store`): the source of truth for RL, evolution and evaluations
//!   metrics.jsonl     one JSON object per step, appended and flushed line by line (an export of the store)
//!   ideas.jsonl       one executed idea per line (an export of the store)
//!   checkpoints/      step-NNNNNNNN/ folders with a manifest
//!   work/             one folder per execution (its logs, the environment's files)
//!   baseline/         the baseline recipe's runs at several seeds (the noise floor), a run folder of its own
//!   evolve/           an evolutionary search's folder (config.toml, work/, database.json: its idea database)
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Result, TrainerError};

/// The run store's file name in a run folder.
pub const STORE_FILE: &str = "store.sqlite";

/// A run folder: its root and where each of its parts lives.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// The layout of the run folder at `root`, which need not exist.
    pub fn at(root: &Path) -> Self {
        RunDir { root: root.to_path_buf() }
    }

    /// Creates the folder. A fresh run refuses a folder that already holds checkpoints (resume it instead).
    pub fn create(root: &Path, resume: bool) -> Result<Self> {
        std::fs::create_dir_all(root.join("checkpoints"))
            .map_err(|e| TrainerError::Config(format!("cannot create run folder {}: {e}", root.display())))?;
        let dir = RunDir { root: root.to_path_buf() };
        if !resume && ideator_checkpoints::latest(&dir.checkpoints())?.is_some() {
            return Err(TrainerError::Config(format!(
                "{} already holds checkpoints of an earlier run; pass --resume to continue it or choose another --run-dir",
                root.display()
            )));
        }
        Ok(dir)
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn ideas_path(&self) -> PathBuf {
        self.root.join("ideas.jsonl")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn store_path(&self) -> PathBuf {
        self.root.join(STORE_FILE)
    }

    /// Where executions run, one folder each.
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    /// The baseline's own run folder (the noise floor's runs).
    pub fn baseline(&self) -> RunDir {
        RunDir::at(&self.root.join("baseline"))
    }

    /// An evolutionary search's own run folder inside an RL run's (config, work, idea database).
    pub fn evolution(&self) -> RunDir {
        RunDir::at(&self.root.join("evolve"))
    }

    /// Evolutionary search's exported idea database.
    pub fn evolution_database(&self) -> PathBuf {
        self.root.join("database.json")
    }

    /// Keeps a copy of the config the run was started with.
    pub fn write_config(&self, text: &str) -> Result<()> {
        let p = self.config_path();
        std::fs::write(&p, text).map_err(|e| TrainerError::Config(format!("cannot write {}: {e}", p.display())))
    }

    pub fn metrics(&self) -> Result<MetricsWriter> {
        MetricsWriter::open(&self.metrics_path())
    }
}

/// Appends one JSON object per line.
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainerError::Config(format!("cannot open {}: {e}", path.display())))?;
        Ok(MetricsWriter { file, path: path.to_path_buf() })
    }

    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_string(record).expect("JSON values serialise");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainerError::Config(format!("cannot write {}: {e}", self.path.display())))
    }
}

/// Keeps only the metric lines of steps before `step` (used on resume: steps after the checkpoint are redone).
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s < step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| TrainerError::Config(format!("cannot rewrite {}: {e}", path.display())))
}
