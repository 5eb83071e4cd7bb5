//! The run store: one SQLite file per run folder (`store.sqlite`) that is the source of truth for what was
//! sampled, launched, executed and trained. Every state change is committed before anything acts on it, so a
//! trainer killed at any moment finds on restart exactly which ideas are done (reuse), which were running
//! (re-attach or launch again) and which groups a lost policy update had consumed (train them again).
//!
//! WAL mode lets the pipeline's dispatcher thread and the learner thread each hold a connection and write
//! without blocking readers; `busy_timeout` makes writers queue instead of failing. Token ids and log-probs are
//! little-endian blobs (bit-exact round trip); metrics are JSON text.

mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ideator_envs::{ExecResult, FailureCause, Status};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::pipeline::StepRecord;
use crate::{Result, RolloutError};

pub use schema::MIGRATIONS;

/// The file name of the store inside a run folder.
pub use ideator_trainer::run_dir::STORE_FILE;

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub(crate) fn u32s_to_blob(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn blob_to_u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub(crate) fn f32s_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn blob_to_f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Lifecycle of an idea's execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdeaStatus {
    /// Sampled and stored, not launched yet.
    Pending,
    /// Launched on a backend (the job id, once known, is stored).
    Running,
    /// The result is stored.
    Done,
    /// Abandoned (shutdown with cancellation, or its group was dropped).
    Cancelled,
}

impl IdeaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IdeaStatus::Pending => "pending",
            IdeaStatus::Running => "running",
            IdeaStatus::Done => "done",
            IdeaStatus::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> IdeaStatus {
        match s {
            "pending" => IdeaStatus::Pending,
            "running" => IdeaStatus::Running,
            "done" => IdeaStatus::Done,
            _ => IdeaStatus::Cancelled,
        }
    }
}

/// Lifecycle of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    Executing,
    Complete,
    Trained,
    /// Too stale when it completed: never trained.
    Dropped,
    Cancelled,
}

impl GroupStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Executing => "executing",
            GroupStatus::Complete => "complete",
            GroupStatus::Trained => "trained",
            GroupStatus::Dropped => "dropped",
            GroupStatus::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> GroupStatus {
        match s {
            "executing" => GroupStatus::Executing,
            "complete" => GroupStatus::Complete,
            "trained" => GroupStatus::Trained,
            "dropped" => GroupStatus::Dropped,
            _ => GroupStatus::Cancelled,
        }
    }
}

/// What produced a run's ideas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// GRPO training (`ideator train`).
    Rl,
    /// Evolutionary search (`ideator evolve`).
    Evolve,
    /// A frozen ideator's best-of-N sample (`ideator eval`).
    Eval,
    /// The environment's baseline recipe at several seeds (its noise floor).
    Baseline,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Rl => "rl",
            RunKind::Evolve => "evolve",
            RunKind::Eval => "eval",
            RunKind::Baseline => "baseline",
        }
    }
    fn parse(s: &str) -> Option<RunKind> {
        [RunKind::Rl, RunKind::Evolve, RunKind::Eval, RunKind::Baseline].into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Done,
    /// Stopped by the user (Ctrl-C); `--resume` continues it.
    Interrupted,
    /// Stopped by an error, kept in [`RunInfo::error`].
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Option<RunStatus> {
        [RunStatus::Running, RunStatus::Done, RunStatus::Interrupted, RunStatus::Failed]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text column read as one of the store's enums; an unknown value (a newer build's) is a conversion error
/// naming it.
fn enum_column<T>(r: &Row, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown value {text:?} (written by a newer ideator? upgrade it)").into(),
        )
    })
}

/// A run as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub id: i64,
    pub name: String,
    pub kind: RunKind,
    pub env: String,
    pub scale: String,
    pub seed: u64,
    pub created_at: f64,
    pub status: RunStatus,
    /// The error that stopped the run when `status` is [`RunStatus::Failed`].
    pub error: Option<String>,
}

/// One sampled idea to store with its group.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIdea {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish_reason: String,
    pub seed: u64,
    /// The group's reference run (the baseline recipe at the group's seed), not an idea of the policy.
    pub reference: bool,
}

/// A sampled group to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewGroup {
    pub seq: u64,
    pub prompt_id: i64,
    pub policy_version: u64,
    pub sample_seconds: f64,
    /// See `SampledGroup::temperature`.
    pub temperature: f64,
    pub ideas: Vec<NewIdea>,
}

/// An idea as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdeaRow {
    pub id: i64,
    pub group_id: i64,
    pub index: usize,
    pub key: String,
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish_reason: String,
    pub seed: u64,
    pub status: IdeaStatus,
    pub attempts: u32,
    pub backend: Option<String>,
    pub job_id: Option<String>,
    pub work_dir: Option<String>,
    pub log_path: Option<String>,
    pub created_at: f64,
    pub submitted_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// The execution's result, once done.
    pub result: Option<StoredResult>,
    /// The group's reference run (the baseline recipe at the group's seed): executed, never trained on.
    pub reference: bool,
    /// What the execution computes (see the schema's migration 2); `None`: not cacheable or not yet known.
    pub recipe_key: Option<String>,
    /// The idea whose execution this result was copied from (the execution cache), if any.
    pub cached_from: Option<i64>,
}

