//! Loads [`ReportData`] from a run folder as `ideator train` writes it: `metrics.jsonl` (one record per RL step,
//! or per evolution epoch when the record has an `epoch` field), `ideas.jsonl` (one executed idea per line),
//! `config.toml` and `checkpoints/*/manifest.json`.
//!
//! Each metrics line is read as the pipeline's typed [`StepRecord`] (with its lenient reader, so that the records
//! of older builds load too); its numbers come from the record's typed fields and [`StepMetric`]s, its diagnostics
//! and alarms through [`crate::step_entries`]. No metric key is spelled here.
//!
//! The loader is lenient where a run can legitimately differ (missing fields, a record without diagnostics, a
//! last line cut short by a crash) and strict where the data are wrong (a malformed line in the middle of a file):
//! what it skips is listed in [`ReportData::notes`] so the report says so.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ideator_rollout::pipeline::record::StepMetric;
use ideator_rollout::pipeline::StepRecord;
use serde::Deserialize;
use serde_json::Value;

use crate::categories::{category_label, Category};
use crate::error::{DiagnosticsError, Result};
use crate::step_entries;
use crate::summary::{BatchDiagnostics, ScoredIdea};

use super::data::{CheckpointInfo, ReportData, RunSeries, SeriesKind, SeriesPoint, TopIdea};

/// How many of the best ideas the report lists.
pub const TOP_IDEAS: usize = 20;

/// One line of `ideas.jsonl`, with only the fields the report uses.
#[derive(Debug, Clone, Deserialize)]
struct IdeaLine {
    #[serde(default)]
    step: Option<u64>,
    #[serde(default)]
    epoch: Option<u64>,
    text: String,
    status: String,
    reward: f64,
    #[serde(default)]
    cause: Option<String>,
    #[serde(default)]
    category: Option<Vec<String>>,
}

impl IdeaLine {
    fn key(&self) -> Option<(SeriesKind, u64)> {
        match (self.epoch, self.step) {
            (Some(e), _) => Some((SeriesKind::Evolution, e)),
            (None, Some(s)) => Some((SeriesKind::Rl, s)),
            (None, None) => None,
        }
    }
    fn executed(&self) -> bool {
        self.status == "ok"
    }
}

/// Reads a run folder into the report's data model.
pub fn load_run_folder(dir: &Path) -> Result<ReportData> {
    if !dir.is_dir() {
        return Err(DiagnosticsError::file(dir, "not a folder: pass the run folder that `ideator train` wrote"));
    }
    let metrics_path = dir.join("metrics.jsonl");
    let ideas_path = dir.join("ideas.jsonl");
    if !metrics_path.exists() && !ideas_path.exists() {
        return Err(DiagnosticsError::file(
            dir,
            "has neither metrics.jsonl nor ideas.jsonl: is it a run folder written by `ideator train`? \
             (the folder holding config.toml and checkpoints/)",
        ));
    }
    let mut notes = Vec::new();
    let ideas: Vec<IdeaLine> = if ideas_path.exists() { read_jsonl(&ideas_path, &mut notes)? } else { Vec::new() };
    let records: Vec<StepRecord> = if metrics_path.exists() {
        read_jsonl::<Value>(&metrics_path, &mut notes)?.iter().map(StepRecord::from_json).collect()
    } else {
        Vec::new()
    };
    let (series, top_ideas) = build(&metrics_path, &records, &ideas, &mut notes)?;
    let config_text = std::fs::read_to_string(dir.join("config.toml")).ok();
    let title = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    Ok(ReportData {
        title,
        source: dir.display().to_string(),
        config_text,
        series,
        evaluations: Vec::new(),
        checkpoints: checkpoints(&dir.join("checkpoints")),
        top_ideas,
        staleness: Vec::new(),
        utilisation: Vec::new(),
        notes,
        code_ideas: Vec::new(),
        experiment: None,
    })
}

/// The series and best ideas of one run from its step records and idea records, as any source holds them (the
/// records `ideator train` and `ideator evolve` write to `metrics.jsonl` and `ideas.jsonl`, or their copies in the
/// run store). `source` names where they came from in errors and notes.
pub fn from_records(
    source: &Path,
    records: &[StepRecord],
    ideas: &[Value],
    notes: &mut Vec<String>,
) -> Result<(Vec<RunSeries>, Vec<TopIdea>)> {
    let ideas: Vec<IdeaLine> = ideas
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| DiagnosticsError::file(source, format!("an idea record is not valid: {e}")))?;
    build(source, records, &ideas, notes)
}

fn build(
    metrics_path: &Path,
    records: &[StepRecord],
    ideas: &[IdeaLine],
    notes: &mut Vec<String>,
) -> Result<(Vec<RunSeries>, Vec<TopIdea>)> {
    let mut ideas_by_point: BTreeMap<(SeriesKind, u64), Vec<&IdeaLine>> = BTreeMap::new();
    for idea in ideas {
        if let Some(key) = idea.key() {
            ideas_by_point.entry(key).or_default().push(idea);
        }
    }
    let series = if records.is_empty() {
        if !ideas.is_empty() {
            notes.push("metrics.jsonl is missing or empty: the points come from ideas.jsonl alone".into());
        }
        series_from_ideas(&ideas_by_point, notes)
    } else {
        series_from_metrics(metrics_path, records, &ideas_by_point, notes)?
    };
    Ok((series, top_ideas(ideas, TOP_IDEAS)))
}

