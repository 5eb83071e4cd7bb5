//! An experiment's comparison (issue 17): several arms (best-of-N sampling, evolution, GRPO objectives) run at
//! several seeds under one execution budget, compared by curves of mean reward, best so far, max@k and diversity
//! against the budget spent, with intervals across seeds.
//!
//! Input: each (arm, seed) run's ideas in execution order ([`RunIdeas`]), as the run store holds them. Two budget
//! axes: *ideas* (every idea evaluated, an execution or a copy from the execution cache) and *executions* (only
//! the ones that really ran; cache hits are free). At each point x of a common grid every run contributes the
//! prefix of its ideas that fits x; the window is what the prefix added since the previous grid point:
//! - mean reward: mean of the window's rewards (what the arm's ideas score at that point of the budget);
//! - best so far: the prefix's best reward;
//! - max@k: the unbiased max@k of the window ([`crate::maxk::max_at_k`], k capped at the window's size);
//! - distinct: distinct recipes in the window / ideas in the window (1 = no two ideas alike; collapse drives it
//!   down, as in the seed paper's 119 of 128 ideas being two recipes).
//!
//! Across seeds each point is the mean with a 95% percentile-bootstrap interval ([`crate::interval`]; with few
//! seeds the interval is wide and rough: it resamples only the seeds there are).

use serde::{Deserialize, Serialize};

use crate::interval::{bootstrap_mean_difference, MeanDifference};
use crate::maxk::max_at_k;

/// Points on a curve's grid (the last one is the end of the budget).
pub(crate) const GRID_POINTS: usize = 16;

/// One evaluated idea of an arm's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentIdea {
    pub reward: f64,
    /// Really executed (false: its result was copied from an identical recipe at the same seed).
    pub executed: bool,
    /// What makes two ideas the same for diversity: the canonical recipe (or the text when it has none).
    pub recipe: String,
}

/// One (arm, seed) run's ideas in execution order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdeas {
    pub arm: String,
    pub seed: u64,
    pub ideas: Vec<ExperimentIdea>,
}

impl RunIdeas {
    pub fn executions(&self) -> usize {
        self.ideas.iter().filter(|i| i.executed).count()
    }
}

/// The x axis of a curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BudgetAxis {
    /// Ideas evaluated (executions plus cache hits).
    Ideas,
    /// Executions that really ran.
    Executions,
}

/// A point of a curve across seeds: the mean and its 95% bootstrap interval, over `seeds` seeds with data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub x: f64,
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    pub seeds: usize,
}

/// One arm's four curves on one axis.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmCurves {
    pub mean_reward: Vec<CurvePoint>,
    pub best_so_far: Vec<CurvePoint>,
    pub max_at_k: Vec<CurvePoint>,
    pub distinct: Vec<CurvePoint>,
}

/// A value across seeds: mean and 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AcrossSeeds {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// One arm's totals at the end of the budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmSummary {
    pub arm: String,
    pub kind: String,
    pub seeds: usize,
    /// Ideas evaluated per seed (mean).
    pub ideas: f64,
    /// Executions that really ran per seed (mean).
    pub executions: f64,
    /// Mean reward over all the arm's ideas.
    pub mean_reward: AcrossSeeds,
    /// Best reward found (best@budget).
    pub best: AcrossSeeds,
    /// max@k over the last quarter of the ideas (what the arm's final policy gives at best of k).
    pub final_max_at_k: AcrossSeeds,
    /// Distinct recipes / ideas over the last quarter.
    pub final_distinct: AcrossSeeds,
    /// Best minus the first arm's best, paired by seed (common random numbers), with its interval; none for the
    /// first arm.
    pub best_vs_first: Option<MeanDifference>,
    /// Whether that difference excludes 0 and exceeds the noise floor (none without a measured noise floor).
    pub beyond_noise: Option<bool>,
}

/// Everything the comparison shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentData {
    /// k of the max@k curves.
    pub k: usize,
    /// The baseline recipe's mean reward and seed-to-seed std (the noise floor), when measured.
    pub baseline: Option<f64>,
    pub noise_std: Option<f64>,
    /// Arms in config order: (name, curves by ideas, curves by executions).
    pub arms: Vec<ArmSeries>,
    pub summary: Vec<ArmSummary>,
    /// The command that made it.
    pub command: String,
}

/// One arm's curves on both axes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmSeries {
    pub arm: String,
    pub by_ideas: ArmCurves,
    pub by_executions: ArmCurves,
}

