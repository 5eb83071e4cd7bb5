//! The typed record of one update (an RL step or an evolution epoch): what the pipeline measured (rewards,
//! executions, timings, staleness), what the learner reports ([`LearnerStats`]) and what the caller's per-step
//! hook added (idea diagnostics, collapse alarms). The store keeps it, `metrics.jsonl` exports it (one flat JSON
//! object per line, the same keys as before the record was typed), and the CLI, the report and checkpoint
//! selection read it. Metric names are spelled here and nowhere else in the pipeline.
//!
//! Reading is lenient so that the records of older run folders still load: every field has a default, a `null`
//! (how JSON writes a non-finite number) reads as missing, a field of another type than this build's is kept in
//! `extra`, and the record remembers which typed fields its source did not hold ([`MissingFields`]), so that a
//! reader can tell "not logged" from "logged as zero". Readers that look numbers up one by one (the report) name
//! them with [`StepMetric`] and read them with [`StepRecord::get`] and [`StepRecord::scalars`], which also find
//! the keys older builds wrote under other names or that this build no longer writes.

use std::collections::{BTreeMap, BTreeSet};

use ideator_trainer::GrpoStepStats;
use serde::{Deserialize, Serialize};

/// One update, as stored and exported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepRecord {
    /// Updates before this one (the policy version that trained on the step's groups).
    pub step: u64,
    /// The evolution epoch (equal to `step`) when the learner is evolutionary search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub policy_version: u64,
    #[serde(flatten)]
    pub rewards: RewardStats,
    #[serde(flatten)]
    pub executions: ExecutionStats,
    #[serde(flatten)]
    pub timing: StepTiming,
    /// Groups trained, by staleness (policy versions between sampling and training).
    pub staleness: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub learner: LearnerStats,
    /// What the caller's per-step hook added (`diagnostics`, `alarms`), and any field an older build wrote.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The typed fields that the JSON this record was read from did not hold; empty for a record made in code.
    #[serde(skip)]
    pub missing: MissingFields,
}

/// The typed fields of a [`StepRecord`] that its source did not hold (or held as `null`, or as a value of another
/// type): they read as their defaults, and [`StepRecord::get`] does not report them as logged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MissingFields(BTreeSet<String>);

impl MissingFields {
    fn holds(&self, key: &str) -> bool {
        self.0.contains(key)
    }
}

/// A number of the step record that readers look up by name, with its key in `metrics.jsonl`.
///
/// The first five are the rewards and counts the report holds in fields of their own; the rest are the per-step
/// scalars it charts ([`StepMetric::SCALARS`], read together with [`StepRecord::scalars`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepMetric {
    RewardMean,
    RewardStd,
    RewardMax,
    BestRewardSoFar,
    ExecutionRate,
    /// Ideas the learner was given (`n_ideas` in older builds).
    Sequences,
    Kl,
    Entropy,
    GradNorm,
    ClipLowFrac,
    ClipHighFrac,
    FracRewardZeroStd,
    SampleSeconds,
    WaitSeconds,
    /// The synchronous trainer's execution time (older builds only).
    ExecuteSeconds,
    ReferenceSeconds,
    UpdateSeconds,
    StepSeconds,
    /// Mean staleness of the step's groups (older builds only).
    StalenessMean,
    SlotUtilisation,
    /// Mean |log pi_train - log pi_sample| over on-policy tokens (`GrpoStepStats::rollout_logprob_diff_mean`).
    RolloutLogprobDiffMean,
    /// Mean truncated importance weight, and the fraction truncated (`grpo.rollout_is_threshold` set).
    RolloutIsMean,
    RolloutIsRatioFractionHigh,
}