/// The part of an [`ExecResult`] the store keeps (the log stays in the run's work folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    pub status: Status,
    pub reward: f64,
    pub cause: Option<FailureCause>,
    pub message: String,
    pub metrics: BTreeMap<String, f64>,
    pub seconds: f64,
    /// What the idea changed (`ExecResult::changed`); empty for results stored before schema version 4.
    #[serde(default)]
    pub changed: Vec<String>,
}

impl From<StoredResult> for ExecResult {
    /// The stored part of a result (its log stays with the execution it came from).
    fn from(r: StoredResult) -> ExecResult {
        ExecResult {
            status: r.status,
            reward: r.reward,
            metrics: r.metrics,
            cause: r.cause,
            message: r.message,
            seconds: r.seconds,
            log: String::new(),
            changed: r.changed,
        }
    }
}

/// A group as stored, with its ideas in index order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRow {
    pub id: i64,
    pub seq: u64,
    pub prompt_id: i64,
    pub policy_version: u64,
    pub sampled_at: f64,
    pub sample_seconds: f64,
    pub temperature: f64,
    pub status: GroupStatus,
    pub trained_step: Option<u64>,
    pub staleness: Option<u64>,
    /// The policy's ideas, in index order.
    pub ideas: Vec<IdeaRow>,
    /// The group's reference run, if it has one.
    pub reference: Option<IdeaRow>,
}

impl GroupRow {
    /// Every execution of the group: its ideas, then its reference run.
    pub fn executions(&self) -> impl Iterator<Item = &IdeaRow> {
        self.ideas.iter().chain(self.reference.as_ref())
    }

    /// The reference run's score (the baseline recipe at the group's seed), when it ran and succeeded.
    pub(crate) fn reference_reward(&self) -> Option<f64> {
        self.reference.as_ref().and_then(|r| r.result.as_ref()).filter(|r| r.status == Status::Ok).map(|r| r.reward)
    }
}

/// One policy update as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    pub step: u64,
    pub created_at: f64,
    pub record: StepRecord,
}

/// A checkpoint as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRow {
    pub step: u64,
    /// Relative to the run folder (the store's folder) for the run's own checkpoints, else absolute.
    pub path: String,
    pub score: Option<f64>,
    pub created_at: f64,
}

/// One launch of an idea.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRow {
    pub idea_id: i64,
    pub attempt: u32,
    pub backend: String,
    pub job_id: Option<String>,
    pub submitted_at: f64,
    pub finished_at: Option<f64>,
    pub outcome: Option<String>,
    pub message: Option<String>,
}

impl AttemptRow {
    /// The row of `SELECT idea_id, attempt, backend, job_id, submitted_at, finished_at, outcome, message`.
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttemptRow> {
        Ok(AttemptRow {
            idea_id: r.get(0)?,
            attempt: r.get::<_, i64>(1)? as u32,
            backend: r.get(2)?,
            job_id: r.get(3)?,
            submitted_at: r.get(4)?,
            finished_at: r.get(5)?,
            outcome: r.get(6)?,
            message: r.get(7)?,
        })
    }
}

/// What a run's ideas cost (see [`Store::execution_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionCounts {
    /// Ideas sampled from the policy (reference runs excluded).
    pub ideas: u64,
    /// Executions that really ran to a result (reference runs included; cached results excluded).
    pub executions: u64,
    /// Results copied from an earlier execution of the same recipe at the same seed.
    pub cache_hits: u64,
}

/// A connection to a run store. Open one per thread.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

const IDEA_COLUMNS: &str = "id, group_id, idx, key, text, token_ids, logprobs, finish_reason, seed, status, attempts, \
     backend, job_id, work_dir, log_path, created_at, submitted_at, finished_at, exec_status, reward, cause, message, \
     metrics, exec_seconds, reference, recipe_key, cached_from, changed";

fn idea_from_row(r: &Row) -> rusqlite::Result<IdeaRow> {
    let exec_status: Option<String> = r.get(18)?;
    let result = match exec_status {
        None => None,
        Some(s) => {
            let metrics: Option<String> = r.get(22)?;
            Some(StoredResult {
                status: if s == "ok" { Status::Ok } else { Status::Failed },
                reward: r.get::<_, Option<f64>>(19)?.unwrap_or(0.0),
                cause: r.get::<_, Option<String>>(20)?.as_deref().and_then(FailureCause::parse),
                message: r.get::<_, Option<String>>(21)?.unwrap_or_default(),
                metrics: metrics.and_then(|m| serde_json::from_str(&m).ok()).unwrap_or_default(),
                seconds: r.get::<_, Option<f64>>(23)?.unwrap_or(0.0),
                changed: r
                    .get::<_, Option<String>>(27)?
                    .and_then(|c| serde_json::from_str(&c).ok())
                    .unwrap_or_default(),
            })
        }
    };
    Ok(IdeaRow {
        id: r.get(0)?,
        group_id: r.get(1)?,
        index: r.get::<_, i64>(2)? as usize,
        key: r.get(3)?,
        text: r.get(4)?,
        token_ids: blob_to_u32s(&r.get::<_, Vec<u8>>(5)?),
        logprobs: blob_to_f32s(&r.get::<_, Vec<u8>>(6)?),
        finish_reason: r.get(7)?,
        seed: r.get::<_, i64>(8)? as u64,
        status: IdeaStatus::parse(&r.get::<_, String>(9)?),
        attempts: r.get::<_, i64>(10)? as u32,
        backend: r.get(11)?,
        job_id: r.get(12)?,
        work_dir: r.get(13)?,
        log_path: r.get(14)?,
        created_at: r.get(15)?,
        submitted_at: r.get(16)?,
        finished_at: r.get(17)?,
        result,
        reference: r.get::<_, i64>(24)? != 0,
        recipe_key: r.get(25)?,
        cached_from: r.get(26)?,
    })
}

