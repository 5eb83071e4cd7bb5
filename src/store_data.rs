//! A run folder's store read as what `report` and `compare` show: the RL run's steps and the evolution's epochs
//! as series (from the step records and the ideas each step trained on), evaluations with their max@k curves,
//! the baseline, checkpoints, staleness and slot utilisation. The store is the source of truth; the JSONL files
//! next to it are exports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ideator_diagnostics::report::{
    from_records, CheckpointInfo, CodeIdeaPoint, CodeIdeaSeries, Evaluation, ReportData, StalenessBin, TopIdea,
    UtilisationPoint,
};
use ideator_diagnostics::{BatchDiagnostics, Category, CodeIdea, CodeIdeaStats, ScoredIdea};
use ideator_envs::Status;
use ideator_rollout::baseline::{stored_noise_floor, NoiseFloor, BASELINE_RUN};
use ideator_rollout::pipeline::StepRecord;
use ideator_rollout::store::{GroupStatus, IdeaRow, RunInfo, RunKind, Store, StoredResult};
use serde_json::{json, Value};

/// The store file of a run folder.
pub fn store_path(run_dir: &Path) -> PathBuf {
    ideator_trainer::run_dir::RunDir::at(run_dir).store_path()
}

/// What an evaluation's run in the store was (its config, written by `ideator eval`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalKey {
    /// The checkpoint folder (canonical), when a checkpoint was evaluated.
    pub checkpoint: Option<String>,
    /// Its step.
    pub step: Option<u64>,
    /// sha256 of its manifest (which holds the weights' hashes): the checkpoint's identity.
    pub manifest_sha256: Option<String>,
    /// The model spec (the base of a checkpoint, when overridden).
    pub model: Option<String>,
    /// sha256 of the model's weight files (when a model rather than a checkpoint was evaluated).
    pub weights_sha256: Vec<String>,
    pub env: String,
    pub env_config_sha256: Option<String>,
    pub scale: String,
    pub n: usize,
    pub seed: u64,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub time_limit_s: Option<f64>,
    /// Precision of the forward passes (`--dtype`) and of the weights sampling read (`--sampling-dtype`). Each is
    /// left out of the key when f32, so evaluations stored before these fields existed keep their names.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub dtype: ideator_model::device::Precision,
    #[serde(default, skip_serializing_if = "is_f32")]
    pub sampling_dtype: ideator_model::device::Precision,
}

fn is_f32(p: &ideator_model::device::Precision) -> bool {
    *p == ideator_model::device::Precision::F32
}

impl EvalKey {
    /// How the evaluation is named in tables and legends.
    pub fn label(&self) -> String {
        match (&self.checkpoint, self.step) {
            // Checkpoints of different runs (a warm-up and the RL run after it) share step numbers: name the run.
            (Some(c), Some(step)) => match run_of_checkpoint(Path::new(c)) {
                Some(run) => format!("checkpoint {run} step {step}"),
                None => format!("checkpoint step {step}"),
            },
            (Some(c), None) => format!("checkpoint {c}"),
            _ => format!("model {}", self.model.as_deref().unwrap_or("default")),
        }
    }
}

/// The run folder a checkpoint is in (`RUN/checkpoints/step-N` -> `RUN`).
pub fn checkpoint_run_dir(checkpoint: &Path) -> Option<PathBuf> {
    let parent = checkpoint.parent()?;
    let run = if parent.file_name()? == "checkpoints" { parent.parent()? } else { parent };
    Some(run.to_path_buf())
}

fn run_of_checkpoint(checkpoint: &Path) -> Option<String> {
    Some(checkpoint_run_dir(checkpoint)?.file_name()?.to_string_lossy().into_owned())
}

/// One run of the store, as shown.
pub struct LoadedRun {
    pub info: RunInfo,
    /// Index into `ReportData::series` (RL and evolution runs).
    pub series: Option<usize>,
    /// Index into `ReportData::evaluations` (evaluations).
    pub evaluation: Option<usize>,
    pub eval_key: Option<EvalKey>,
    /// Rewards of the executed ideas in the order they were trained on (0 for failures): the best reward
    /// within a budget of executions is the best of a prefix.
    pub rewards: Vec<f64>,
    /// For each reward, whether its idea cost an execution (false: copied from the execution cache).
    pub executed: Vec<bool>,
}