/// Parses every line; a bad last line (a write cut short) is noted and skipped, a bad line elsewhere is an error.
fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path, notes: &mut Vec<String>) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| DiagnosticsError::file(path, e.to_string()))?;
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l)).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (pos, &(number, line)) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(e) if pos + 1 == lines.len() && !text.ends_with('\n') => {
                notes.push(format!("{}: skipped the unfinished last line {number} ({e})", file_name(path)));
            }
            Err(e) => {
                return Err(DiagnosticsError::file(
                    path,
                    format!("line {number} is not a valid record: {e}; fix or delete that line"),
                ))
            }
        }
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn series_from_metrics(
    path: &Path,
    records: &[StepRecord],
    ideas: &BTreeMap<(SeriesKind, u64), Vec<&IdeaLine>>,
    notes: &mut Vec<String>,
) -> Result<Vec<RunSeries>> {
    // A resumed run may repeat a step; the later record is the one that counts.
    let mut by_key: BTreeMap<(SeriesKind, u64), &StepRecord> = BTreeMap::new();
    for (i, record) in records.iter().enumerate() {
        let key = match (record.epoch, record.logged_step()) {
            (Some(e), _) => (SeriesKind::Evolution, e),
            (None, Some(s)) => (SeriesKind::Rl, s),
            (None, None) => {
                return Err(DiagnosticsError::file(
                    path,
                    format!("record {} has neither a `step` nor an `epoch` number", i + 1),
                ))
            }
        };
        if by_key.insert(key, record).is_some() {
            notes.push(format!("metrics.jsonl: {} {} appears twice; the later record is shown", key.0.unit(), key.1));
        }
    }
    let mut series: BTreeMap<SeriesKind, Vec<SeriesPoint>> = BTreeMap::new();
    for ((kind, index), record) in by_key {
        let point_ideas = ideas.get(&(kind, index)).map_or(&[][..], Vec::as_slice);
        series.entry(kind).or_default().push(point_from_record(kind, index, record, point_ideas, notes));
    }
    Ok(series.into_iter().map(|(kind, points)| finish_series(kind, points)).collect())
}

fn point_from_record(
    kind: SeriesKind,
    index: u64,
    record: &StepRecord,
    ideas: &[&IdeaLine],
    notes: &mut Vec<String>,
) -> SeriesPoint {
    let where_ = format!("{} {index}", kind.unit());
    let diagnostics = recorded_diagnostics(record, &where_, notes).or_else(|| recomputed(ideas, &where_, notes));
    let alarms = step_entries::alarms(record).unwrap_or_else(|e| {
        notes.push(format!("metrics.jsonl, {where_}: unreadable alarms ({e})"));
        Vec::new()
    });
    let failures = record.logged_failures().cloned().unwrap_or_else(|| failures_from_ideas(ideas));
    let d = diagnostics.as_ref();
    let n_ideas =
        record.get(StepMetric::Sequences).map(|n| n as usize).or(d.map(|d| d.n_ideas)).unwrap_or(ideas.len());
    SeriesPoint {
        index,
        n_ideas,
        executions: 0,
        reward_mean: record.get(StepMetric::RewardMean).or(d.map(|d| d.mean_reward)).unwrap_or(f64::NAN),
        reward_max: record.get(StepMetric::RewardMax).or(d.map(|d| d.best_reward)).unwrap_or(f64::NAN),
        reward_std: record.get(StepMetric::RewardStd).or(d.map(|d| d.reward_std)),
        // Missing and null both mean "not known here"; `finish_series` fills a series that never logs it.
        best_so_far: record.get(StepMetric::BestRewardSoFar),
        execution_rate: record.get(StepMetric::ExecutionRate).or(d.map(|d| d.execution_rate)).unwrap_or(f64::NAN),
        failures,
        alarms,
        scalars: record.scalars(),
        diagnostics,
    }
}

/// The diagnostics the record holds, if they read.
fn recorded_diagnostics(record: &StepRecord, where_: &str, notes: &mut Vec<String>) -> Option<BatchDiagnostics> {
    step_entries::diagnostics(record).unwrap_or_else(|e| {
        notes.push(format!("metrics.jsonl, {where_}: unreadable diagnostics ({e})"));
        None
    })
}

/// The trainer logs diagnostics when it can; else the text metrics are recomputed from the ideas (no embeddings).
fn recomputed(ideas: &[&IdeaLine], where_: &str, notes: &mut Vec<String>) -> Option<BatchDiagnostics> {
    if ideas.is_empty() {
        return None;
    }
    let diagnostics = diagnostics_from_ideas(ideas);
    if diagnostics.is_some() {
        notes.push(format!("{where_}: diagnostics recomputed from ideas.jsonl, without embeddings"));
    }
    diagnostics
}

