//! The report's data model: plain, serialisable series that any source can fill (the run store through
//! `src/store_data.rs`, or a folder's JSONL files through [`super::run_folder`]) and that the charts read. Nothing
//! here knows where the numbers came from.

use std::collections::BTreeMap;

use ideator_rollout::pipeline::record::StepMetric;
use serde::{Deserialize, Serialize};

use crate::alarm::Alarm;
use crate::code_ideas::CodeIdeaStats;
use crate::summary::BatchDiagnostics;

/// Everything one report shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    /// The report's heading (usually the run folder's name).
    pub title: String,
    /// Where the data came from (a path), shown under the title.
    pub source: String,
    /// The run's configuration file, verbatim.
    pub config_text: Option<String>,
    /// RL steps and/or evolution epochs, each its own series.
    pub series: Vec<RunSeries>,
    /// Separate evaluations (of checkpoints or models), each with its max@k curve.
    pub evaluations: Vec<Evaluation>,
    pub checkpoints: Vec<CheckpointInfo>,
    /// The best ideas, best first.
    pub top_ideas: Vec<TopIdea>,
    /// Groups by staleness (policy versions between sampling and training); empty when not recorded.
    pub staleness: Vec<StalenessBin>,
    /// Execution slots over time; empty when not recorded.
    pub utilisation: Vec<UtilisationPoint>,
    /// What the loader skipped or could not read, for the reader of the report.
    pub notes: Vec<String>,
    /// Code-idea statistics of each series whose ideas are code changes (the `codebase` environment); empty for
    /// the other environments.
    #[serde(default)]
    pub code_ideas: Vec<CodeIdeaSeries>,
    /// An experiment's arms compared at equal budgets (`ideator report` on an experiment folder).
    #[serde(default)]
    pub experiment: Option<crate::experiment::ExperimentData>,
}

/// The code-idea statistics of one learner's ideas: over the whole run and per step or epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeIdeaSeries {
    pub kind: SeriesKind,
    /// As the learner's [`RunSeries::label`].
    pub label: String,
    /// Every code idea of the run.
    pub overall: CodeIdeaStats,
    /// The ideas each step (or epoch) trained on, in order of `index`; steps without code ideas are left out.
    pub points: Vec<CodeIdeaPoint>,
}

/// The code ideas of one RL step or evolution epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeIdeaPoint {
    /// The step or epoch number.
    pub index: u64,
    pub stats: CodeIdeaStats,
}

/// Which learner produced a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKind {
    /// GRPO steps.
    Rl,
    /// Evolutionary-search epochs.
    Evolution,
}

impl SeriesKind {
    /// What one point of the series is called.
    pub fn unit(self) -> &'static str {
        match self {
            SeriesKind::Rl => "step",
            SeriesKind::Evolution => "epoch",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SeriesKind::Rl => "RL",
            SeriesKind::Evolution => "evolution",
        }
    }
}

/// One learner's points, in order of `index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSeries {
    pub kind: SeriesKind,
    /// Shown in legends ("RL", "evolution", or a run name).
    pub label: String,
    pub points: Vec<SeriesPoint>,
}

impl RunSeries {
    /// The points that have diagnostics.
    pub(crate) fn diagnosed(&self) -> impl Iterator<Item = (&SeriesPoint, &BatchDiagnostics)> {
        self.points.iter().filter_map(|p| p.diagnostics.as_ref().map(|d| (p, d)))
    }
    /// Total ideas sent to the executor.
    pub fn executions(&self) -> usize {
        self.points.last().map_or(0, |p| p.executions)
    }
}

/// One RL step or evolution epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// The step or epoch number.
    pub index: u64,
    /// Ideas in this batch.
    pub n_ideas: usize,
    /// Ideas sent to the executor up to and including this batch (the budget axis that makes RL and evolution
    /// comparable).
    pub executions: usize,
    pub reward_mean: f64,
    pub reward_max: f64,
    pub reward_std: Option<f64>,
    /// Best reward of an executed idea so far; `None` until one executed.
    pub best_so_far: Option<f64>,
    pub execution_rate: f64,
    /// Failed ideas by cause (implementation, crash, timeout, ...).
    pub failures: BTreeMap<String, usize>,
    pub diagnostics: Option<BatchDiagnostics>,
    pub alarms: Vec<Alarm>,
    /// The per-step scalars logged for this point ([`StepMetric::SCALARS`]: kl, entropy, grad norm, clip
    /// fractions, timings, staleness, slot utilisation); a scalar the point did not log is absent.
    pub scalars: BTreeMap<StepMetric, f64>,
}

/// A separate evaluation: a fixed model sampled n times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// What was evaluated ("checkpoint step 200", "base model").
    pub label: String,
    /// The RL step of the checkpoint, when it was one.
    pub step: Option<u64>,
    pub diagnostics: BatchDiagnostics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub step: u64,
    /// The score the trainer saved with it (the mean reward of its last step).
    pub score: Option<f64>,
}

/// One of the best ideas, with how often the same text occurred.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopIdea {
    pub kind: SeriesKind,
    /// Step or epoch where it first reached this reward.
    pub index: u64,
    pub reward: f64,
    pub category: Option<String>,
    /// Occurrences of exactly this text in the run: many copies of a top idea is what collapse looks like.
    pub copies: usize,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StalenessBin {
    /// Policy versions between sampling and training.
    pub staleness: u64,
    pub groups: usize,
}

/// Execution slots at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UtilisationPoint {
    /// Seconds since the run started.
    pub seconds: f64,
    pub busy_slots: f64,
    pub total_slots: f64,
    /// Ideas waiting for a slot.
    pub queue_depth: Option<f64>,
}

impl ReportData {
    /// An experiment folder's report: its arms are drawn, and the run-level parts (alarms, top ideas) belong to
    /// each arm's own report.
    pub fn is_experiment_only(&self) -> bool {
        self.experiment.is_some() && self.series.is_empty()
    }

    pub fn series(&self, kind: SeriesKind) -> Option<&RunSeries> {
        self.series.iter().find(|s| s.kind == kind)
    }
    /// Every alarm with its series and point.
    pub fn alarms(&self) -> impl Iterator<Item = (&RunSeries, &SeriesPoint, &Alarm)> {
        self.series.iter().flat_map(|s| s.points.iter().flat_map(move |p| p.alarms.iter().map(move |a| (s, p, a))))
    }
}
