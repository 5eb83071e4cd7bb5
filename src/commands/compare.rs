//! `ideator compare RUN|CHECKPOINT ...`: RL steps, evolution epochs and evaluations of checkpoints side by side on
//! one environment: each row's average reward and best-of-N (the best of its N ideas), with the executions it
//! used; then one line per run with its total executions, and the best reward each found within the smallest
//! budget of them all (best-of-N grows with N, so only equal budgets compare fairly).
//!
//! A run folder contributes every run in its store; a checkpoint contributes the evaluations of it that
//! `ideator eval` stored in its run folder. Inputs on different environments or scales are refused unless
//! `--allow-mixed` (then the table says so).

use std::path::{Path, PathBuf};

use serde::Serialize;

use ideator_diagnostics::interval::{bootstrap_mean_difference, MeanDifference};
use ideator_rollout::baseline::NoiseFloor;
use ideator_rollout::store::RunKind;

use crate::store_data::{checkpoint_run_dir, environments, load_store, store_path, LoadedRun, StoreData};

#[derive(clap::Args)]
pub struct Args {
    /// Run folders (with store.sqlite) and/or checkpoint folders evaluated with `ideator eval`; or one
    /// experiment folder (`ideator experiment`), whose arms are compared.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Compare inputs on different environments or scales anyway (their rewards are not comparable).
    #[arg(long)]
    pub allow_mixed: bool,
    #[arg(long)]
    pub json: bool,
}

/// One row: an RL step, an evolution epoch or an evaluation.
#[derive(Debug, Serialize)]
pub struct Row {
    pub source: String,
    pub run: String,
    /// "RL", "evolution" or "eval".
    pub kind: String,
    /// "step 3", "epoch 1", "checkpoint step 8".
    pub at: String,
    pub ideas: usize,
    /// Executions of this run up to and including this row.
    pub executions: usize,
    pub mean: f64,
    pub best_of_n: f64,
    pub best_so_far: Option<f64>,
    pub execution_rate: f64,
}

/// One run's totals.
#[derive(Debug, Serialize)]
pub struct Total {
    pub source: String,
    pub run: String,
    pub kind: String,
    pub env: String,
    pub scale: String,
    /// Ideas sampled.
    pub ideas: usize,
    /// Executions that really ran (cache hits are free; reference runs of the baseline count).
    pub executions: usize,
    pub mean: f64,
    pub best: Option<f64>,
    /// Best reward within the first `budget` executions (the smallest total of the runs compared).
    pub best_at_budget: Option<f64>,
    /// Its mean reward against the first run's, with a 95% bootstrap interval (none for the first run).
    pub vs_first: Option<MeanDifference>,
    /// Whether that difference is beyond chance and larger than the noise floor (when the store measured one).
    pub beyond_noise: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub rows: Vec<Row>,
    pub totals: Vec<Total>,
    pub budget: usize,
    pub baseline: Option<f64>,
    /// The environment's noise floor (the baseline recipe's scores across seeds), when measured.
    pub noise: Option<NoiseFloor>,
    pub warnings: Vec<String>,
}

/// Which runs of a loaded store an input names.
struct Selected {
    source: String,
    store: StoreData,
    /// Indices into `store.runs`.
    runs: Vec<usize>,
}

fn select(input: &Path) -> anyhow::Result<Selected> {
    if store_path(input).is_file() {
        let store = load_store(input)?;
        let runs = (0..store.runs.len()).collect();
        return Ok(Selected { source: input.display().to_string(), store, runs });
    }
    anyhow::ensure!(
        input.join("manifest.json").is_file(),
        "{} is neither a run folder with a store (store.sqlite) nor a checkpoint folder",
        input.display()
    );
    // A checkpoint is recognised by its manifest's hash (its identity wherever the folder now lies), or by the
    // canonical path evaluations of older versions were keyed by.
    let canonical = std::fs::canonicalize(input)?.display().to_string();
    let manifest_sha256 = ideator_checkpoints::sha256_file(&input.join("manifest.json"))?;
    let run_dir = checkpoint_run_dir(input).filter(|r| store_path(r).is_file()).ok_or_else(|| {
        anyhow::anyhow!(
            "checkpoint {} has no run store next to it; evaluate it first: ideator eval --checkpoint {} \
                 --env ENV --n N",
            input.display(),
            input.display()
        )
    })?;
    let store = load_store(&run_dir)?;
    let runs: Vec<usize> = store
        .runs
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.eval_key.as_ref().is_some_and(|k| {
                k.manifest_sha256.as_deref() == Some(manifest_sha256.as_str())
                    || k.checkpoint.as_deref() == Some(canonical.as_str())
            })
        })
        .filter(|(_, r)| r.evaluation.is_some())
        .map(|(i, _)| i)
        .collect();
    anyhow::ensure!(
        !runs.is_empty(),
        "no stored evaluation of checkpoint {} in {}; run: ideator eval --checkpoint {} --env ENV --n N",
        input.display(),
        run_dir.display(),
        input.display()
    );
    Ok(Selected { source: input.display().to_string(), store, runs })
}