impl StepMetric {
    /// The per-step scalars: every metric but the rewards and counts.
    pub const SCALARS: [StepMetric; 17] = [
        StepMetric::Kl,
        StepMetric::Entropy,
        StepMetric::GradNorm,
        StepMetric::ClipLowFrac,
        StepMetric::ClipHighFrac,
        StepMetric::FracRewardZeroStd,
        StepMetric::SampleSeconds,
        StepMetric::WaitSeconds,
        StepMetric::ExecuteSeconds,
        StepMetric::ReferenceSeconds,
        StepMetric::UpdateSeconds,
        StepMetric::StepSeconds,
        StepMetric::StalenessMean,
        StepMetric::SlotUtilisation,
        StepMetric::RolloutLogprobDiffMean,
        StepMetric::RolloutIsMean,
        StepMetric::RolloutIsRatioFractionHigh,
    ];

    /// Its key in `metrics.jsonl` and in the store's records.
    pub const fn key(self) -> &'static str {
        match self {
            StepMetric::RewardMean => "reward_mean",
            StepMetric::RewardStd => "reward_std",
            StepMetric::RewardMax => "reward_max",
            StepMetric::BestRewardSoFar => "best_reward_so_far",
            StepMetric::ExecutionRate => "execution_rate",
            StepMetric::Sequences => "sequences",
            StepMetric::Kl => "kl",
            StepMetric::Entropy => "entropy",
            StepMetric::GradNorm => "grad_norm",
            StepMetric::ClipLowFrac => "clip_low_frac",
            StepMetric::ClipHighFrac => "clip_high_frac",
            StepMetric::FracRewardZeroStd => "frac_reward_zero_std",
            StepMetric::SampleSeconds => "sample_seconds",
            StepMetric::WaitSeconds => "wait_seconds",
            StepMetric::ExecuteSeconds => "execute_seconds",
            StepMetric::ReferenceSeconds => "reference_seconds",
            StepMetric::UpdateSeconds => "update_seconds",
            StepMetric::StepSeconds => "step_seconds",
            StepMetric::StalenessMean => "staleness_mean",
            StepMetric::SlotUtilisation => "slot_utilisation",
            StepMetric::RolloutLogprobDiffMean => "rollout_logprob_diff_mean",
            StepMetric::RolloutIsMean => "rollout_is_mean",
            StepMetric::RolloutIsRatioFractionHigh => "rollout_is_ratio_fraction_high",
        }
    }

    /// The key an older build wrote it under, when that differs.
    const fn old_key(self) -> Option<&'static str> {
        match self {
            StepMetric::Sequences => Some("n_ideas"),
            _ => None,
        }
    }
}

/// Rewards of the step's ideas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardStats {
    /// Mean, population std and max of the rewards the learner was given (shaped by the reward mode; left-out
    /// ideas not counted). `None` when it was given none.
    pub reward_mean: Option<f64>,
    pub reward_std: Option<f64>,
    pub reward_max: Option<f64>,
    /// Rewards the learner was given.
    pub sequences: usize,
    /// Fraction of the step's ideas whose execution succeeded.
    pub execution_rate: f64,
    /// Best raw reward of any successful idea of the run so far.
    pub best_reward_so_far: Option<f64>,
    /// Mean idea length, in characters.
    pub idea_chars_mean: f64,
    /// Failed ideas by cause.
    pub failures: BTreeMap<String, usize>,
}

impl RewardStats {
    /// Mean, std and max of `rewards` (the learner's inputs); the other fields are left at their defaults.
    pub fn of(rewards: &[f64]) -> Self {
        let moments = ideator_trainer::grpo::reward_moments(rewards);
        RewardStats {
            reward_mean: moments.map(|m| m.0),
            reward_std: moments.map(|m| m.1),
            reward_max: moments.map(|m| m.2),
            sequences: rewards.len(),
            ..RewardStats::default()
        }
    }
}

