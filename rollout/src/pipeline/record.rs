//! The typed record of one update (an RL step or an evolution epoch): what the pipeline measured (rewards,
//! executions, timings, staleness), what the learner reports ([`LearnerStats`]) and what the caller's per-step
//! hook added (idea diagnostics, collapse alarms). The store keeps it, `metrics.jsonl` exports it (one flat JSON
//! object per line, the same keys as before the record was typed), and the CLI, the report and checkpoint
//! selection read it. Metric names are spelled here and nowhere else in the pipeline.
//!
//! Reading is lenient so that the records of older run folders still load: every field has a default, and a
//! `null` (how JSON writes a non-finite number) reads as missing.

use std::collections::BTreeMap;

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

    /// Reads a stored or exported record, of this build or an older one: `null`s read as missing, and a record
    /// that does not parse at all (a field of another type) reads as a default record keeping every field in
    /// `extra`.
    pub fn from_json(value: &serde_json::Value) -> StepRecord {
        let mut cleaned = value.clone();
        if let serde_json::Value::Object(map) = &mut cleaned {
            map.retain(|_, v| !v.is_null());
        }
        let Ok(mut record) = serde_json::from_value::<StepRecord>(cleaned) else {
            return StepRecord { extra: value.as_object().cloned().unwrap_or_default(), ..StepRecord::default() };
        };
        // serde hands `extra` every key that a flattened optional part (the learner's) read as well: keep only
        // the keys no typed field holds.
        let typed = StepRecord { extra: Default::default(), ..record.clone() }.to_json();
        if let serde_json::Value::Object(keys) = typed {
            record.extra.retain(|k, _| !keys.contains_key(k));
        }
        record
    }
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
            learner: LearnerStats { grpo: Some(GrpoStepStats { kl: 0.02, ..Default::default() }), evolution: None },
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
}