/// A `file:` URI for `path` (percent-encoding the characters URIs reserve), read-only and, with `immutable`,
/// telling SQLite that nothing changes the file (no locks, no WAL: for read-only storage).
fn sqlite_uri(path: &Path, immutable: bool) -> String {
    let mut uri = String::from("file:");
    for c in path.display().to_string().chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str(if immutable { "?mode=ro&immutable=1" } else { "?mode=ro" });
    uri
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// The idea's key: unique in the run, names its work folder and backend job.
pub(crate) fn idea_key(group_seq: u64, index: usize) -> String {
    format!("g{group_seq:06}-i{index}")
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path).map_err(|e| store_err(path, e))?;
        let store = Store { conn, path: path.to_path_buf() };
        store.conn.busy_timeout(Duration::from_secs(60)).map_err(|e| store.err(e))?;
        // WAL: readers never block the writer; NORMAL sync is durable against process crashes (SIGKILL), which
        // is what resume needs (power loss may lose the last transactions, never corrupt the file).
        store.set_wal_mode()?;
        store
            .conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(|e| store.err(e))?;
        store.migrate()?;
        Ok(store)
    }

    /// Switches a fresh store to WAL. The switch needs the file to itself and SQLite reports "database is locked"
    /// at once, without waiting, when another process opens the same fresh store at that moment; so it is retried
    /// for up to the busy timeout (on a store already in WAL mode it is a no-op that never fails).
    fn set_wal_mode(&self) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            match self.conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
                Ok(_) => return Ok(()),
                Err(e) if is_busy(&e) && started.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    /// Opens an existing store for reading only (`compare`, `report` and other readers): nothing is created,
    /// migrated or written, so archived run folders on read-only storage can be read. A store with a write-ahead
    /// log beside it (a live writer, or one that was killed) is read through the log; one without (every writer
    /// closed cleanly) is opened as immutable, because a read-only WAL connection would otherwise create the log
    /// and shared-memory files next to it (and could not remove them). A writer that starts while such a read is
    /// in progress may make it fail; run the reader again.
    ///
    /// A store of an older schema is upgraded in a copy in memory, never on disk.
    ///
    /// Errors: the file is missing or not a store; its schema is newer than this program knows.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        if !path.is_file() {
            return Err(store_err(path, rusqlite::Error::InvalidPath(path.to_path_buf())));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let store = if Path::new(&wal).exists() {
            match Store::open_with(path, &sqlite_uri(path, false), flags) {
                Ok(store) => store,
                // SQLITE_CANTOPEN / READONLY: the -shm file can be neither opened nor created next to the store.
                Err(_) => Store::open_with(path, &sqlite_uri(path, true), flags)?,
            }
        } else {
            Store::open_with(path, &sqlite_uri(path, true), flags)?
        };
        if store.version()? < MIGRATIONS.len() {
            return store.upgraded_in_memory();
        }
        Ok(store)
    }

    /// A store written by an older version, read-only: copied into memory (SQLite's backup API) and upgraded
    /// there, so readers see the current schema while the file stays untouched.
    fn upgraded_in_memory(&self) -> Result<Store> {
        let mut conn = Connection::open_in_memory().map_err(|e| self.err(e))?;
        rusqlite::backup::Backup::new(&self.conn, &mut conn)
            .and_then(|b| b.run_to_completion(1024, Duration::ZERO, None))
            .map_err(|e| self.err(e))?;
        let store = Store { conn, path: self.path.clone() };
        store.migrate()?;
        Ok(store)
    }

    /// Opens `uri` with `flags` and reads the schema version once, so that a store SQLite cannot read this way
    /// fails here rather than at the first query.
    fn open_with(path: &Path, uri: &str, flags: OpenFlags) -> Result<Store> {
        let conn = Connection::open_with_flags(uri, flags).map_err(|e| store_err(path, e))?;
        let store = Store { conn, path: path.to_path_buf() };
        store.conn.busy_timeout(Duration::from_secs(60)).map_err(|e| store.err(e))?;
        store.version()?;
        Ok(store)
    }

    /// Opens the store of a run folder.
    pub fn open_in(run_dir: &Path) -> Result<Store> {
        Store::open(&run_dir.join(STORE_FILE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> RolloutError {
        store_err(&self.path, e)
    }

    fn migrate(&self) -> Result<()> {
        let newest = MIGRATIONS.len();
        if self.version()? == newest {
            return Ok(());
        }
        // Another process may be opening the same fresh store at this moment (a trainer starting while a reader
        // polls its folder): the version is read again and the migrations applied under one write lock, so exactly
        // one of them migrates and the other finds the schema done (it used to fail on "table already exists").
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| self.err(e))?;
        let applied = (|| -> Result<()> {
            let version = self.version()?;
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                self.conn.execute_batch(sql).map_err(|e| self.err(e))?;
                self.conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1)).map_err(|e| self.err(e))?;
            }
            Ok(())
        })();
        match applied {
            Ok(()) => self.conn.execute_batch("COMMIT").map_err(|e| self.err(e)),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The schema version, refusing one newer than this program knows.
    fn version(&self) -> Result<usize> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        if version as usize > MIGRATIONS.len() {
            return Err(RolloutError::Store {
                path: self.path.clone(),
                message: format!(
                    "schema version {version} is newer than this program knows ({}); use a newer ideator",
                    MIGRATIONS.len()
                ),
            });
        }
        Ok(version as usize)
    }

    /// The schema version (number of migrations applied).
    #[cfg(test)]
    pub(crate) fn schema_version(&self) -> Result<u32> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map(|v| v as u32)
            .map_err(|e| self.err(e))
    }

    // ---- runs ----

    /// The run named `name`, created if new. An existing run must match kind, environment, scale and seed.
    pub fn open_run(&self, name: &str, kind: RunKind, env: &str, scale: &str, seed: u64) -> Result<RunInfo> {
        if let Some(run) = self.find_run(name)? {
            if run.kind != kind || run.env != env || run.scale != scale || run.seed != seed {
                return Err(RolloutError::Config(format!(
                    "the store already holds run {name:?} as {} on {} ({}) with seed {}; this config asks for {kind} on \
                     {env} ({scale}) with seed {seed}: use another run folder",
                    run.kind, run.env, run.scale, run.seed
                )));
            }
            return Ok(run);
        }
        self.conn
            .execute(
                "INSERT INTO runs (name, kind, env, scale, seed, created_at, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running')",
                params![name, kind.as_str(), env, scale, seed as i64, now()],
            )
            .map_err(|e| self.err(e))?;
        self.find_run(name)?.ok_or_else(|| RolloutError::Config("run vanished after insert".into()))
    }

    pub fn find_run(&self, name: &str) -> Result<Option<RunInfo>> {
        self.conn
            .query_row(
                "SELECT id, name, kind, env, scale, seed, created_at, status, error FROM runs WHERE name = ?1",
                [name],
                |r| {
                    Ok(RunInfo {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        kind: enum_column(r, 2, RunKind::parse)?,
                        env: r.get(3)?,
                        scale: r.get(4)?,
                        seed: r.get::<_, i64>(5)? as u64,
                        created_at: r.get(6)?,
                        status: enum_column(r, 7, RunStatus::parse)?,
                        error: r.get(8)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The run with this id.
    #[cfg(test)]
    pub(crate) fn run_info(&self, id: i64) -> Result<RunInfo> {
        let name: String = self
            .conn
            .query_row("SELECT name FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        self.find_run(&name)?.ok_or_else(|| RolloutError::Config(format!("run {id} vanished")))
    }

    pub fn runs(&self) -> Result<Vec<RunInfo>> {
        let mut st = self.conn.prepare("SELECT name FROM runs ORDER BY id").map_err(|e| self.err(e))?;
        let names: Vec<String> = st
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))?;
        names.iter().filter_map(|n| self.find_run(n).transpose()).collect()
    }

    pub fn set_run_status(&self, run: i64, status: RunStatus) -> Result<()> {
        self.exec("UPDATE runs SET status = ?2, error = NULL WHERE id = ?1", params![run, status.as_str()])
    }

    /// Marks the run failed with the error that stopped it (shown by readers; a resume sets it running again).
    pub fn fail_run(&self, run: i64, error: &str) -> Result<()> {
        self.exec("UPDATE runs SET status = 'failed', error = ?2 WHERE id = ?1", params![run, error])
    }

    pub fn add_config(&self, run: i64, text: &str) -> Result<()> {
        self.exec("INSERT INTO configs (run_id, created_at, text) VALUES (?1, ?2, ?3)", params![run, now(), text])
    }

    pub fn configs(&self, run: i64) -> Result<Vec<String>> {
        let mut st =
            self.conn.prepare("SELECT text FROM configs WHERE run_id = ?1 ORDER BY id").map_err(|e| self.err(e))?;
        let rows = st.query_map([run], |r| r.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    fn exec(&self, sql: &str, p: impl rusqlite::Params) -> Result<()> {
        self.conn.execute(sql, p).map(|_| ()).map_err(|e| self.err(e))
    }

    // ---- policy versions, prompts, groups, ideas ----

    pub(crate) fn record_policy_version(&self, run: i64, version: u64) -> Result<()> {
        self.exec(
            "INSERT OR IGNORE INTO policy_versions (run_id, version, created_at) VALUES (?1, ?2, ?3)",
            params![run, version as i64, now()],
        )
    }

    pub fn policy_versions(&self, run: i64) -> Result<Vec<u64>> {
        let mut st = self
            .conn
            .prepare("SELECT version FROM policy_versions WHERE run_id = ?1 ORDER BY version")
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([run], |r| r.get::<_, i64>(0).map(|v| v as u64)).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    /// The prompt's id, inserting it on first use.
    pub fn intern_prompt(&self, run: i64, text: &str, token_ids: &[u32]) -> Result<i64> {
        let blob = u32s_to_blob(token_ids);
        self.exec(
            "INSERT OR IGNORE INTO prompts (run_id, text, token_ids) VALUES (?1, ?2, ?3)",
            params![run, text, blob],
        )?;
        self.conn
            .query_row("SELECT id FROM prompts WHERE run_id = ?1 AND token_ids = ?2", params![run, blob], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))
    }

    pub fn prompt_ids(&self, prompt: i64) -> Result<Vec<u32>> {
        self.conn
            .query_row("SELECT token_ids FROM prompts WHERE id = ?1", [prompt], |r| r.get::<_, Vec<u8>>(0))
            .map(|b| blob_to_u32s(&b))
            .map_err(|e| self.err(e))
    }

    /// The prompt's text as sampled from (before the chat template).
    pub fn prompt_text(&self, prompt: i64) -> Result<String> {
        self.conn.query_row("SELECT text FROM prompts WHERE id = ?1", [prompt], |r| r.get(0)).map_err(|e| self.err(e))
    }

    /// The next free group sequence number of the run.
    pub fn next_group_seq(&self, run: i64) -> Result<u64> {
        self.conn
            .query_row("SELECT COALESCE(MAX(seq) + 1, 0) FROM groups WHERE run_id = ?1", [run], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }

    /// Stores a sampled group and its ideas (status pending) in one transaction; returns the group's row.
    pub fn insert_group(&self, run: i64, g: &NewGroup) -> Result<GroupRow> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let t = now();
        tx.execute(
            "INSERT INTO groups (run_id, seq, prompt_id, policy_version, sampled_at, sample_seconds, temperature, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'executing')",
            params![run, g.seq as i64, g.prompt_id, g.policy_version as i64, t, g.sample_seconds, g.temperature],
        )
        .map_err(|e| self.err(e))?;
        let group_id = tx.last_insert_rowid();
        for (i, idea) in g.ideas.iter().enumerate() {
            tx.execute(
                "INSERT INTO ideas (run_id, group_id, idx, key, text, token_ids, logprobs, finish_reason, seed, status,
                                    created_at, reference)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?10, ?11)",
                params![
                    run,
                    group_id,
                    i as i64,
                    idea_key(g.seq, i),
                    idea.text,
                    u32s_to_blob(&idea.token_ids),
                    f32s_to_blob(&idea.logprobs),
                    idea.finish_reason,
                    idea.seed as i64,
                    t,
                    i64::from(idea.reference)
                ],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.group(group_id)
    }

    /// Records a launch before it happens: status running, attempt counted, where its files go.
    pub fn mark_launching(
        &self,
        idea: i64,
        attempt: u32,
        backend: &str,
        work_dir: &Path,
        log_path: &Path,
    ) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let t = now();
        tx.execute(
            "UPDATE ideas SET status = 'running', attempts = ?2, backend = ?3, job_id = NULL, work_dir = ?4,
                              log_path = ?5, submitted_at = ?6 WHERE id = ?1",
            params![idea, attempt as i64, backend, work_dir.display().to_string(), log_path.display().to_string(), t],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT OR REPLACE INTO attempts (idea_id, attempt, backend, submitted_at) VALUES (?1, ?2, ?3, ?4)",
            params![idea, attempt as i64, backend, t],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Records the backend's job id of the current attempt (a Slurm job id, a local process id).
    pub fn set_job_id(&self, idea: i64, attempt: u32, job_id: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        tx.execute("UPDATE ideas SET job_id = ?2 WHERE id = ?1", params![idea, job_id]).map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE attempts SET job_id = ?3 WHERE idea_id = ?1 AND attempt = ?2",
            params![idea, attempt as i64, job_id],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Closes an attempt that did not produce the idea's result (infrastructure failure, orphaned, cancelled).
    pub(crate) fn end_attempt(&self, idea: i64, attempt: u32, outcome: &str, message: &str) -> Result<()> {
        self.exec(
            "UPDATE attempts SET finished_at = ?3, outcome = ?4, message = ?5 WHERE idea_id = ?1 AND attempt = ?2",
            params![idea, attempt as i64, now(), outcome, message],
        )
    }

    /// Puts an idea back to pending (its next launch is a new attempt).
    pub(crate) fn mark_pending(&self, idea: i64) -> Result<()> {
        self.exec("UPDATE ideas SET status = 'pending', job_id = NULL WHERE id = ?1", [idea])
    }

    /// Stores an idea's result; returns false (and changes nothing) if the idea already had one, so that a
    /// result can never be counted twice. When the last idea of a group is done, the group becomes complete.
    pub fn finish_idea(&self, idea: i64, attempt: u32, r: &ExecResult) -> Result<bool> {
        self.store_result(idea, Some(attempt), None, r)
    }

    /// Stores a result copied from the execution of idea `source` (same recipe key and seed), without running
    /// anything; like [`Store::finish_idea`] otherwise.
    pub(crate) fn finish_idea_cached(&self, idea: i64, source: i64, r: &ExecResult) -> Result<bool> {
        self.store_result(idea, None, Some(source), r)
    }

    fn store_result(&self, idea: i64, attempt: Option<u32>, source: Option<i64>, r: &ExecResult) -> Result<bool> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let t = now();
        let status = match r.status {
            Status::Ok => "ok",
            Status::Failed => "failed",
        };
        let changed = tx
            .execute(
                "UPDATE ideas SET status = 'done', finished_at = ?2, exec_status = ?3, reward = ?4, cause = ?5,
                                  message = ?6, metrics = ?7, exec_seconds = ?8, cached_from = ?9, changed = ?10
                 WHERE id = ?1 AND status IN ('pending', 'running')",
                params![
                    idea,
                    t,
                    status,
                    r.reward,
                    r.cause.map(|c| c.as_str()),
                    r.message,
                    serde_json::to_string(&r.metrics).expect("metrics serialise"),
                    r.seconds,
                    source,
                    serde_json::to_string(&r.changed).expect("strings serialise")
                ],
            )
            .map_err(|e| self.err(e))?;
        if changed == 1 {
            if let Some(attempt) = attempt {
                tx.execute(
                    "UPDATE attempts SET finished_at = ?3, outcome = 'result' WHERE idea_id = ?1 AND attempt = ?2",
                    params![idea, attempt as i64, t],
                )
                .map_err(|e| self.err(e))?;
            }
            tx.execute(
                "UPDATE groups SET status = 'complete'
                 WHERE id = (SELECT group_id FROM ideas WHERE id = ?1) AND status = 'executing'
                   AND NOT EXISTS (SELECT 1 FROM ideas i WHERE i.group_id = groups.id AND i.status != 'done')",
                [idea],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(changed == 1)
    }

    /// Records what an idea's execution computes (its cache key).
    pub(crate) fn set_recipe_key(&self, idea: i64, key: &str) -> Result<()> {
        self.exec("UPDATE ideas SET recipe_key = ?2 WHERE id = ?1", params![idea, key])
    }

    /// A stored result of an execution with this recipe key at this seed, from any run of the store, with the id
    /// of the idea that executed it. Results that say nothing about the recipe are not reused: infrastructure
    /// failures and time limits (another machine or limit may finish the run).
    pub(crate) fn cached_result(&self, recipe_key: &str, seed: u64) -> Result<Option<(i64, StoredResult)>> {
        let rows = self.ideas_where(
            "recipe_key = ?1 AND seed = ?2 AND status = 'done' AND exec_status IS NOT NULL AND cached_from IS NULL
             AND COALESCE(cause, '') NOT IN ('infrastructure', 'time_limit') ORDER BY id LIMIT 1",
            params![recipe_key, seed as i64],
        )?;
        Ok(rows.into_iter().next().and_then(|i| i.result.map(|r| (i.id, r))))
    }

    /// Marks ideas not yet done as cancelled (shutdown), and their groups too.
    pub(crate) fn cancel_unfinished(&self, run: i64) -> Result<usize> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let t = now();
        tx.execute(
            "UPDATE attempts SET finished_at = ?2, outcome = 'cancelled'
             WHERE outcome IS NULL AND idea_id IN (SELECT id FROM ideas WHERE run_id = ?1 AND status = 'running')",
            params![run, t],
        )
        .map_err(|e| self.err(e))?;
        let n = tx
            .execute(
                "UPDATE ideas SET status = 'cancelled', finished_at = ?2 WHERE run_id = ?1 AND status IN ('pending', 'running')",
                params![run, t],
            )
            .map_err(|e| self.err(e))?;
        tx.execute("UPDATE groups SET status = 'cancelled' WHERE run_id = ?1 AND status = 'executing'", [run])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Marks a complete group as dropped (too stale to train on).
    pub(crate) fn drop_group(&self, group: i64, staleness: u64) -> Result<()> {
        self.exec(
            "UPDATE groups SET status = 'dropped', staleness = ?2 WHERE id = ?1",
            params![group, staleness as i64],
        )
    }

    /// Drops a group that can no longer be trained (too stale) while some of its ideas are unfinished: those
    /// ideas are cancelled (their running attempts closed), results already in are kept.
    pub(crate) fn drop_unfinished_group(&self, group: i64, staleness: u64) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let t = now();
        tx.execute(
            "UPDATE attempts SET finished_at = ?2, outcome = 'cancelled', message = 'its group became too stale'
             WHERE outcome IS NULL AND idea_id IN (SELECT id FROM ideas WHERE group_id = ?1 AND status = 'running')",
            params![group, t],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE ideas SET status = 'cancelled', finished_at = ?2 WHERE group_id = ?1 AND status IN ('pending', 'running')",
            params![group, t],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE groups SET status = 'dropped', staleness = ?2 WHERE id = ?1",
            params![group, staleness as i64],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Commits one policy update: the groups it consumed (with their staleness), its metrics row and the new
    /// policy version, in one transaction, durable when this returns (synced to disk even though the store
    /// otherwise runs `synchronous = NORMAL`): the update's checkpoint is written after it, so an OS crash can
    /// lose a checkpoint whose step is recorded (the step is trained again from the previous checkpoint) but not
    /// the reverse.
    pub fn record_step(&self, run: i64, step: u64, groups: &[(i64, u64)], record: &StepRecord) -> Result<()> {
        self.conn.execute_batch("PRAGMA synchronous = FULL").map_err(|e| self.err(e))?;
        let committed = self.record_step_tx(run, step, groups, record);
        self.conn.execute_batch("PRAGMA synchronous = NORMAL").map_err(|e| self.err(e))?;
        committed
    }

    fn record_step_tx(&self, run: i64, step: u64, groups: &[(i64, u64)], record: &StepRecord) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        for &(g, staleness) in groups {
            tx.execute(
                "UPDATE groups SET status = 'trained', trained_step = ?2, staleness = ?3 WHERE id = ?1",
                params![g, step as i64, staleness as i64],
            )
            .map_err(|e| self.err(e))?;
        }
        let (rewards, timing) = (&record.rewards, &record.timing);
        tx.execute(
            "INSERT OR REPLACE INTO steps (run_id, step, created_at, reward_mean, reward_max, execution_rate,
                 sample_seconds, wait_seconds, update_seconds, slot_utilisation, learner_idle_frac, metrics)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                run,
                step as i64,
                now(),
                rewards.reward_mean,
                rewards.reward_max,
                rewards.execution_rate,
                timing.sample_seconds,
                timing.wait_seconds,
                timing.update_seconds,
                timing.slot_utilisation,
                timing.learner_idle_frac,
                record.to_json().to_string()
            ],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT OR IGNORE INTO policy_versions (run_id, version, created_at) VALUES (?1, ?2, ?3)",
            params![run, step as i64 + 1, now()],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Records a checkpoint. Its path is stored relative to the store's folder when it lies inside it (so the run
    /// folder can be moved), else absolute.
    pub(crate) fn record_checkpoint(&self, run: i64, step: u64, path: &Path, score: Option<f64>) -> Result<()> {
        let stored = self.portable_path(path);
        self.exec(
            "INSERT OR REPLACE INTO checkpoints (run_id, step, path, score, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![run, step as i64, stored.display().to_string(), score, now()],
        )
    }

    /// `path` relative to the folder holding the store when inside it, else absolute.
    fn portable_path(&self, path: &Path) -> PathBuf {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let path = absolute(path);
        let folder = absolute(self.path.parent().unwrap_or(Path::new(".")));
        path.strip_prefix(&folder).map(Path::to_path_buf).unwrap_or(path)
    }

    pub fn checkpoints(&self, run: i64) -> Result<Vec<CheckpointRow>> {
        let mut st = self
            .conn
            .prepare("SELECT step, path, score, created_at FROM checkpoints WHERE run_id = ?1 ORDER BY step")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([run], |r| {
                Ok(CheckpointRow {
                    step: r.get::<_, i64>(0)? as u64,
                    path: r.get(1)?,
                    score: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    /// Forgets the updates from `step` on (the checkpoint to resume from holds the policy after `step` updates):
    /// their metric rows and policy versions go, and the groups they consumed become complete again, to be
    /// trained anew. Executions are kept: nothing is re-run.
    pub fn rewind_to(&self, run: i64, step: u64) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM steps WHERE run_id = ?1 AND step >= ?2", params![run, step as i64])
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM policy_versions WHERE run_id = ?1 AND version > ?2", params![run, step as i64])
            .map_err(|e| self.err(e))?;
        tx.execute(
            "UPDATE groups SET status = 'complete', trained_step = NULL, staleness = NULL
             WHERE run_id = ?1 AND status = 'trained' AND trained_step >= ?2",
            params![run, step as i64],
        )
        .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM checkpoints WHERE run_id = ?1 AND step > ?2", params![run, step as i64])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    // ---- queries ----

    pub fn idea(&self, id: i64) -> Result<IdeaRow> {
        self.conn
            .query_row(&format!("SELECT {IDEA_COLUMNS} FROM ideas WHERE id = ?1"), [id], idea_from_row)
            .map_err(|e| self.err(e))
    }

    fn ideas_where(&self, clause: &str, p: impl rusqlite::Params) -> Result<Vec<IdeaRow>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {IDEA_COLUMNS} FROM ideas WHERE {clause}"))
            .map_err(|e| self.err(e))?;
        let rows = st.query_map(p, idea_from_row).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    /// All ideas of the run in sampling order.
    pub fn ideas(&self, run: i64) -> Result<Vec<IdeaRow>> {
        self.ideas_where("run_id = ?1 AND reference = 0 ORDER BY group_id, idx", [run])
    }

    /// Ideas with a given status, in sampling order.
    pub fn ideas_with_status(&self, run: i64, status: IdeaStatus) -> Result<Vec<IdeaRow>> {
        self.ideas_where(
            "run_id = ?1 AND status = ?2 AND reference = 0 ORDER BY group_id, idx",
            params![run, status.as_str()],
        )
    }

    /// Every execution of a group, its reference run included, in index order.
    pub(crate) fn ideas_of_group(&self, group: i64) -> Result<Vec<IdeaRow>> {
        self.ideas_where("group_id = ?1 ORDER BY idx", [group])
    }

    /// The reference runs of the run's groups (the baseline at each group's seed), in sampling order.
    pub fn reference_ideas(&self, run: i64) -> Result<Vec<IdeaRow>> {
        self.ideas_where("run_id = ?1 AND reference = 1 ORDER BY group_id", [run])
    }

    /// Fills a group's ideas and reference run.
    fn load_ideas(&self, g: &mut GroupRow) -> Result<()> {
        let (reference, ideas): (Vec<IdeaRow>, Vec<IdeaRow>) =
            self.ideas_of_group(g.id)?.into_iter().partition(|i| i.reference);
        g.ideas = ideas;
        g.reference = reference.into_iter().next();
        Ok(())
    }

    /// The ideas an update trained on, in group order.
    pub fn ideas_of_step(&self, run: i64, step: u64) -> Result<Vec<IdeaRow>> {
        self.ideas_where(
            "group_id IN (SELECT id FROM groups WHERE run_id = ?1 AND trained_step = ?2) AND reference = 0
             ORDER BY group_id, idx",
            params![run, step as i64],
        )
    }

    pub fn group(&self, id: i64) -> Result<GroupRow> {
        let mut g = self
            .conn
            .query_row(
                "SELECT id, seq, prompt_id, policy_version, sampled_at, sample_seconds, status, trained_step, staleness, temperature
                 FROM groups WHERE id = ?1",
                [id],
                group_from_row,
            )
            .map_err(|e| self.err(e))?;
        self.load_ideas(&mut g)?;
        Ok(g)
    }

    /// Groups of the run with one of the statuses, in sampling order, with their ideas.
    pub fn groups_with_status(&self, run: i64, statuses: &[GroupStatus]) -> Result<Vec<GroupRow>> {
        let list: Vec<String> = statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT id, seq, prompt_id, policy_version, sampled_at, sample_seconds, status, trained_step, staleness, temperature
                 FROM groups WHERE run_id = ?1 AND status IN ({}) ORDER BY seq",
                list.join(", ")
            ))
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([run], group_from_row).map_err(|e| self.err(e))?;
        let mut groups: Vec<GroupRow> = rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))?;
        for g in &mut groups {
            self.load_ideas(g)?;
        }
        Ok(groups)
    }

    /// The groups an update trained on.
    pub fn groups_of_step(&self, run: i64, step: u64) -> Result<Vec<GroupRow>> {
        let mut groups = self.groups_with_status(run, &[GroupStatus::Trained])?;
        groups.retain(|g| g.trained_step == Some(step));
        Ok(groups)
    }

    pub fn steps(&self, run: i64) -> Result<Vec<StepRow>> {
        let mut st = self
            .conn
            .prepare("SELECT step, created_at, metrics FROM steps WHERE run_id = ?1 ORDER BY step")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([run], |r| {
                let m: String = r.get(2)?;
                Ok(StepRow {
                    step: r.get::<_, i64>(0)? as u64,
                    created_at: r.get(1)?,
                    record: StepRecord::from_json(&serde_json::from_str(&m).unwrap_or(serde_json::Value::Null)),
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    pub fn attempts(&self, idea: i64) -> Result<Vec<AttemptRow>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT idea_id, attempt, backend, job_id, submitted_at, finished_at, outcome, message
                 FROM attempts WHERE idea_id = ?1 ORDER BY attempt",
            )
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([idea], AttemptRow::from_row).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    /// Every launch of every idea of the run, in launch order (what slot utilisation over time is computed from).
    pub fn attempts_of_run(&self, run: i64) -> Result<Vec<AttemptRow>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT a.idea_id, a.attempt, a.backend, a.job_id, a.submitted_at, a.finished_at, a.outcome, a.message
                 FROM attempts a JOIN ideas i ON i.id = a.idea_id WHERE i.run_id = ?1 ORDER BY a.submitted_at",
            )
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([run], AttemptRow::from_row).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    /// How many ideas of the run are in each status.
    pub fn idea_status_counts(&self, run: i64) -> Result<BTreeMap<String, u64>> {
        self.counts("SELECT status, COUNT(*) FROM ideas WHERE run_id = ?1 AND reference = 0 GROUP BY status", run)
    }

    /// What the run's ideas cost: ideas sampled, executions that really ran (reference runs included) and results
    /// copied from the execution cache.
    pub fn execution_counts(&self, run: i64) -> Result<ExecutionCounts> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(reference = 0), 0),
                        COALESCE(SUM(status = 'done' AND cached_from IS NULL AND exec_status IS NOT NULL), 0),
                        COALESCE(SUM(cached_from IS NOT NULL), 0)
                 FROM ideas WHERE run_id = ?1",
                [run],
                |r| {
                    Ok(ExecutionCounts {
                        ideas: r.get::<_, i64>(0)? as u64,
                        executions: r.get::<_, i64>(1)? as u64,
                        cache_hits: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .map_err(|e| self.err(e))
    }

    /// How many groups of the run are in each status.
    pub fn group_status_counts(&self, run: i64) -> Result<BTreeMap<String, u64>> {
        self.counts("SELECT status, COUNT(*) FROM groups WHERE run_id = ?1 GROUP BY status", run)
    }

    /// How many executed ideas failed with each cause (`ok` for successes).
    #[cfg(test)]
    pub(crate) fn outcome_counts(&self, run: i64) -> Result<BTreeMap<String, u64>> {
        self.counts(
            "SELECT COALESCE(cause, 'ok'), COUNT(*) FROM ideas WHERE run_id = ?1 AND status = 'done' AND reference = 0
             GROUP BY 1",
            run,
        )
    }

    /// Trained groups per staleness (versions between sampling and training).
    pub fn staleness_histogram(&self, run: i64) -> Result<BTreeMap<u64, u64>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT staleness, COUNT(*) FROM groups WHERE run_id = ?1 AND status = 'trained' GROUP BY staleness ORDER BY 1",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([run], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }

    fn counts(&self, sql: &str, run: i64) -> Result<BTreeMap<String, u64>> {
        let mut st = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = st
            .query_map([run], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>().map_err(|e| self.err(e))
    }
}

fn group_from_row(r: &Row) -> rusqlite::Result<GroupRow> {
    Ok(GroupRow {
        id: r.get(0)?,
        seq: r.get::<_, i64>(1)? as u64,
        prompt_id: r.get(2)?,
        policy_version: r.get::<_, i64>(3)? as u64,
        sampled_at: r.get(4)?,
        sample_seconds: r.get(5)?,
        status: GroupStatus::parse(&r.get::<_, String>(6)?),
        trained_step: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        staleness: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        temperature: r.get(9)?,
        ideas: vec![],
        reference: None,
    })
}

fn store_err(path: &Path, e: rusqlite::Error) -> RolloutError {
    RolloutError::Store { path: path.to_path_buf(), message: e.to_string() }
}

#[cfg(test)]
mod tests;