/// What the step's groups held and what the backend did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutionStats {
    /// Sampled ideas trained on or left out (reference runs not counted).
    pub ideas: usize,
    /// Executions the step's groups cost: ideas plus reference runs, less cache hits.
    pub executed_ideas: u64,
    pub reference_runs: u64,
    /// Results (ideas and reference runs) copied from the execution cache.
    pub cache_hits: u64,
    /// Ideas left out of the update (infrastructure failures; a failed reference run under a relative reward).
    pub excluded_ideas: u64,
    /// Fraction of groups whose trained rewards are all equal (no policy-gradient signal).
    pub frac_reward_zero_std: f64,
    /// The environment's noise floor (seed-to-seed std of the baseline), when measured.
    pub noise_std: Option<f64>,
    /// Fraction of groups whose reward range lies within the noise floor.
    pub frac_reward_within_noise: Option<f64>,
    /// Executions the backend finished since the previous update (any run's groups).
    pub executions: u64,
    pub executions_per_hour: f64,
    pub slots: usize,
    pub queued_ideas: usize,
    pub running_ideas: usize,
    pub sampled_groups: usize,
    pub dropped_stale_groups: u64,
    pub infrastructure_failures: u64,
}

/// Where the time went since the previous update, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StepTiming {
    pub sample_seconds: f64,
    pub wait_seconds: f64,
    /// The learner's whole update (for GRPO: reference pass and optimiser step).
    pub update_seconds: f64,
    pub step_seconds: f64,
    /// Fraction of the step the learner waited for results.
    pub learner_idle_frac: f64,
    /// Busy slot-seconds over available ones; `None` over an interval too short to measure.
    pub slot_utilisation: Option<f64>,
}

/// The learner's own part of the record: one of these is set, by the learner that made the update (a frozen
/// sampler sets none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnerStats {
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub grpo: Option<GrpoStepStats>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub evolution: Option<EpochStats>,
}

/// An evolution epoch's statistics (rollout/src/evolution/; the seed paper's schedule).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// The baseline recipe's score the database compares against.
    pub baseline_reward: f64,
    /// Successful ideas that beat the reference run at their own seed.
    pub beat_baseline: usize,
    pub exploit_share: f64,
    pub exploit_prompts_planned: usize,
    pub fresh_prompts: usize,
    pub exploit_prompts: usize,
    pub explore_prompts: usize,
    #[serde(default)]
    pub exploit_reward_mean: Option<f64>,
    #[serde(default)]
    pub explore_reward_mean: Option<f64>,
    pub winners_before: usize,
    pub database_size: usize,
    #[serde(default)]
    pub prompt_tokens_mean: Option<f64>,
    pub prompt_tokens_max: f64,
    #[serde(default)]
    pub listed_ideas_mean: Option<f64>,
    pub ideas_dropped_to_fit: usize,
}

impl StepRecord {
    /// The score a checkpoint of this step is kept by (`reward_mean`).
    pub(crate) fn checkpoint_score(&self) -> Option<f64> {
        self.rewards.reward_mean
    }

