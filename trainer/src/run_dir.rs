//! A training run's folder: `config.toml` (as given), `metrics.jsonl` (one JSON object per step, appended and
//! flushed line by line so nothing is lost if the process dies), and `checkpoints/`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Result, TrainerError};

pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
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

    /// Keeps a copy of the config the run was started with.
    pub fn write_config(&self, text: &str) -> Result<()> {
        let p = self.root.join("config.toml");
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
