//! Backends run executions as separate processes: [`local`] starts child processes in slots on this machine,
//! [`slurm`] submits batch jobs to a Slurm cluster. Both run the same thing, a [`RunSpec`] (in practice
//! `ideator exec ... --json`, whose last stdout line is the result), so a run behaves the same wherever it lands.
//!
//! A backend is driven by polling: [`Backend::submit`] starts a run and returns its job id, [`Backend::poll`]
//! reports the runs that ended. An [`Outcome`] tells the idea's result (success or an idea failure such as a
//! crash or a timeout, never retried) from an infrastructure failure (the machinery failed: the caller retries).

pub mod gpu;
pub mod local;
pub mod slurm;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::result::{tail, ExecResult, FailureCause};

pub use local::{LocalBackend, LocalConfig};
pub use slurm::{SlurmBackend, SlurmConfig};

/// One run to execute: a program with arguments, run in `work_dir` with stdout and stderr captured there.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// Unique among the backend's runs (also the Slurm job name).
    pub key: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Created if missing; holds `stdout.txt` and `stderr.txt`.
    pub work_dir: PathBuf,
    /// Hard limit enforced by the backend (the run is killed and scored as a timeout); the program should have
    /// its own, slightly shorter limit so that it can report a clean result.
    pub time_limit: Option<Duration>,
}

impl RunSpec {
    pub fn stdout_path(&self) -> PathBuf {
        self.work_dir.join("stdout.txt")
    }
    pub fn stderr_path(&self) -> PathBuf {
        self.work_dir.join("stderr.txt")
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The idea's result: a success or an idea failure (reward 0 with a cause). Never retried.
    Result(ExecResult),
    /// The machinery failed (node lost, job cancelled outside, backend unreachable): worth another attempt.
    Infrastructure(String),
}

/// A run that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub key: String,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no free slot")]
    NoFreeSlot,
    /// Submission failed for a reason that may pass (retry with backoff).
    #[error("{0}")]
    Submit(String),
    #[error("invalid backend config: {0}")]
    Config(String),
}

/// Runs executions somewhere.
pub trait Backend: Send {
    /// `local` or `slurm`.
    fn name(&self) -> &'static str;
    /// Most runs at once.
    fn slots(&self) -> usize;
    /// Runs started and not yet reported by [`Backend::poll`].
    fn running(&self) -> usize;
    /// Starts a run; returns its job id (`pid:123`, a Slurm job id).
    fn submit(&mut self, spec: &RunSpec) -> Result<String, BackendError>;
    /// Takes back a run started before this process did (a restarted trainer): returns true if the backend now
    /// tracks it (still running, or already finished: then the next poll reports it), false if it is lost and
    /// must be submitted again.
    fn reattach(&mut self, spec: &RunSpec, job_id: Option<&str>) -> Result<bool, BackendError>;
    /// Runs that ended since the last call (also enforces time limits).
    fn poll(&mut self) -> Vec<Finished>;
    /// Stops a run; it is not reported.
    fn cancel(&mut self, key: &str);
    /// Stops every run (shutdown).
    fn cancel_all(&mut self);
    /// How often polling is worth it.
    fn poll_interval(&self) -> Duration;
}

/// The JSON line that `ideator exec --json` prints.
#[derive(serde::Deserialize)]
struct ExecLine {
    status: crate::result::Status,
    #[serde(default)]
    reward: f64,
    #[serde(default)]
    metrics: std::collections::BTreeMap<String, f64>,
    cause: Option<FailureCause>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    log_tail: String,
}

/// The result in a run's stdout: its last non-empty line, as `ideator exec --json` prints it. `None` if there
/// is none (the run died before printing it, or printed something else).
pub fn parse_exec_output(stdout: &str) -> Option<ExecResult> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    let l: ExecLine = serde_json::from_str(line.trim()).ok()?;
    let mut r = match (l.status, l.cause) {
        (crate::result::Status::Ok, _) => ExecResult::ok(l.reward, l.metrics, l.message),
        (crate::result::Status::Failed, cause) => {
            ExecResult::failed(cause.unwrap_or(FailureCause::RuntimeError), l.message).with_metrics(l.metrics)
        }
    };
    r.seconds = l.seconds;
    Some(r.with_log(l.log_tail))
}

/// Reads at most the last `max` bytes of a file (empty if it does not exist).
pub(crate) fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max {
        use std::io::{Seek, SeekFrom};
        let _ = f.seek(SeekFrom::Start(len - max));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The result a finished run left in its work folder, if any.
pub(crate) fn result_in(spec: &RunSpec) -> Option<ExecResult> {
    parse_exec_output(&read_tail(&spec.stdout_path(), 256 * 1024))
}

/// A run that ended without printing a result: a crash of the program itself, described by its stderr.
fn crashed(spec: &RunSpec, how: &str) -> ExecResult {
    let stderr = read_tail(&spec.stderr_path(), 4096);
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
    let msg = if last.is_empty() {
        format!("the run {how} without printing a result")
    } else {
        format!("the run {how}: {last}")
    };
    ExecResult::failed(FailureCause::RuntimeError, msg).with_log(tail(stderr, 4096))
}

fn timed_out(limit: Option<Duration>) -> ExecResult {
    ExecResult::failed(
        FailureCause::TimeLimit,
        format!("killed at the time limit of {:.0} s", limit.map(|d| d.as_secs_f64()).unwrap_or(0.0)),
    )
}

/// Single-quotes a string for a POSIX shell.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_output_parses_successes_failures_and_garbage() {
        let ok = r#"{"status":"ok","reward":0.5,"metrics":{"a":1.0},"cause":null,"message":"m","seconds":2.0,"log_tail":"x"}"#;
        let r = parse_exec_output(&format!("noise\n{ok}\n\n")).unwrap();
        assert!(r.is_ok());
        assert_eq!((r.reward, r.seconds, r.metrics["a"]), (0.5, 2.0, 1.0));
        let failed =
            r#"{"status":"failed","reward":0.0,"metrics":{},"cause":"time_limit","message":"slow","seconds":1.0}"#;
        let r = parse_exec_output(failed).unwrap();
        assert_eq!(r.cause, Some(FailureCause::TimeLimit));
        assert_eq!(r.reward, 0.0);
        assert!(parse_exec_output("").is_none());
        assert!(parse_exec_output("{\"status\":\"ok\"").is_none(), "a half-written line is no result");
        assert!(parse_exec_output(&format!("{ok}\ntrailing text")).is_none());
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