    /// The record as one flat JSON object (the `metrics.jsonl` line and the store's `metrics` column).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a step record serialises")
    }

    /// Reads a stored or exported record, of this build or an older one: `null`s read as missing, a field whose
    /// value is of another type than this build's is kept in `extra` (and its typed field marked missing), and a
    /// record that does not parse at all reads as a default record keeping every field in `extra`.
    pub fn from_json(value: &serde_json::Value) -> StepRecord {
        let mut fields = value.as_object().cloned().unwrap_or_default();
        fields.retain(|_, v| !v.is_null());
        let (mut record, misfits) = match parse(&fields) {
            Some(record) => (record, serde_json::Map::new()),
            None => {
                let misfits = take_misfits(&mut fields);
                let Some(record) = parse(&fields) else {
                    let missing = MissingFields(StepRecord::default().typed_keys());
                    let extra = value.as_object().cloned().unwrap_or_default();
                    return StepRecord { extra, missing, ..StepRecord::default() };
                };
                (record, misfits)
            }
        };
        // serde hands `extra` every key that a flattened optional part (the learner's) read as well: keep only
        // the keys no typed field holds.
        let typed = record.typed_keys();
        record.extra.retain(|k, _| !typed.contains(k));
        record.extra.extend(misfits);
        record.missing = MissingFields(typed.into_iter().filter(|k| !fields.contains_key(k)).collect());
        record
    }

    /// The keys its typed fields write with a value (not `null`).
    fn typed_keys(&self) -> BTreeSet<String> {
        let typed = StepRecord { extra: Default::default(), ..self.clone() }.to_json();
        let serde_json::Value::Object(map) = typed else { return BTreeSet::new() };
        map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k).collect()
    }

    /// The metric, when the record logged it: from its typed field unless the source did not hold that, else from
    /// what an older build wrote in its place (a key of another name or type, kept in `extra`).
    pub fn get(&self, metric: StepMetric) -> Option<f64> {
        let typed = if self.missing.holds(metric.key()) { None } else { self.typed(metric) };
        typed.or_else(|| self.extra_number(metric))
    }

    /// The per-step scalars ([`StepMetric::SCALARS`]) the record logged.
    pub fn scalars(&self) -> BTreeMap<StepMetric, f64> {
        StepMetric::SCALARS.into_iter().filter_map(|m| self.get(m).map(|v| (m, v))).collect()
    }

    /// The step number, when the record holds one (an evolution record of an older build may hold only `epoch`).
    pub fn logged_step(&self) -> Option<u64> {
        (!self.missing.holds("step")).then_some(self.step)
    }

    /// Failed ideas by cause, when the record holds them.
    pub fn logged_failures(&self) -> Option<&BTreeMap<String, usize>> {
        (!self.missing.holds("failures")).then_some(&self.rewards.failures)
    }

    fn typed(&self, metric: StepMetric) -> Option<f64> {
        let grpo = |f: fn(&GrpoStepStats) -> f64| self.learner.grpo.as_ref().map(f);
        let grpo_logged = |f: fn(&GrpoStepStats) -> Option<f64>| self.learner.grpo.as_ref().and_then(f);
        match metric {
            StepMetric::RewardMean => self.rewards.reward_mean,
            StepMetric::RewardStd => self.rewards.reward_std,
            StepMetric::RewardMax => self.rewards.reward_max,
            StepMetric::BestRewardSoFar => self.rewards.best_reward_so_far,
            StepMetric::ExecutionRate => Some(self.rewards.execution_rate),
            StepMetric::Sequences => Some(self.rewards.sequences as f64),
            StepMetric::Kl => grpo(|g| g.kl),
            StepMetric::Entropy => grpo(|g| g.entropy),
            StepMetric::GradNorm => grpo(|g| g.grad_norm),
            StepMetric::ClipLowFrac => grpo(|g| g.clip_low_frac),
            StepMetric::ClipHighFrac => grpo(|g| g.clip_high_frac),
            StepMetric::ReferenceSeconds => grpo(|g| g.reference_seconds),
            StepMetric::FracRewardZeroStd => Some(self.executions.frac_reward_zero_std),
            StepMetric::SampleSeconds => Some(self.timing.sample_seconds),
            StepMetric::WaitSeconds => Some(self.timing.wait_seconds),
            StepMetric::UpdateSeconds => Some(self.timing.update_seconds),
            StepMetric::StepSeconds => Some(self.timing.step_seconds),
            StepMetric::SlotUtilisation => self.timing.slot_utilisation,
            StepMetric::RolloutLogprobDiffMean => grpo_logged(|g| g.rollout_logprob_diff_mean),
            StepMetric::RolloutIsMean => grpo_logged(|g| g.rollout_is_mean),
            StepMetric::RolloutIsRatioFractionHigh => grpo_logged(|g| g.rollout_is_ratio_fraction_high),
            StepMetric::ExecuteSeconds | StepMetric::StalenessMean => None,
        }
    }

    fn extra_number(&self, metric: StepMetric) -> Option<f64> {
        std::iter::once(metric.key()).chain(metric.old_key()).find_map(|k| self.extra.get(k)?.as_f64())
    }
}