impl LoadedRun {
    /// The best reward among the ideas whose executions fit in `budget` (cache hits are free).
    pub fn best_within(&self, budget: usize) -> Option<f64> {
        let mut spent = 0;
        let mut best: Option<f64> = None;
        for (&r, &executed) in self.rewards.iter().zip(&self.executed) {
            spent += usize::from(executed);
            if spent > budget {
                break;
            }
            best = Some(best.map_or(r, |b| b.max(r)));
        }
        best
    }
}

pub struct StoreData {
    pub data: ReportData,
    pub runs: Vec<LoadedRun>,
    /// The baseline recipe's mean score over its seeds.
    pub baseline: Option<f64>,
    /// The baseline's scores across seeds: the environment's noise floor.
    pub noise: Option<NoiseFloor>,
}

/// The idea record of one trained idea, in the shape of `ideas.jsonl`.
fn idea_record(idea: &IdeaRow, step: u64, evolution: bool, category: Option<Vec<String>>) -> Option<Value> {
    let r = idea.result.as_ref()?;
    let mut v = json!({
        "step": step,
        "text": idea.text,
        "status": r.status,
        "reward": r.reward,
        "cause": r.cause.map(|c| c.as_str().to_string()),
        "category": category,
    });
    if evolution {
        v["epoch"] = step.into();
    }
    Some(v)
}

/// A stored result as the code-idea statistics read it.
pub fn code_idea(r: &StoredResult) -> CodeIdea<'_> {
    CodeIdea { metrics: &r.metrics, changed: &r.changed }
}

/// The code units a code idea's applied diff touched, as its category (`None` for other ideas and for diffs that
/// did not apply). The report uses it when the environment cannot be loaded to categorise the text again (a
/// codebase environment needs its config file).
fn stored_code_category(idea: &IdeaRow) -> Option<Vec<String>> {
    let r = idea.result.as_ref()?;
    (r.metrics.get("applied").is_some_and(|a| *a >= 0.5)).then(|| r.changed.clone())
}

fn code_ideas_of(ideas: &[IdeaRow]) -> Vec<CodeIdea<'_>> {
    ideas.iter().filter_map(|i| i.result.as_ref().map(code_idea)).collect()
}

/// Code-idea statistics of one learner per step (or epoch) and overall, from the ideas each step trained on;
/// `None` when none of them is a code idea.
fn code_idea_series(per_step: &[(u64, Vec<IdeaRow>)]) -> Option<(CodeIdeaStats, Vec<CodeIdeaPoint>)> {
    let overall = CodeIdeaStats::compute(per_step.iter().flat_map(|(_, ideas)| code_ideas_of(ideas)))?;
    let points = per_step
        .iter()
        .filter_map(|(step, ideas)| {
            CodeIdeaStats::compute(code_ideas_of(ideas)).map(|stats| CodeIdeaPoint { index: *step, stats })
        })
        .collect();
    Some((overall, points))
}