/// Mean of `values` with a 95% percentile-bootstrap interval (the interval of `mean(values) - 0`).
pub(crate) fn across_seeds(values: &[f64], seed: u64) -> Option<AcrossSeeds> {
    let d = bootstrap_mean_difference(values, &[0.0], seed)?;
    Some(AcrossSeeds { mean: d.difference, lo: d.lo, hi: d.hi })
}

/// How many of a run's ideas fit `x` on `axis`: x ideas, or every idea up to the one that would be execution
/// x + 1 (cache hits after the x-th execution are free, so they fit).
pub(crate) fn prefix_len(run: &RunIdeas, axis: BudgetAxis, x: usize) -> usize {
    match axis {
        BudgetAxis::Ideas => x.min(run.ideas.len()),
        BudgetAxis::Executions => {
            let mut spent = 0;
            for (i, idea) in run.ideas.iter().enumerate() {
                if idea.executed {
                    if spent == x {
                        return i;
                    }
                    spent += 1;
                }
            }
            run.ideas.len()
        }
    }
}

/// Grid points 1..=`end` in `GRID_POINTS` (or fewer) steps, always ending at `end`.
pub fn grid(end: usize) -> Vec<usize> {
    if end == 0 {
        return Vec::new();
    }
    let step = end.div_ceil(GRID_POINTS).max(1);
    let mut xs: Vec<usize> = (1..).map(|j| j * step).take_while(|&x| x < end).collect();
    xs.push(end);
    xs
}

/// The share of distinct recipes among `ideas` (None when empty).
pub(crate) fn distinct_share(ideas: &[ExperimentIdea]) -> Option<f64> {
    if ideas.is_empty() {
        return None;
    }
    let set: std::collections::BTreeSet<&str> = ideas.iter().map(|i| i.recipe.as_str()).collect();
    Some(set.len() as f64 / ideas.len() as f64)
}

fn rewards(ideas: &[ExperimentIdea]) -> Vec<f64> {
    ideas.iter().map(|i| i.reward).collect()
}

fn window_max_at_k(ideas: &[ExperimentIdea], k: usize) -> Option<f64> {
    (!ideas.is_empty()).then(|| max_at_k(&rewards(ideas), k.min(ideas.len())).ok()).flatten()
}

/// The four metrics of one run at one grid point: (mean, best so far, max@k, distinct); None where undefined.
fn point_metrics(run: &RunIdeas, from: usize, to: usize, k: usize) -> [Option<f64>; 4] {
    let window = &run.ideas[from..to];
    let best =
        run.ideas[..to].iter().map(|i| i.reward).fold(None, |b: Option<f64>, r| Some(b.map_or(r, |b| b.max(r))));
    let mean = (!window.is_empty()).then(|| window.iter().map(|i| i.reward).sum::<f64>() / window.len() as f64);
    [mean, best, window_max_at_k(window, k), distinct_share(window)]
}

/// One arm's curves on `axis` over `xs`, from its runs (one per seed).
pub(crate) fn arm_curves(runs: &[&RunIdeas], axis: BudgetAxis, xs: &[usize], k: usize) -> ArmCurves {
    let mut columns: [Vec<CurvePoint>; 4] = Default::default();
    let mut prev = vec![0usize; runs.len()];
    for (j, &x) in xs.iter().enumerate() {
        let mut values: [Vec<f64>; 4] = Default::default();
        for (r, run) in runs.iter().enumerate() {
            let to = prefix_len(run, axis, x);
            for (m, v) in point_metrics(run, prev[r], to, k).into_iter().enumerate() {
                values[m].extend(v);
            }
            prev[r] = to;
        }
        for (m, vals) in values.iter().enumerate() {
            if let Some(s) = across_seeds(vals, j as u64) {
                columns[m].push(CurvePoint { x: x as f64, mean: s.mean, lo: s.lo, hi: s.hi, seeds: vals.len() });
            }
        }
    }
    let [mean_reward, best_so_far, max_at_k, distinct] = columns;
    ArmCurves { mean_reward, best_so_far, max_at_k, distinct }
}