fn parse(fields: &serde_json::Map<String, serde_json::Value>) -> Option<StepRecord> {
    serde_json::from_value(serde_json::Value::Object(fields.clone())).ok()
}

/// Takes out of `fields` those whose value is of another type than their typed field's (a record holding only
/// that field does not parse).
fn take_misfits(
    fields: &mut serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let misfits: Vec<String> = fields
        .iter()
        .filter(|&(k, v)| parse(&serde_json::Map::from_iter([(k.clone(), v.clone())])).is_none())
        .map(|(k, _)| k.clone())
        .collect();
    misfits.iter().filter_map(|k| fields.remove_entry(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpo_record() -> StepRecord {
        StepRecord {
            step: 3,
            policy_version: 3,
            rewards: RewardStats { execution_rate: 0.75, ..RewardStats::of(&[0.1, 0.3]) },
            executions: ExecutionStats { ideas: 2, noise_std: Some(0.01), ..Default::default() },
            timing: StepTiming { step_seconds: 4.0, slot_utilisation: None, ..Default::default() },
            learner: LearnerStats {
                grpo: Some(GrpoStepStats {
                    kl: 0.02,
                    rollout_logprob_diff_mean: Some(0.01),
                    rollout_is_mean: Some(1.0),
                    rollout_is_ratio_fraction_high: Some(0.0),
                    ..Default::default()
                }),
                evolution: None,
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_record_round_trips_through_its_flat_json() {
        let r = grpo_record();
        let json = r.to_json();
        // Flat: the keys of metrics.jsonl are top-level, as older builds wrote them.
        assert_eq!(json["reward_mean"].as_f64(), Some(0.2));
        assert_eq!(json["kl"].as_f64(), Some(0.02));
        assert_eq!(json["ideas"].as_u64(), Some(2));
        assert!(json.get("exploit_share").is_none(), "no evolution part in a GRPO record");
        assert_eq!(StepRecord::from_json(&json), r);
    }

    #[test]
    fn an_evolution_record_reads_back_as_evolution_and_not_grpo() {
        let r = StepRecord {
            epoch: Some(1),
            learner: LearnerStats {
                grpo: None,
                evolution: Some(EpochStats { beat_baseline: 2, database_size: 9, ..Default::default() }),
            },
            ..Default::default()
        };
        let back = StepRecord::from_json(&r.to_json());
        assert_eq!(back.learner.evolution.as_ref().map(|e| e.beat_baseline), Some(2));
        assert!(back.learner.grpo.is_none());
        assert_eq!(back, r);
    }

    #[test]
    fn older_records_load_with_nulls_missing_fields_and_unknown_keys() {
        // A record as an older build wrote it: reward_max null (a non-finite max), no execution counts, a key
        // this build does not know, and the caller's diagnostics.
        let old = serde_json::json!({
            "step": 0, "reward_mean": 0.5, "reward_max": null, "kl": 0.1, "loss": 0.2, "lr": 1e-4,
            "policy_loss": 0.0, "entropy": 1.0, "clip_low_frac": 0.0, "clip_high_frac": 0.0, "ratio_mean": 1.0,
            "ratio_max": 1.0, "grad_norm": 0.3, "completion_len_mean": 12.0, "trained_tokens": 96,
            "updated": true, "reference_seconds": 0.5, "retired_metric": 7, "diagnostics": {"n_ideas": 8}
        });
        let r = StepRecord::from_json(&old);
        assert_eq!(r.rewards.reward_mean, Some(0.5));
        assert_eq!(r.rewards.reward_max, None);
        assert_eq!(r.learner.grpo.as_ref().map(|g| g.kl), Some(0.1));
        assert_eq!(r.extra.get("retired_metric").and_then(|v| v.as_u64()), Some(7));
        assert!(r.extra.contains_key("diagnostics"));
        assert_eq!(r.executions, ExecutionStats::default());
    }

    #[test]
    fn a_record_made_here_logs_every_typed_metric_and_reads_back_the_same() {
        let r = grpo_record();
        assert_eq!(r.get(StepMetric::Kl), Some(0.02));
        assert_eq!(r.get(StepMetric::WaitSeconds), Some(0.0), "logged as zero, not missing");
        assert_eq!(r.get(StepMetric::SlotUtilisation), None, "not measured");
        assert_eq!(r.get(StepMetric::StalenessMean), None, "older builds only");
        let back = StepRecord::from_json(&r.to_json());
        assert_eq!(back.missing, MissingFields::default());
        assert_eq!(back.scalars(), r.scalars());
        assert_eq!(back.logged_step(), Some(3));
    }

    #[test]
    fn an_older_records_metrics_read_as_logged_and_its_absent_ones_as_missing() {
        // The synchronous trainer's record: `n_ideas`, no pipeline timing, an incomplete GRPO part, and two
        // numbers this build does not write.
        let old = serde_json::json!({
            "epoch": 2, "n_ideas": 6, "reward_mean": 0.3, "kl": 0.01, "sample_seconds": 11.0, "update_seconds": 33.0,
            "reference_seconds": 3.4, "execute_seconds": 0.5, "staleness_mean": 0.5
        });
        let r = StepRecord::from_json(&old);
        assert_eq!((r.epoch, r.logged_step()), (Some(2), None));
        assert!(r.learner.grpo.is_none(), "an incomplete GRPO part stays in extra");
        assert_eq!(r.get(StepMetric::Sequences), Some(6.0));
        assert_eq!(r.get(StepMetric::ExecutionRate), None, "missing, not zero");
        assert_eq!(r.logged_failures(), None);
        let scalars: Vec<(StepMetric, f64)> = r.scalars().into_iter().collect();
        assert_eq!(
            scalars,
            [
                (StepMetric::Kl, 0.01),
                (StepMetric::SampleSeconds, 11.0),
                (StepMetric::ExecuteSeconds, 0.5),
                (StepMetric::ReferenceSeconds, 3.4),
                (StepMetric::UpdateSeconds, 33.0),
                (StepMetric::StalenessMean, 0.5),
            ]
        );
    }

    #[test]
    fn a_field_of_another_type_is_kept_in_extra_and_the_rest_still_reads() {
        let odd = serde_json::json!({"step": 4, "sequences": 7.5, "failures": ["crash"], "reward_mean": 0.1});
        let r = StepRecord::from_json(&odd);
        assert_eq!((r.logged_step(), r.rewards.reward_mean), (Some(4), Some(0.1)));
        assert_eq!(r.get(StepMetric::Sequences), Some(7.5), "the number as written");
        assert_eq!(r.logged_failures(), None);
        assert_eq!(r.extra.get("failures"), Some(&serde_json::json!(["crash"])));
    }

    #[test]
    fn metric_names_are_the_exported_keys() {
        let all = [StepMetric::RewardMean, StepMetric::RewardStd, StepMetric::RewardMax, StepMetric::BestRewardSoFar];
        let all =
            all.into_iter().chain([StepMetric::ExecutionRate, StepMetric::Sequences]).chain(StepMetric::SCALARS);
        let json = grpo_record().to_json();
        for m in all {
            assert_eq!(serde_json::to_value(m).unwrap(), m.key(), "{m:?}");
            let exported = json.get(m.key()).is_some();
            let older = matches!(m, StepMetric::ExecuteSeconds | StepMetric::StalenessMean);
            assert!(exported != older, "{m:?}: this build writes every metric but the older builds' ones");
        }
    }
}