/// Reads every run of the store in `run_dir`.
pub fn load_store(run_dir: &Path) -> anyhow::Result<StoreData> {
    let path = store_path(run_dir);
    anyhow::ensure!(path.is_file(), "{} has no run store (store.sqlite)", run_dir.display());
    // Readers never write: archived run folders on read-only storage must stay readable.
    let store = Store::open_read_only(&path)?;
    let mut data = ReportData {
        title: run_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| run_dir.display().to_string()),
        source: path.display().to_string(),
        ..Default::default()
    };
    let mut runs = Vec::new();
    let mut top: Vec<TopIdea> = Vec::new();
    let noise = stored_noise_floor(&store)?;
    let baseline = noise.as_ref().map(|f| f.mean);
    for info in store.runs()? {
        if info.name == BASELINE_RUN {
            continue;
        }
        // Categories need the environment (the command environment needs its config: then none are shown).
        let env = ideator_envs::load(&info.env, None).ok();
        let categorize =
            |text: &str| env.as_ref().and_then(|e| crate::execution::categorize(e.as_ref(), &info.scale, text));
        let steps = store.steps(info.id)?;
        let mut loaded = LoadedRun {
            info: info.clone(),
            series: None,
            evaluation: None,
            eval_key: None,
            rewards: vec![],
            executed: vec![],
        };
        match info.kind {
            RunKind::Rl | RunKind::Evolve => {
                let evolution = info.kind == RunKind::Evolve;
                let mut records = Vec::new();
                let mut ideas = Vec::new();
                let mut per_step = Vec::new();
                for s in &steps {
                    let mut record = s.record.clone();
                    if evolution {
                        record.epoch.get_or_insert(s.step);
                    }
                    records.push(record);
                    let step_ideas = store.ideas_of_step(info.id, s.step)?;
                    for idea in &step_ideas {
                        loaded.rewards.push(idea.result.as_ref().map_or(0.0, |r| r.reward));
                        loaded.executed.push(idea.cached_from.is_none());
                        let category = categorize(&idea.text).or_else(|| stored_code_category(idea));
                        if let Some(v) = idea_record(idea, s.step, evolution, category) {
                            ideas.push(v);
                        }
                    }
                    per_step.push((s.step, step_ideas));
                }
                let (series, best) = from_records(&path, &records, &ideas, &mut data.notes)?;
                top.extend(best);
                let code = code_idea_series(&per_step);
                for mut s in series {
                    if info.name != "train" && info.name != "evolve" {
                        s.label = info.name.clone();
                    }
                    if let Some((overall, points)) = &code {
                        data.code_ideas.push(CodeIdeaSeries {
                            kind: s.kind,
                            label: s.label.clone(),
                            overall: overall.clone(),
                            points: points.clone(),
                        });
                    }
                    loaded.series = Some(data.series.len());
                    data.series.push(s);
                }
                if data.config_text.is_none() || !evolution {
                    if let Some(c) = store.configs(info.id)?.pop() {
                        data.config_text = Some(c);
                    }
                }
                if !evolution {
                    for c in store.checkpoints(info.id)? {
                        data.checkpoints.push(CheckpointInfo { step: c.step, score: c.score });
                    }
                    for (staleness, groups) in store.staleness_histogram(info.id)? {
                        data.staleness.push(StalenessBin { staleness, groups: groups as usize });
                    }
                }
                if data.utilisation.is_empty() || !evolution {
                    data.utilisation = utilisation(&steps.iter().map(|s| &s.record).collect::<Vec<_>>());
                }
            }
            RunKind::Eval => {
                let key: Option<EvalKey> = store.configs(info.id)?.first().and_then(|c| serde_json::from_str(c).ok());
                let ideas: Vec<IdeaRow> = store
                    .groups_with_status(info.id, &[GroupStatus::Trained])?
                    .into_iter()
                    .flat_map(|g| g.ideas)
                    .collect();
                loaded.rewards = ideas.iter().map(|i| i.result.as_ref().map_or(0.0, |r| r.reward)).collect();
                loaded.executed = ideas.iter().map(|i| i.cached_from.is_none()).collect();
                if ideas.is_empty() {
                    data.notes.push(format!("evaluation {} has no results yet", info.name));
                } else {
                    let stored = steps.first().and_then(|s| crate::execution::stored_diagnostics(&s.record));
                    let diagnostics = match stored {
                        Some(d) => d,
                        None => ideas_diagnostics(&ideas, &categorize)?,
                    };
                    loaded.evaluation = Some(data.evaluations.len());
                    data.evaluations.push(Evaluation {
                        label: key.as_ref().map_or_else(|| info.name.clone(), EvalKey::label),
                        step: key.as_ref().and_then(|k| k.step),
                        diagnostics,
                    });
                }
                loaded.eval_key = key;
            }
            // Skipped above: the noise floor is shown as a note.
            RunKind::Baseline => {}
        }
        runs.push(loaded);
    }
    data.checkpoints.sort_by_key(|c| c.step);
    top.sort_by(|a, b| b.reward.total_cmp(&a.reward).then(a.index.cmp(&b.index)));
    top.truncate(ideator_diagnostics::report::run_folder::TOP_IDEAS);
    data.top_ideas = top;
    if let Some(f) = &noise {
        data.notes.push(noise_note(f));
    }
    Ok(StoreData { data, runs, baseline, noise })
}