fn kind_name(run: &LoadedRun) -> &'static str {
    match run.info.kind {
        RunKind::Rl => "RL",
        RunKind::Evolve => "evolution",
        RunKind::Eval | RunKind::Baseline => "eval",
    }
}

/// Builds the comparison of the inputs.
pub fn compare(inputs: &[PathBuf], allow_mixed: bool) -> anyhow::Result<Comparison> {
    let selected: Vec<Selected> = inputs.iter().map(|p| select(p)).collect::<anyhow::Result<_>>()?;
    let mut warnings = Vec::new();
    let envs = environments(selected.iter().flat_map(|s| s.runs.iter().map(|&i| &s.store.runs[i].info)));
    if envs.len() > 1 {
        let list: Vec<String> = envs.iter().map(|((e, s), runs)| format!("{e} ({s}): {}", runs.join(", "))).collect();
        let msg = format!(
            "the inputs are on different environments or scales, whose rewards do not compare: {}",
            list.join("; ")
        );
        anyhow::ensure!(allow_mixed, "{msg} (pass --allow-mixed to see them anyway)");
        warnings.push(msg);
    }
    let mut rows = Vec::new();
    let mut totals = Vec::new();
    let mut baseline = None;
    let mut noise = None;
    for sel in &selected {
        baseline = baseline.or(sel.store.baseline);
        noise = noise.or(sel.store.noise.clone());
        for &i in &sel.runs {
            let run = &sel.store.runs[i];
            let kind = kind_name(run);
            if let Some(si) = run.series {
                let series = &sel.store.data.series[si];
                for p in &series.points {
                    rows.push(Row {
                        source: sel.source.clone(),
                        run: run.info.name.clone(),
                        kind: kind.into(),
                        at: format!("{} {}", series.kind.unit(), p.index),
                        ideas: p.n_ideas,
                        executions: p.executions,
                        mean: p.reward_mean,
                        best_of_n: p.reward_max,
                        best_so_far: p.best_so_far,
                        execution_rate: p.execution_rate,
                    });
                }
            } else if let Some(ei) = run.evaluation {
                let e = &sel.store.data.evaluations[ei];
                let d = &e.diagnostics;
                rows.push(Row {
                    source: sel.source.clone(),
                    run: run.info.name.clone(),
                    kind: kind.into(),
                    at: e.label.clone(),
                    ideas: d.n_ideas,
                    executions: d.n_ideas,
                    mean: d.mean_reward,
                    best_of_n: d.best_reward,
                    best_so_far: Some(d.best_reward),
                    execution_rate: d.execution_rate,
                });
            } else {
                continue;
            }
            let n = run.rewards.len();
            totals.push(Total {
                source: sel.source.clone(),
                run: run.info.name.clone(),
                kind: kind.into(),
                env: run.info.env.clone(),
                scale: run.info.scale.clone(),
                ideas: n,
                executions: run.executed.iter().filter(|&&e| e).count(),
                mean: run.rewards.iter().sum::<f64>() / n.max(1) as f64,
                best: run.rewards.iter().cloned().reduce(f64::max),
                best_at_budget: None,
                vs_first: None,
                beyond_noise: None,
            });
        }
    }
    let budget = totals.iter().map(|t| t.executions).filter(|&n| n > 0).min().unwrap_or(0);
    for t in &mut totals {
        let run = selected
            .iter()
            .flat_map(|s| s.runs.iter().map(move |&i| (s, &s.store.runs[i])))
            .find(|(s, r)| s.source == t.source && r.info.name == t.run)
            .map(|(_, r)| r)
            .expect("listed above");
        t.best_at_budget = run.best_within(budget);
    }
    compare_with_first(&selected, &mut totals, noise.as_ref().and_then(|f| f.std));
    if totals.iter().any(|t| t.executions != budget) {
        warnings.push(format!(
            "the runs used different numbers of executions; `best@{budget}` is each run's best within its first \
             {budget} executions (the fair comparison)"
        ));
    }
    Ok(Comparison { rows, totals, budget, baseline, noise, warnings })
}