/// The comparison of `arms` (name, kind, in config order) from every run's ideas; the first arm is the reference
/// of the paired differences. `noise` = (baseline mean, noise std) when measured.
pub fn compare(
    arms: &[(String, String)],
    runs: &[RunIdeas],
    k: usize,
    noise: (Option<f64>, Option<f64>),
    command: String,
) -> ExperimentData {
    let end_ideas = runs.iter().map(|r| r.ideas.len()).max().unwrap_or(0);
    let end_exec = runs.iter().map(RunIdeas::executions).max().unwrap_or(0);
    let of = |arm: &str| -> Vec<&RunIdeas> { runs.iter().filter(|r| r.arm == arm).collect() };
    let series = arms
        .iter()
        .map(|(arm, _)| ArmSeries {
            arm: arm.clone(),
            by_ideas: arm_curves(&of(arm), BudgetAxis::Ideas, &grid(end_ideas), k),
            by_executions: arm_curves(&of(arm), BudgetAxis::Executions, &grid(end_exec), k),
        })
        .collect();
    let first = arms.first().map(|(a, _)| of(a)).unwrap_or_default();
    let summary = arms
        .iter()
        .enumerate()
        .map(|(i, (arm, kind))| summarize(arm, kind, &of(arm), (i > 0).then_some(first.as_slice()), k, noise.1))
        .collect();
    ExperimentData { k, baseline: noise.0, noise_std: noise.1, arms: series, summary, command }
}

fn best_of(run: &RunIdeas) -> Option<f64> {
    run.ideas.iter().map(|i| i.reward).reduce(f64::max)
}

/// Per-seed best differences against the first arm's run at the same seed (seeds missing on either side are left
/// out).
fn paired_best_differences(runs: &[&RunIdeas], first: &[&RunIdeas]) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| {
            let f = first.iter().find(|f| f.seed == r.seed)?;
            Some(best_of(r)? - best_of(f)?)
        })
        .collect()
}

fn summarize(
    arm: &str,
    kind: &str,
    runs: &[&RunIdeas],
    first: Option<&[&RunIdeas]>,
    k: usize,
    noise: Option<f64>,
) -> ArmSummary {
    let n = runs.len().max(1) as f64;
    let last_quarter = |r: &RunIdeas| r.ideas[r.ideas.len() - r.ideas.len().div_ceil(4)..].to_vec();
    let stat = |f: &dyn Fn(&RunIdeas) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
        across_seeds(&v, 7).unwrap_or(AcrossSeeds { mean: f64::NAN, lo: f64::NAN, hi: f64::NAN })
    };
    let best_vs_first = first.and_then(|f| bootstrap_mean_difference(&paired_best_differences(runs, f), &[0.0], 11));
    ArmSummary {
        arm: arm.to_string(),
        kind: kind.to_string(),
        seeds: runs.len(),
        ideas: runs.iter().map(|r| r.ideas.len() as f64).sum::<f64>() / n,
        executions: runs.iter().map(|r| r.executions() as f64).sum::<f64>() / n,
        mean_reward: stat(&|r| {
            (!r.ideas.is_empty()).then(|| rewards(&r.ideas).iter().sum::<f64>() / r.ideas.len() as f64)
        }),
        best: stat(&best_of),
        final_max_at_k: stat(&|r| window_max_at_k(&last_quarter(r), k)),
        final_distinct: stat(&|r| distinct_share(&last_quarter(r))),
        beyond_noise: best_vs_first.zip(noise).map(|(d, s)| d.beyond_noise(s)),
        best_vs_first,
    }
}

/// A number for the table: 3 decimals, "–" when undefined.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "–".into()
    }
}

fn with_interval(s: &AcrossSeeds) -> String {
    format!("{} [{}, {}]", num(s.mean), num(s.lo), num(s.hi))
}