/// One line on the baseline and the noise floor, for reports and summaries.
pub fn noise_note(f: &NoiseFloor) -> String {
    match f.std {
        Some(std) => format!(
            "the environment's baseline scored {:.4} on average over {} seeds (range {:.4}-{:.4}); its seed-to-seed \
             std, the noise floor, is {std:.5}: differences below it between ideas run at different seeds are noise",
            f.mean, f.runs, f.min, f.max
        ),
        None => format!("the environment's baseline scored {:.4} in this store (one seed: no noise floor)", f.mean),
    }
}

/// The batch diagnostics of stored ideas (no embeddings).
pub fn ideas_diagnostics(
    ideas: &[IdeaRow],
    categorize: &dyn Fn(&str) -> Option<Vec<String>>,
) -> anyhow::Result<BatchDiagnostics> {
    ideas_diagnostics_with(ideas, categorize, None)
}

/// The batch diagnostics of stored ideas, with embeddings when an embedder is given.
pub fn ideas_diagnostics_with(
    ideas: &[IdeaRow],
    categorize: &dyn Fn(&str) -> Option<Vec<String>>,
    embedder: Option<&dyn ideator_diagnostics::SentenceEmbedder>,
) -> anyhow::Result<BatchDiagnostics> {
    let categories: Vec<Option<Category>> =
        ideas.iter().map(|i| categorize(&i.text).map(|c| c.into_iter().collect())).collect();
    let scored: Vec<ScoredIdea> = ideas
        .iter()
        .zip(&categories)
        .map(|(i, c)| {
            let r = i.result.as_ref();
            ScoredIdea {
                text: &i.text,
                reward: r.map_or(0.0, |r| r.reward),
                executed: r.is_some_and(|r| r.status == Status::Ok),
                category: c.as_ref(),
            }
        })
        .collect();
    Ok(BatchDiagnostics::compute(&scored, embedder)?)
}

/// Busy slots per step, at the time each step ended (from the records' `slot_utilisation`, `slots` and
/// `step_seconds`).
fn utilisation(records: &[&StepRecord]) -> Vec<UtilisationPoint> {
    let mut seconds = 0.0;
    let mut out = Vec::new();
    for r in records {
        seconds += r.timing.step_seconds;
        let (Some(u), slots) = (r.timing.slot_utilisation, r.executions.slots as f64) else { continue };
        if slots == 0.0 {
            continue;
        }
        out.push(UtilisationPoint {
            seconds,
            busy_slots: u * slots,
            total_slots: slots,
            queue_depth: Some(r.executions.queued_ideas as f64),
        });
    }
    out
}

/// Environments and scales of the runs, each with the runs on it (for refusing mixed comparisons).
pub fn environments<'a>(runs: impl Iterator<Item = &'a RunInfo>) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in runs {
        out.entry((r.env.clone(), r.scale.clone())).or_default().push(r.name.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ideator_model::device::Precision;

    fn key() -> EvalKey {
        EvalKey {
            checkpoint: None,
            step: None,
            manifest_sha256: None,
            model: Some("m".into()),
            weights_sha256: vec![],
            env: "toy".into(),
            env_config_sha256: None,
            scale: "tiny".into(),
            n: 4,
            seed: 0,
            temperature: 1.0,
            top_p: 1.0,
            max_new_tokens: 16,
            batch_size: 4,
            time_limit_s: None,
            dtype: Precision::F32,
            sampling_dtype: Precision::F32,
        }
    }

    /// An evaluation sampled from the bf16 copy is not the f32 one (its stored results are not reused for it), and
    /// an f32 evaluation's key is written as before these fields existed, so its stored name does not change.
    #[test]
    fn the_precisions_are_part_of_an_evaluations_identity_and_f32_keeps_older_keys() {
        let f32_text = serde_json::to_string(&key()).unwrap();
        assert!(!f32_text.contains("dtype"), "{f32_text}");
        let older: EvalKey = serde_json::from_str(&f32_text).unwrap();
        assert_eq!(older, key());
        let copy = EvalKey { sampling_dtype: Precision::Bf16, ..key() };
        let bf16 = EvalKey { dtype: Precision::Bf16, ..key() };
        let texts = [f32_text, serde_json::to_string(&copy).unwrap(), serde_json::to_string(&bf16).unwrap()];
        assert!(texts[0] != texts[1] && texts[1] != texts[2] && texts[0] != texts[2], "{texts:?}");
    }
}