/// Each run's mean reward against the first run's: the difference, its bootstrap interval, and whether it is
/// beyond chance and beyond the noise floor.
fn compare_with_first(selected: &[Selected], totals: &mut [Total], noise_std: Option<f64>) {
    let rewards: Vec<&[f64]> = selected
        .iter()
        .flat_map(|s| s.runs.iter().map(move |&i| &s.store.runs[i]))
        .filter(|r| r.series.is_some() || r.evaluation.is_some())
        .map(|r| r.rewards.as_slice())
        .collect();
    let Some(first) = rewards.first() else { return };
    for (i, (t, r)) in totals.iter_mut().zip(&rewards).enumerate().skip(1) {
        t.vs_first = bootstrap_mean_difference(r, first, i as u64);
        t.beyond_noise = match (t.vs_first, noise_std) {
            (Some(d), Some(noise)) => Some(d.beyond_noise(noise)),
            _ => None,
        };
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // An experiment folder (`ideator experiment`): its arms' comparison at equal budgets.
    if let [dir] = args.inputs.as_slice() {
        if crate::commands::experiment::comparison::is_experiment(dir) {
            let data = crate::commands::experiment::comparison::load_folder(dir)?;
            if args.json {
                println!("{}", serde_json::to_string(&data)?);
            } else {
                println!("{}", ideator_diagnostics::experiment::markdown(&data));
            }
            return Ok(());
        }
    }
    let c = compare(&args.inputs, args.allow_mixed)?;
    if args.json {
        println!("{}", serde_json::to_string(&c)?);
        return Ok(());
    }
    for w in &c.warnings {
        eprintln!("warning: {w}");
    }
    match &c.noise {
        Some(f) => println!("{}", crate::store_data::noise_note(f)),
        None => {
            if let Some(b) = c.baseline {
                println!("baseline reward {b:.4}");
            }
        }
    }
    let fmt = |x: Option<f64>| x.filter(|v| v.is_finite()).map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    let source_width = c.rows.iter().map(|r| r.source.len()).max().unwrap_or(6).max(6);
    let at_width = c.rows.iter().map(|r| r.at.len()).max().unwrap_or(2).max(2);
    println!(
        "{:<sw$}  {:<9}  {:<aw$}  {:>5}  {:>10}  {:>8}  {:>9}  {:>11}  {:>8}",
        "source",
        "kind",
        "at",
        "ideas",
        "executions",
        "mean",
        "best-of-N",
        "best so far",
        "executed",
        sw = source_width,
        aw = at_width
    );
    for r in &c.rows {
        println!(
            "{:<sw$}  {:<9}  {:<aw$}  {:>5}  {:>10}  {:>8}  {:>9}  {:>11}  {:>7.0}%",
            r.source,
            r.kind,
            r.at,
            r.ideas,
            r.executions,
            fmt(Some(r.mean)),
            fmt(Some(r.best_of_n)),
            fmt(r.best_so_far),
            100.0 * r.execution_rate,
            sw = source_width,
            aw = at_width
        );
    }
    println!();
    let best_col = format!("best@{}", c.budget);
    println!(
        "{:<sw$}  {:<9}  {:<22}  {:>6}  {:>10}  {:>8}  {:>8}  {:>10}  mean vs first run (95% bootstrap interval)",
        "source",
        "kind",
        "run",
        "ideas",
        "executions",
        "mean",
        "best",
        best_col,
        sw = source_width
    );
    for t in &c.totals {
        let vs = match (t.vs_first, t.beyond_noise) {
            (Some(d), beyond) => format!(
                "{:+.4} [{:+.4}, {:+.4}]{}",
                d.difference,
                d.lo,
                d.hi,
                match beyond {
                    Some(true) => "  beyond chance and the noise floor",
                    Some(false) => "  within chance or the noise floor",
                    None if d.excludes_zero() => "  beyond chance (no noise floor measured)",
                    None => "  within chance",
                }
            ),
            (None, _) => "-".into(),
        };
        println!(
            "{:<sw$}  {:<9}  {:<22}  {:>6}  {:>10}  {:>8}  {:>8}  {:>10}  {vs}",
            t.source,
            t.kind,
            t.run,
            t.ideas,
            t.executions,
            fmt(Some(t.mean)),
            fmt(t.best),
            fmt(t.best_at_budget),
            sw = source_width
        );
    }
    Ok(())
}
