//! The outcome of one execution: plain, serialisable data that the run store records as is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whether the run produced a reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
}

/// Why a run failed. Every failure has reward 0; the cause tells the idea's fault from the machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCause {
    /// The idea could not be implemented: bad format, unknown knob, value out of range, conflicting knobs.
    Implementation,
    /// The run crashed (an error or a panic inside the environment, a non-zero exit of an external program).
    RuntimeError,
    /// The training loss became NaN or infinite.
    NonFiniteLoss,
    /// The run did not finish within its time limit.
    TimeLimit,
    /// The recipe does not fit the compute budget (e.g. a model so large that the budget allows almost no steps).
    OutOfBudget,
    /// The device ran out of memory.
    OutOfMemory,
    /// The reward lies outside the environment's plausible range (the reward-hacking guard).
    Implausible,
    /// The machinery failed, not the idea (e.g. the work folder could not be created); worth a retry.
    Infrastructure,
}

impl FailureCause {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCause::Implementation => "implementation",
            FailureCause::RuntimeError => "runtime_error",
            FailureCause::NonFiniteLoss => "non_finite_loss",
            FailureCause::TimeLimit => "time_limit",
            FailureCause::OutOfBudget => "out_of_budget",
            FailureCause::OutOfMemory => "out_of_memory",
            FailureCause::Implausible => "implausible",
            FailureCause::Infrastructure => "infrastructure",
        }
    }

    /// Parses the snake_case name (as written in JSON results).
    pub fn parse(name: &str) -> Option<FailureCause> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most bytes of log kept in a result (the tail is kept: the end of a log says why a run stopped).
pub(crate) const MAX_LOG_BYTES: usize = 64 * 1024;

/// The result of executing one idea.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    pub status: Status,
    /// The reward; always 0 when the run failed.
    pub reward: f64,
    /// Measurements of the run (final validation loss, steps, tokens per second, ...). Finite values only.
    pub metrics: BTreeMap<String, f64>,
    /// Why the run failed; `None` when it succeeded.
    pub cause: Option<FailureCause>,
    /// A message a person can read: the failure's reason, or a one-line summary of a success.
    pub message: String,
    /// Wall-clock seconds of the whole execution (implementation and run).
    pub seconds: f64,
    /// The run's log (its tail when long).
    pub log: String,
    /// The knobs the idea changed from the baseline (its category), when it was implemented.
    #[serde(default)]
    pub changed: Vec<String>,
}

impl ExecResult {
    /// A successful run.
    pub fn ok(reward: f64, metrics: BTreeMap<String, f64>, message: impl Into<String>) -> ExecResult {
        ExecResult {
            status: Status::Ok,
            reward,
            metrics: finite_only(metrics),
            cause: None,
            message: message.into(),
            seconds: 0.0,
            log: String::new(),
            changed: Vec::new(),
        }
    }

    /// A failed run: reward 0 and a cause.
    pub fn failed(cause: FailureCause, message: impl Into<String>) -> ExecResult {
        ExecResult {
            status: Status::Failed,
            reward: 0.0,
            metrics: BTreeMap::new(),
            cause: Some(cause),
            message: message.into(),
            seconds: 0.0,
            log: String::new(),
            changed: Vec::new(),
        }
    }

    pub(crate) fn with_metrics(mut self, metrics: BTreeMap<String, f64>) -> ExecResult {
        self.metrics = finite_only(metrics);
        self
    }

    pub(crate) fn with_log(mut self, log: impl Into<String>) -> ExecResult {
        self.log = tail(log.into(), MAX_LOG_BYTES);
        self
    }

    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }

    /// Turns a success into a failure (keeping metrics and log), e.g. when the reward is implausible.
    pub(crate) fn into_failure(mut self, cause: FailureCause, message: impl Into<String>) -> ExecResult {
        self.status = Status::Failed;
        self.reward = 0.0;
        self.cause = Some(cause);
        self.message = message.into();
        self
    }
}

fn finite_only(metrics: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    metrics.into_iter().filter(|(_, v)| v.is_finite()).collect()
}

/// The last `max` bytes of `s`, cut at a character boundary, with a marker when cut.
pub fn tail(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &s[start..])
}