/// The comparison as a markdown table, with the noise floor and the command that made it.
pub fn markdown(data: &ExperimentData) -> String {
    let k = data.k;
    let mut out = format!(
        "| arm | kind | seeds | ideas | executions | mean reward | best | max@{k} (last quarter) | distinct (last \
         quarter) | best − {} (paired) | beyond noise |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        data.summary.first().map_or("first arm", |s| s.arm.as_str())
    );
    for s in &data.summary {
        let diff =
            s.best_vs_first.map_or("–".into(), |d| format!("{} [{}, {}]", num(d.difference), num(d.lo), num(d.hi)));
        let beyond = s.beyond_noise.map_or("–".into(), |b| if b { "yes".into() } else { "no".to_string() });
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {diff} | {beyond} |\n",
            s.arm,
            s.kind,
            s.seeds,
            s.ideas,
            s.executions,
            with_interval(&s.mean_reward),
            with_interval(&s.best),
            with_interval(&s.final_max_at_k),
            with_interval(&s.final_distinct),
        ));
    }
    let floor = match (data.baseline, data.noise_std) {
        (Some(b), Some(s)) => format!("baseline recipe {} with noise floor (seed-to-seed std) {}", num(b), num(s)),
        (Some(b), None) => format!("baseline recipe {} (noise floor not measured)", num(b)),
        _ => "noise floor not measured".into(),
    };
    out.push_str(&format!(
        "\nMeans across seeds with 95% percentile-bootstrap intervals over the seeds; {floor}.\n\nMade by: `{}`\n",
        data.command
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(arm: &str, seed: u64, ideas: &[(f64, bool, &str)]) -> RunIdeas {
        RunIdeas {
            arm: arm.into(),
            seed,
            ideas: ideas
                .iter()
                .map(|&(reward, executed, recipe)| ExperimentIdea { reward, executed, recipe: recipe.into() })
                .collect(),
        }
    }

    #[test]
    fn cache_hits_are_free_on_the_executions_axis() {
        let r = run("a", 1, &[(0.1, true, "x"), (0.1, false, "x"), (0.3, true, "y"), (0.2, false, "x")]);
        assert_eq!(r.executions(), 2);
        assert_eq!(prefix_len(&r, BudgetAxis::Ideas, 3), 3);
        assert_eq!(prefix_len(&r, BudgetAxis::Executions, 0), 0);
        assert_eq!(prefix_len(&r, BudgetAxis::Executions, 1), 2);
        assert_eq!(prefix_len(&r, BudgetAxis::Executions, 2), 4);
        assert_eq!(prefix_len(&r, BudgetAxis::Ideas, 9), 4);
    }

    #[test]
    fn the_grid_ends_at_the_budget() {
        assert_eq!(grid(0), Vec::<usize>::new());
        assert_eq!(grid(5), vec![1, 2, 3, 4, 5]);
        let g = grid(40);
        assert_eq!((g[0], *g.last().unwrap()), (3, 40));
        assert!(g.len() <= GRID_POINTS + 1 && g.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn curves_and_summary_follow_the_ideas() {
        let runs = vec![
            run("frozen", 1, &[(0.2, true, "a"), (0.4, true, "b"), (0.2, true, "a"), (0.3, true, "c")]),
            run("frozen", 2, &[(0.1, true, "a"), (0.1, true, "a"), (0.5, true, "d"), (0.2, true, "a")]),
            run("rl", 1, &[(0.2, true, "a"), (0.9, true, "e"), (0.9, false, "e"), (0.9, false, "e")]),
            run("rl", 2, &[(0.3, true, "b"), (0.6, true, "f"), (0.6, false, "f"), (0.6, false, "f")]),
        ];
        let arms = vec![("frozen".to_string(), "best_of_n".to_string()), ("rl".into(), "grpo".into())];
        let data = compare(&arms, &runs, 2, (Some(0.25), Some(0.01)), "ideator experiment".into());
        let rl = &data.arms[1];
        // Best so far after 2 ideas: seed 1 0.9, seed 2 0.6.
        assert_eq!(rl.by_ideas.best_so_far[1].x, 2.0);
        assert!((rl.by_ideas.best_so_far[1].mean - 0.75).abs() < 1e-12);
        // Every rl idea after the second execution is a cache hit: after 2 executions its windows are empty (no
        // mean), while the common grid goes on to the frozen arm's 4 executions with rl's best held.
        assert_eq!(rl.by_executions.mean_reward.last().unwrap().x, 2.0);
        let last = rl.by_executions.best_so_far.last().unwrap();
        assert_eq!(last.x, 4.0);
        assert!((last.mean - 0.75).abs() < 1e-12);
        let frozen = &data.summary[0];
        assert_eq!((frozen.ideas, frozen.executions), (4.0, 4.0));
        assert!((frozen.best.mean - 0.45).abs() < 1e-12 && frozen.best_vs_first.is_none());
        let s = &data.summary[1];
        assert_eq!(s.executions, 2.0);
        let d = s.best_vs_first.unwrap();
        assert!((d.difference - 0.3).abs() < 1e-12, "{d:?}"); // (0.9 - 0.4 + 0.6 - 0.5) / 2
        assert_eq!(s.beyond_noise, Some(true));
        // Last quarter of rl: one idea each, "e" and "f": distinct share 1.
        assert!((s.final_distinct.mean - 1.0).abs() < 1e-12);
        let table = markdown(&data);
        assert!(table.contains("| rl | grpo | 2 | 4.0 | 2.0 |") && table.contains("Made by: `ideator experiment`"));
    }
}