/// Cumulative executions; a best-so-far from the ideas' rewards when the records do not log one.
fn finish_series(kind: SeriesKind, mut points: Vec<SeriesPoint>) -> RunSeries {
    let logs_best = points.iter().any(|p| p.best_so_far.is_some());
    let mut executions = 0;
    let mut best: Option<f64> = None;
    for p in &mut points {
        executions += p.n_ideas;
        p.executions = executions;
        if !logs_best && p.execution_rate > 0.0 && p.reward_max.is_finite() {
            best = Some(best.map_or(p.reward_max, |b| b.max(p.reward_max)));
            p.best_so_far = best;
        }
    }
    RunSeries { kind, label: kind.name().to_string(), points }
}

fn diagnostics_from_ideas(ideas: &[&IdeaLine]) -> Option<BatchDiagnostics> {
    let categories: Vec<Option<Category>> =
        ideas.iter().map(|i| i.category.as_ref().map(|c| c.iter().cloned().collect())).collect();
    let scored: Vec<ScoredIdea> = ideas
        .iter()
        .zip(&categories)
        .map(|(i, c)| ScoredIdea { text: &i.text, reward: i.reward, executed: i.executed(), category: c.as_ref() })
        .collect();
    BatchDiagnostics::compute(&scored, None).ok()
}

fn failures_from_ideas(ideas: &[&IdeaLine]) -> BTreeMap<String, usize> {
    let mut causes = BTreeMap::new();
    for idea in ideas.iter().filter(|i| !i.executed()) {
        *causes.entry(idea.cause.clone().unwrap_or_else(|| "unknown".into())).or_insert(0) += 1;
    }
    causes
}

/// Points built from ideas alone (a run whose metrics were not written).
fn series_from_ideas(ideas: &BTreeMap<(SeriesKind, u64), Vec<&IdeaLine>>, notes: &mut Vec<String>) -> Vec<RunSeries> {
    let mut series: BTreeMap<SeriesKind, Vec<SeriesPoint>> = BTreeMap::new();
    for (&(kind, index), point_ideas) in ideas {
        let Some(d) = diagnostics_from_ideas(point_ideas) else {
            notes.push(format!("{} {index}: could not summarise its ideas", kind.unit()));
            continue;
        };
        series.entry(kind).or_default().push(SeriesPoint {
            index,
            n_ideas: d.n_ideas,
            executions: 0,
            reward_mean: d.mean_reward,
            reward_max: d.best_reward,
            reward_std: Some(d.reward_std),
            best_so_far: None,
            execution_rate: d.execution_rate,
            failures: failures_from_ideas(point_ideas),
            diagnostics: Some(d),
            alarms: Vec::new(),
            scalars: BTreeMap::new(),
        });
    }
    series.into_iter().map(|(kind, points)| finish_series(kind, points)).collect()
}

/// Checkpoints by their manifest (or, failing that, by their folder name `step-NNNNNNNN`).
fn checkpoints(dir: &Path) -> Vec<CheckpointInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<CheckpointInfo> = entries
        .flatten()
        .filter_map(|e| {
            let path: PathBuf = e.path();
            let manifest: Option<Value> =
                std::fs::read_to_string(path.join("manifest.json")).ok().and_then(|t| serde_json::from_str(&t).ok());
            let from_name = path.file_name()?.to_str()?.strip_prefix("step-")?.parse::<u64>().ok();
            let step = manifest.as_ref().and_then(|m| m.get("step")?.as_u64()).or(from_name)?;
            let score = manifest.as_ref().and_then(|m| m.get("score")?.as_f64());
            Some(CheckpointInfo { step, score })
        })
        .collect();
    out.sort_by_key(|c| c.step);
    out
}

/// The best executed ideas, one row per distinct text, with how many times the text occurred.
fn top_ideas(ideas: &[IdeaLine], n: usize) -> Vec<TopIdea> {
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for idea in ideas {
        *copies.entry(idea.text.as_str()).or_insert(0) += 1;
    }
    let mut best: HashMap<&str, TopIdea> = HashMap::new();
    for idea in ideas.iter().filter(|i| i.executed() && i.reward.is_finite()) {
        let Some((kind, index)) = idea.key() else { continue };
        let replace = best.get(idea.text.as_str()).is_none_or(|b| idea.reward > b.reward);
        if replace {
            best.insert(
                &idea.text,
                TopIdea {
                    kind,
                    index,
                    reward: idea.reward,
                    category: idea.category.as_ref().map(|c| category_label(&c.iter().cloned().collect())),
                    copies: copies[idea.text.as_str()],
                    text: idea.text.clone(),
                },
            );
        }
    }
    let mut out: Vec<TopIdea> = best.into_values().collect();
    out.sort_by(|a, b| b.reward.total_cmp(&a.reward).then(a.index.cmp(&b.index)).then(a.text.cmp(&b.text)));
    out.truncate(n);
    out
}
