//! The report's charts, built from [`ReportData`]: which numbers go on which chart, with which colours and labels.
//! Every chart is an SVG string with a stable id (`data-chart`), grouped into sections for the page.

use std::collections::BTreeMap;

use ideator_rollout::pipeline::record::StepMetric;
use serde::Serialize;

use super::data::{CodeIdeaSeries, ReportData, RunSeries, SeriesKind, SeriesPoint};
use super::svg::{
    self, line_chart, stacked_bars, Axis, Band, Column, Line, LineChart, Marker, StackedBars, Stroke, PALETTE, SMALL,
    WIDE,
};
use crate::categories::CategoryStats;
use crate::code_ideas::CodeIdeaStats;
use crate::experiment::{ArmSeries, CurvePoint, ExperimentData};
use crate::summary::BatchDiagnostics;

/// One chart as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    pub id: String,
    pub title: String,
    /// One or two sentences on how to read it.
    pub caption: String,
    pub svg: String,
    /// Small charts sit two to a row.
    pub small: bool,
}

/// A titled group of tables and charts; `note` explains an empty section.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub charts: Vec<Chart>,
    pub note: Option<String>,
    /// Shown above the charts.
    pub tables: Vec<Table>,
}

/// A table of formatted cells; `numeric[i]` right-aligns column i.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub id: String,
    pub caption: String,
    pub header: Vec<String>,
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
}

/// Most categories drawn in a stacked chart; the rest are summed into "other categories".
const MAX_CATEGORIES: usize = 8;
/// Most max@k curves on one chart.
const MAX_CURVES: usize = 8;

fn series_color(kind: SeriesKind) -> &'static str {
    match kind {
        SeriesKind::Rl => PALETTE[0],
        SeriesKind::Evolution => PALETTE[1],
    }
}

/// The x axis shared by all per-step charts: steps (or epochs) for one learner; ideas sent to the executor when RL and
/// evolution are shown together, since equal budgets are what make them comparable.
struct XAxis {
    by_executions: bool,
    label: String,
}

impl XAxis {
    fn new(data: &ReportData) -> Self {
        let kinds: Vec<SeriesKind> = data.series.iter().map(|s| s.kind).collect();
        let by_executions = kinds.len() > 1;
        let label = if by_executions {
            "ideas sent to the executor (cumulative)".to_string()
        } else {
            match kinds.first() {
                Some(SeriesKind::Evolution) => "evolution epoch".to_string(),
                _ => "RL step".to_string(),
            }
        };
        XAxis { by_executions, label }
    }
    fn x(&self, p: &SeriesPoint) -> f64 {
        if self.by_executions {
            p.executions as f64
        } else {
            p.index as f64
        }
    }
    fn axis(&self) -> Axis {
        Axis::integer(self.label.clone())
    }
}

/// Runs of consecutive points with alarms, as (first, last) positions in `points`.
fn alarm_runs(points: &[&SeriesPoint]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, _) in points.iter().enumerate().filter(|(_, p)| !p.alarms.is_empty()) {
        match runs.last_mut() {
            Some(run) if run.1 + 1 == i => run.1 = i,
            _ => runs.push((i, i)),
        }
    }
    runs
}

/// What a run of alarmed points says: every alarm of a single point, or the span and the last point's alarms.
fn alarm_tooltip(kind: SeriesKind, run: &[&SeriesPoint]) -> String {
    let last = run.last().expect("a run has a point");
    let messages: Vec<&str> = last.alarms.iter().map(|a| a.message.as_str()).collect();
    if run.len() == 1 {
        return format!("{} {} {}: {}", kind.name(), kind.unit(), last.index, messages.join("; "));
    }
    let count: usize = run.iter().map(|p| p.alarms.len()).sum();
    format!(
        "{} {}s {}–{}: {count} alarms; at {} {}: {}",
        kind.name(),
        kind.unit(),
        run[0].index,
        last.index,
        kind.unit(),
        last.index,
        messages.join("; ")
    )
}

/// Markers over `points` (a series' points, or those of them a chart shows), as column positions.
fn alarm_columns(kind: SeriesKind, points: &[&SeriesPoint]) -> Vec<(usize, usize, String)> {
    alarm_runs(points).into_iter().map(|(a, b)| (a, b, alarm_tooltip(kind, &points[a..=b]))).collect()
}

/// Alarm markers of every series at their x positions, one per run of consecutive alarmed points.
fn alarm_markers(data: &ReportData, xa: &XAxis) -> Vec<Marker> {
    let mut markers = Vec::new();
    for s in &data.series {
        let points: Vec<&SeriesPoint> = s.points.iter().collect();
        for (a, b, tooltip) in alarm_columns(s.kind, &points) {
            markers.push(Marker { x: xa.x(points[a]), x_end: xa.x(points[b]), tooltip });
        }
    }
    markers
}

/// Builds every section of the report.
pub fn sections(data: &ReportData) -> Vec<Section> {
    let xa = XAxis::new(data);
    let mut sections = Vec::new();
    if let Some(e) = &data.experiment {
        sections.push(experiment_section(e));
        // An experiment folder has no steps of its own: the per-run sections would only say so.
        if data.series.is_empty() && data.evaluations.is_empty() {
            return sections;
        }
    }
    sections.extend([
        rewards_section(data, &xa),
        maxk_section(data),
        diversity_section(data, &xa),
        categories_section(data),
        execution_section(data),
    ]);
    // Only runs whose ideas are code changes have a code-idea section.
    if !data.code_ideas.is_empty() {
        sections.push(code_ideas_section(data));
    }
    sections.push(training_section(data));
    sections.push(pipeline_section(data));
    sections
}

/// One chart of an experiment: every arm's curve (mean across seeds, its interval shaded) on one axis, with the
/// baseline ± the noise floor shaded in grey when `floor` is set.
fn experiment_chart(
    e: &ExperimentData,
    id: &str,
    title: &str,
    caption: &str,
    curve: fn(&ArmSeries) -> &[CurvePoint],
    (x_label, y_label): (&str, &str),
    floor: bool,
) -> Chart {
    let mut lines = Vec::new();
    let mut bands = Vec::new();
    let mut xs: Vec<f64> = Vec::new();
    for (i, arm) in e.arms.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points = curve(arm);
        xs.extend(points.iter().map(|p| p.x));
        bands.push(Band {
            name: format!("{} 95% interval across seeds", arm.arm),
            color: color.into(),
            points: points.iter().map(|p| (p.x, p.lo, p.hi)).collect(),
        });
        lines.push(Line::new(arm.arm.clone(), color, points.iter().map(|p| (p.x, p.mean)).collect()));
    }
    if let (true, Some(b)) = (floor, e.baseline) {
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let s = e.noise_std.unwrap_or(0.0);
        if lo.is_finite() && hi.is_finite() {
            lines.push(
                Line::new("baseline recipe", "#888888", vec![(lo, b), (hi, b)]).stroke(Stroke::Dashed).width(1.2),
            );
            bands.push(Band {
                name: "noise floor (± seed-to-seed std)".into(),
                color: "#888888".into(),
                points: vec![(lo, b - s, b + s), (hi, b - s, b + s)],
            });
        }
    }
    bands.retain(|b| !b.points.is_empty());
    let svg = line_chart(&LineChart {
        id: id.into(),
        size: WIDE,
        x: Axis::integer(x_label),
        y: Axis::linear(y_label),
        lines,
        bands,
        markers: Vec::new(),
    });
    Chart { id: id.into(), title: title.into(), caption: caption.into(), svg, small: false }
}

/// An experiment's arms on one chart per metric, against executions spent (and the best so far also against
/// ideas evaluated, since the execution cache makes them differ).
fn experiment_section(e: &ExperimentData) -> Section {
    let exec = "executions spent (per seed)";
    let k = e.k;
    let charts = vec![
        experiment_chart(e, "experiment-best", "Best so far", "The best reward found within the budget spent, mean across seeds with its 95% interval shaded; grey: the baseline recipe ± the noise floor.", |a| a.by_executions.best_so_far.as_slice(), (exec, "best reward so far"), true),
        experiment_chart(e, "experiment-best-ideas", "Best so far, against ideas evaluated", "As above, against ideas evaluated (cache hits included): an arm that repeats itself evaluates more ideas than it executes.", |a| a.by_ideas.best_so_far.as_slice(), ("ideas evaluated (per seed)", "best reward so far"), true),
        experiment_chart(e, "experiment-mean", "Mean reward", "The mean reward of the ideas evaluated since the previous point.", |a| a.by_executions.mean_reward.as_slice(), (exec, "mean reward"), true),
        experiment_chart(e, "experiment-maxk", &format!("max@{k}"), &format!("The expected best of {k} ideas drawn from those evaluated since the previous point (fewer when fewer were evaluated)."), |a| a.by_executions.max_at_k.as_slice(), (exec, &format!("max@{k}")), true),
        experiment_chart(e, "experiment-distinct", "Diversity over time", "Distinct recipes / ideas among the ideas evaluated since the previous point (1: no two alike; collapse drives it down).", |a| a.by_executions.distinct.as_slice(), (exec, "distinct recipe share"), false),
    ];
    section("experiment", "Experiment: arms at equal execution budgets", charts, "")
}

fn section(id: &str, title: &str, charts: Vec<Chart>, empty_note: &str) -> Section {
    let note = charts.is_empty().then(|| empty_note.to_string());
    Section { id: id.into(), title: title.into(), charts, note, tables: Vec::new() }
}

fn rewards_section(data: &ReportData, xa: &XAxis) -> Section {
    if data.series.is_empty() {
        return section("rewards", "Reward", vec![], "No steps or epochs were logged.");
    }
    let mut lines = Vec::new();
    let mut bands = Vec::new();
    for s in &data.series {
        let color = series_color(s.kind);
        let name = &s.label;
        bands.push(Band {
            name: format!("{name} mean ± std"),
            color: color.into(),
            points: s
                .points
                .iter()
                .filter_map(|p| p.reward_std.map(|sd| (xa.x(p), p.reward_mean - sd, p.reward_mean + sd)))
                .collect(),
        });
        lines.push(Line::new(
            format!("{name} mean"),
            color,
            s.points.iter().map(|p| (xa.x(p), p.reward_mean)).collect(),
        ));
        lines.push(
            Line::new(format!("{name} batch max"), color, s.points.iter().map(|p| (xa.x(p), p.reward_max)).collect())
                .stroke(Stroke::Dotted)
                .width(1.8),
        );
        lines.push(
            Line::new(
                format!("{name} best so far"),
                darker(color),
                s.points.iter().map(|p| (xa.x(p), p.best_so_far.unwrap_or(f64::NAN))).collect(),
            )
            .stroke(Stroke::Dashed)
            .width(1.6)
            .step(),
        );
    }
    bands.retain(|b| !b.points.is_empty());
    let svg = line_chart(&LineChart {
        id: "reward".into(),
        size: WIDE,
        x: xa.axis(),
        y: Axis::linear("reward"),
        lines,
        bands,
        markers: alarm_markers(data, xa),
    });
    let chart = Chart {
        id: "reward".into(),
        title: "Mean and best reward".into(),
        caption: "Solid: the batch's mean reward with ± one standard deviation shaded; dotted: the batch's best \
                  reward; dashed: the best executed idea so far. Red flags mark collapse alarms (hover for details)."
            .into(),
        svg,
        small: false,
    };
    section("rewards", "Reward", vec![chart], "")
}

/// Picks at most `n` of `len` positions, evenly spread, always with the first and the last.
fn spread(len: usize, n: usize) -> Vec<usize> {
    if len <= n {
        return (0..len).collect();
    }
    let mut picks: Vec<usize> = (0..n).map(|i| (i * (len - 1) + (n - 1) / 2) / (n - 1)).collect();
    picks.dedup();
    picks
}

/// A colour from light (t = 0) to the series' dark shade (t = 1), for curves ordered in time.
fn ramp(kind: SeriesKind, t: f64) -> String {
    let (light, dark): ([f64; 3], [f64; 3]) = match kind {
        SeriesKind::Rl => ([158.0, 202.0, 225.0], [8.0, 48.0, 107.0]),
        SeriesKind::Evolution => ([253.0, 190.0, 133.0], [127.0, 39.0, 4.0]),
    };
    let c: Vec<u8> = (0..3).map(|i| (light[i] + t * (dark[i] - light[i])).round() as u8).collect();
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn darker(hex: &str) -> String {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap_or(0);
    let scale = |shift: u32| (((v >> shift) & 0xff) as f64 * 0.65).round() as u8;
    format!("#{:02x}{:02x}{:02x}", scale(16), scale(8), scale(0))
}

fn maxk_points(d: &BatchDiagnostics) -> Vec<(f64, f64)> {
    d.max_at_k.iter().map(|m| (m.k as f64, m.value)).collect()
}

fn maxk_section(data: &ReportData) -> Section {
    let mut charts = Vec::new();
    for s in &data.series {
        let diagnosed: Vec<(&SeriesPoint, &BatchDiagnostics)> = s.diagnosed().collect();
        if diagnosed.is_empty() {
            continue;
        }
        // Curves at the first and latest point, at points sampled by a checkpoint's policy, and spread between.
        let checkpoint_steps: Vec<u64> = data.checkpoints.iter().map(|c| c.step).collect();
        let mut picks: Vec<usize> = spread(diagnosed.len(), MAX_CURVES);
        if s.kind == SeriesKind::Rl {
            for (i, (p, _)) in diagnosed.iter().enumerate() {
                if checkpoint_steps.contains(&p.index) && !picks.contains(&i) && picks.len() < MAX_CURVES + 2 {
                    picks.push(i);
                }
            }
        }
        picks.sort_unstable();
        let last = *picks.last().expect("non-empty");
        let lines: Vec<Line> = picks
            .iter()
            .map(|&i| {
                let (p, d) = diagnosed[i];
                let t = if picks.len() > 1 {
                    picks.iter().position(|&j| j == i).unwrap() as f64 / (picks.len() - 1) as f64
                } else {
                    1.0
                };
                let mut name = format!("{} {}", s.kind.unit(), p.index);
                if s.kind == SeriesKind::Rl && checkpoint_steps.contains(&p.index) {
                    name.push_str(" (checkpoint)");
                }
                if i == last {
                    name.push_str(", latest");
                }
                Line::new(name, ramp(s.kind, 0.25 + 0.75 * t), maxk_points(d)).width(if i == last {
                    3.0
                } else {
                    1.8
                })
            })
            .collect();
        charts.push(Chart {
            id: format!("maxk-{}", kind_id(s.kind)),
            title: format!("max@k per {} ({})", s.kind.unit(), s.label),
            caption: format!(
                "Expected best reward among k ideas drawn from one {}'s batch (unbiased estimator). max@1 is the mean; \
                 the right end is the batch's best. Darker = later; the thick curve is the latest {}.",
                s.kind.unit(),
                s.kind.unit()
            ),
            svg: line_chart(&LineChart {
                id: format!("maxk-{}", kind_id(s.kind)),
                size: WIDE,
                x: Axis::log2("k (ideas drawn)"),
                y: Axis::linear("max@k"),
                lines,
                bands: vec![],
                markers: vec![],
            }),
            small: false,
        });
        charts.push(maxk_over_time(s, &diagnosed));
    }
    if !data.evaluations.is_empty() {
        let n = data.evaluations.len();
        let lines = data
            .evaluations
            .iter()
            .enumerate()
            .map(|(i, e)| Line::new(e.label.clone(), PALETTE[i % PALETTE.len()], maxk_points(&e.diagnostics)))
            .collect();
        charts.push(Chart {
            id: "maxk-evaluations".into(),
            title: "max@k per evaluation".into(),
            caption: format!("{n} evaluation(s) of fixed models or checkpoints, each sampled n times."),
            svg: line_chart(&LineChart {
                id: "maxk-evaluations".into(),
                size: WIDE,
                x: Axis::log2("k (ideas drawn)"),
                y: Axis::linear("max@k"),
                lines,
                bands: vec![],
                markers: vec![],
            }),
            small: false,
        });
    }
    section("maxk", "Average versus best-of-N (max@k)", charts, "No batch diagnostics were logged.")
}

/// max@k for a few k over time: whether training moves the best of N, or only the mean (the paper's finding).
fn maxk_over_time(s: &RunSeries, diagnosed: &[(&SeriesPoint, &BatchDiagnostics)]) -> Chart {
    let mut ks: Vec<usize> = diagnosed.iter().flat_map(|(_, d)| d.max_at_k.iter().map(|m| m.k)).collect();
    ks.sort_unstable();
    ks.dedup();
    let picked: Vec<usize> = spread(ks.len(), 5).into_iter().map(|i| ks[i]).collect();
    let lines = picked
        .iter()
        .enumerate()
        .map(|(j, &k)| {
            let t = if picked.len() > 1 { j as f64 / (picked.len() - 1) as f64 } else { 1.0 };
            let points = diagnosed
                .iter()
                .map(|(p, d)| (p.index as f64, d.max_at_k.iter().find(|m| m.k == k).map_or(f64::NAN, |m| m.value)))
                .collect();
            Line::new(format!("max@{k}"), ramp(s.kind, 0.25 + 0.75 * t), points)
        })
        .collect();
    let id = format!("maxk-time-{}", kind_id(s.kind));
    Chart {
        id: id.clone(),
        title: format!("max@k over {}s ({})", s.kind.unit(), s.label),
        caption: "If only max@1 (the mean) rises while the large-k curves stay flat, the learner is getting more \
                  reliable, not finding better ideas."
            .into(),
        svg: line_chart(&LineChart {
            id,
            size: WIDE,
            x: Axis::integer(format!("{} {}", s.label, s.kind.unit())),
            y: Axis::linear("max@k"),
            lines,
            bands: vec![],
            markers: vec![],
        }),
        small: false,
    }
}

fn kind_id(kind: SeriesKind) -> &'static str {
    match kind {
        SeriesKind::Rl => "rl",
        SeriesKind::Evolution => "evolution",
    }
}

/// A diagnostics measure of a batch, if the batch has it.
type Metric = fn(&BatchDiagnostics) -> Option<f64>;

/// What a small chart shows: its id, title, how to read it, its y axis, and the named values it plots (a
/// diagnostics [`Metric`], or the key of a logged scalar).
struct Spec<V> {
    id: String,
    title: &'static str,
    caption: &'static str,
    y: Axis,
    values: Vec<(&'static str, V)>,
}

fn spec<V>(
    id: impl Into<String>,
    title: &'static str,
    caption: &'static str,
    y: Axis,
    values: Vec<(&'static str, V)>,
) -> Spec<V> {
    Spec { id: id.into(), title, caption, y, values }
}

/// A small chart with one line per series (and per variant, e.g. distinct-1/2/3) of a diagnostics value.
fn diversity_chart(data: &ReportData, xa: &XAxis, spec: &Spec<Metric>) -> Option<Chart> {
    let variants = &spec.values;
    let mut lines = Vec::new();
    for s in &data.series {
        for (j, (variant, value)) in variants.iter().enumerate() {
            let points: Vec<(f64, f64)> =
                s.diagnosed().map(|(p, d)| (xa.x(p), value(d).unwrap_or(f64::NAN))).collect();
            if points.iter().all(|p| !p.1.is_finite()) {
                continue;
            }
            let name = match (data.series.len() > 1, variants.len() > 1) {
                (true, true) => format!("{} {variant}", s.label),
                (true, false) => s.label.clone(),
                (false, _) => variant.to_string(),
            };
            let color = if variants.len() > 1 {
                ramp(s.kind, 0.35 + 0.65 * j as f64 / (variants.len() - 1) as f64)
            } else {
                series_color(s.kind).to_string()
            };
            lines.push(Line::new(name, color, points));
        }
    }
    if lines.is_empty() {
        return None;
    }
    let svg = line_chart(&LineChart {
        id: spec.id.clone(),
        size: SMALL,
        x: xa.axis(),
        y: spec.y.clone(),
        lines,
        bands: vec![],
        markers: alarm_markers(data, xa),
    });
    Some(Chart { id: spec.id.clone(), title: spec.title.into(), caption: spec.caption.into(), svg, small: true })
}

fn diversity_section(data: &ReportData, xa: &XAxis) -> Section {
    // Measures bounded by 0 and 1 keep that range, so that a small wobble does not look like a collapse.
    let unit = |label: &str| Axis::linear(label).with_range(0.0, 1.04);
    let specs: [Spec<Metric>; 7] = [
        spec(
            "div-vendi",
            "Vendi score (embeddings)",
            "Effective number of distinct ideas in a batch (1 to n); higher = more diverse.",
            Axis::linear("Vendi score"),
            vec![("Vendi", |d| d.embedding.as_ref().map(|e| e.vendi_score))],
        ),
        spec(
            "div-cosine",
            "Mean pairwise cosine (embeddings)",
            "Average similarity of two ideas' embeddings; higher = more alike.",
            Axis::linear("cosine"),
            vec![("mean cosine", |d| d.embedding.as_ref().and_then(|e| e.mean_pairwise_cosine))],
        ),
        spec(
            "div-distinct",
            "Distinct n-grams",
            "Unique / total n-grams over the batch; higher = more diverse.",
            unit("distinct-n"),
            vec![
                // Short names: the legend beside a small chart has room for about 15 characters.
                ("n = 1", |d| d.text.distinct_1),
                ("n = 2", |d| d.text.distinct_2),
                ("n = 3", |d| d.text.distinct_3),
            ],
        ),
        spec(
            "div-self-bleu",
            "Self-BLEU-4",
            "How much each idea repeats the others; higher = less diverse.",
            unit("self-BLEU"),
            vec![("self-BLEU", |d| d.text.self_bleu)],
        ),
        spec(
            "div-gzip",
            "Compression ratio (gzip)",
            "Raw / compressed bytes of the batch; higher = more repetitive.",
            Axis::linear("ratio"),
            vec![("gzip ratio", |d| Some(d.text.compression_ratio))],
        ),
        spec(
            "div-category-entropy",
            "Category entropy (normalised)",
            "Entropy of the knob-set categories / ln(n); 0 = one category, 1 = all different.",
            unit("entropy / ln n"),
            vec![("category entropy", |d| d.categories.normalized_entropy)],
        ),
        spec(
            "div-length",
            "Idea length",
            "Mean idea length in word tokens.",
            Axis::linear("tokens"),
            vec![("mean tokens", |d| Some(d.text.length.mean_tokens))],
        ),
    ];
    let charts = specs.iter().filter_map(|spec| diversity_chart(data, xa, spec)).collect();
    section("diversity", "Diversity over time", charts, "No batch diagnostics were logged.")
}

fn categories_section(data: &ReportData) -> Section {
    let mut charts = Vec::new();
    for s in &data.series {
        let diagnosed: Vec<(&SeriesPoint, &BatchDiagnostics)> = s.diagnosed().collect();
        if diagnosed.is_empty() {
            continue;
        }
        let columns: Vec<(u64, &CategoryStats)> = diagnosed.iter().map(|(p, d)| (p.index, &d.categories)).collect();
        let markers = alarm_columns(s.kind, &diagnosed.iter().map(|(p, _)| *p).collect::<Vec<_>>());
        let id = format!("categories-{}", kind_id(s.kind));
        charts.push(Chart {
            id: id.clone(),
            title: format!("Idea categories per {} ({})", s.kind.unit(), s.label),
            caption:
                "Share of each batch by the set of knobs an idea changes (its category); grey at the top: ideas \
                      that could not be implemented. One colour taking over the column is collapse onto one kind of \
                      idea."
                    .into(),
            svg: category_bars(id, format!("{} {}", s.label, s.kind.unit()), &columns, markers),
            small: false,
        });
    }
    section("categories", "Idea categories", charts, "No batch diagnostics were logged.")
}

/// Stacked bars of category shares, one column per step or epoch: the most common categories over all columns
/// each in a colour, the rest as "other categories", and the uncategorised ideas in light grey at the top.
fn category_bars(
    id: String,
    x_label: String,
    points: &[(u64, &CategoryStats)],
    markers: Vec<(usize, usize, String)>,
) -> String {
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, c) in points {
        for share in &c.shares {
            *totals.entry(share.label.as_str()).or_insert(0) += share.count;
        }
    }
    let mut ranked: Vec<(&str, usize)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let shown: Vec<&str> = ranked.iter().take(MAX_CATEGORIES).map(|c| c.0).collect();
    let has_other = ranked.len() > MAX_CATEGORIES;
    let mut layers: Vec<(String, String)> =
        shown.iter().enumerate().map(|(i, l)| (l.to_string(), PALETTE[i % 9].to_string())).collect();
    if has_other {
        layers.push(("other categories".into(), "#8c8c8c".into()));
    }
    layers.push(("not categorised".into(), "#dcdcdc".into()));
    let columns = points
        .iter()
        .map(|(index, c)| {
            // Shares of the ideas the category statistics counted (the whole batch, in a consistent log).
            let n = (c.n_categorised + c.n_uncategorised).max(1) as f64;
            let count = |label: &str| c.shares.iter().find(|s| s.label == label).map_or(0, |s| s.count) as f64 / n;
            let mut values: Vec<f64> = shown.iter().map(|l| count(l)).collect();
            if has_other {
                let other: usize =
                    c.shares.iter().filter(|s| !shown.contains(&s.label.as_str())).map(|s| s.count).sum();
                values.push(other as f64 / n);
            }
            values.push(c.n_uncategorised as f64 / n);
            Column { label: index.to_string(), values }
        })
        .collect();
    stacked_bars(&StackedBars {
        id,
        size: WIDE,
        x_label,
        y: Axis::linear("share of batch").with_range(0.0, 1.0),
        layers,
        columns,
        markers,
    })
}

fn execution_section(data: &ReportData) -> Section {
    let mut charts = Vec::new();
    for s in &data.series {
        if s.points.is_empty() {
            continue;
        }
        let mut causes: Vec<&str> = s.points.iter().flat_map(|p| p.failures.keys().map(String::as_str)).collect();
        causes.sort_unstable();
        causes.dedup();
        let mut layers = vec![("executed".to_string(), PALETTE[2].to_string())];
        let failure_colors = [PALETTE[3], PALETTE[1], PALETTE[6], PALETTE[5], PALETTE[8], PALETTE[7], PALETTE[4]];
        layers.extend(
            causes.iter().enumerate().map(|(i, c)| (format!("failed: {c}"), failure_colors[i % 7].to_string())),
        );
        let columns = s
            .points
            .iter()
            .map(|p| {
                let n = p.n_ideas.max(1) as f64;
                let mut values = vec![p.execution_rate];
                values.extend(causes.iter().map(|c| p.failures.get(*c).copied().unwrap_or(0) as f64 / n));
                Column { label: p.index.to_string(), values }
            })
            .collect();
        let markers = alarm_columns(s.kind, &s.points.iter().collect::<Vec<_>>());
        let id = format!("outcomes-{}", kind_id(s.kind));
        charts.push(Chart {
            id: id.clone(),
            title: format!("Execution rate and failure causes ({})", s.label),
            caption: "Green: share of the batch that was implemented and ran (the execution rate); above it, the \
                      failed ideas by cause."
                .into(),
            svg: stacked_bars(&StackedBars {
                id,
                size: WIDE,
                x_label: format!("{} {}", s.label, s.kind.unit()),
                y: Axis::linear("share of batch").with_range(0.0, 1.0),
                layers,
                columns,
                markers,
            }),
            small: false,
        });
    }
    section("execution", "Execution", charts, "No steps or epochs were logged.")
}

/// Code ideas (the `codebase` environment): how often a diff applied and then ran (the seed paper's split of the
/// execution rate), the diff size, the implementer's repairs, and the code each diff touched.
fn code_ideas_section(data: &ReportData) -> Section {
    let mut charts = Vec::new();
    for c in &data.code_ideas {
        charts.push(code_rates_chart(c));
        let columns: Vec<(u64, &CategoryStats)> = c.points.iter().map(|p| (p.index, &p.stats.categories)).collect();
        let id = format!("code-categories-{}", kind_id(c.kind));
        charts.push(Chart {
            id: id.clone(),
            title: format!("Touched code per {} ({})", c.kind.unit(), c.label),
            caption: "Share of each batch by the set of code units its diff touched (`train.py:fit`: the function, \
                      class or top-level name around each changed line); grey at the top: ideas whose diff did not \
                      apply."
                .into(),
            svg: category_bars(id, format!("{} {}", c.label, c.kind.unit()), &columns, vec![]),
            small: false,
        });
    }
    let tables = vec![code_overall_table(&data.code_ideas), code_points_table(&data.code_ideas)];
    Section { id: "code-ideas".into(), title: "Code ideas".into(), charts, note: None, tables }
}

/// The applied and ran rates of one learner's code ideas per step or epoch.
fn code_rates_chart(c: &CodeIdeaSeries) -> Chart {
    let color = series_color(c.kind);
    let rate = |f: fn(&CodeIdeaStats) -> f64| c.points.iter().map(|p| (p.index as f64, f(&p.stats))).collect();
    let lines = vec![
        Line::new("diff applied", color, rate(|s| s.applied_rate)),
        Line::new("applied and ran", darker(color), rate(|s| s.ran_rate)).stroke(Stroke::Dashed),
    ];
    let id = format!("code-rates-{}", kind_id(c.kind));
    Chart {
        id: id.clone(),
        title: format!("Diffs applied and ran per {} ({})", c.kind.unit(), c.label),
        caption: "Solid: share of the batch's code ideas whose diff applied; dashed: share that applied and whose \
                  program then ran to a result (the execution rate). The gap between them is programs that crashed \
                  or timed out."
            .into(),
        svg: line_chart(&LineChart {
            id,
            size: WIDE,
            x: Axis::integer(format!("{} {}", c.label, c.kind.unit())),
            y: Axis::linear("share of code ideas").with_range(0.0, 1.0),
            lines,
            bands: vec![],
            markers: vec![],
        }),
        small: false,
    }
}

/// "3 of 8 (38%)": a rate of `n` ideas with its count.
fn rate_cell(rate: f64, n: usize) -> String {
    format!("{} of {n} ({:.0}%)", (rate * n as f64).round() as usize, 100.0 * rate)
}

fn mean_cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

/// The most common categories of touched code with their counts, e.g. "train.py:HIDDEN ×3, train.py:fit ×1".
fn top_categories_cell(c: &CategoryStats, n: usize) -> String {
    if c.shares.is_empty() {
        return "–".into();
    }
    let mut parts: Vec<String> = c.shares.iter().take(n).map(|s| format!("{} ×{}", s.label, s.count)).collect();
    if c.shares.len() > n {
        parts.push(format!("{} more", c.shares.len() - n));
    }
    parts.join(", ")
}

/// The first columns of both code-idea tables, for one batch.
fn code_cells(s: &CodeIdeaStats) -> Vec<String> {
    vec![
        s.n_ideas.to_string(),
        rate_cell(s.applied_rate, s.n_ideas),
        rate_cell(s.ran_rate, s.n_ideas),
        mean_cell(s.mean_diff_lines),
        mean_cell(s.mean_repair_attempts),
    ]
}

const CODE_HEADER: [&str; 5] = ["code ideas", "diff applied", "applied and ran", "diff lines", "repairs"];

fn code_overall_table(series: &[CodeIdeaSeries]) -> Table {
    let rows = series
        .iter()
        .map(|c| {
            let mut row = vec![c.label.clone()];
            row.extend(code_cells(&c.overall));
            row.push(c.overall.categories.shares.len().to_string());
            row.push(top_categories_cell(&c.overall.categories, 5));
            row
        })
        .collect();
    let mut header = vec!["learner".to_string()];
    header.extend(CODE_HEADER.iter().map(|h| h.to_string()));
    header.extend(["distinct touched code".to_string(), "most touched".to_string()]);
    Table {
        id: "code-ideas-overall".into(),
        caption: "Every code idea of the run. Diff lines: mean added + removed lines over the diffs that applied; \
                  repairs: the implementer's mean repair attempts per idea (– for ideas written as diffs directly)."
            .into(),
        numeric: vec![false, true, true, true, true, true, true, false],
        header,
        rows,
    }
}

fn code_points_table(series: &[CodeIdeaSeries]) -> Table {
    let mut rows = Vec::new();
    for c in series {
        for p in &c.points {
            let mut row = vec![c.label.clone(), format!("{} {}", c.kind.unit(), p.index)];
            row.extend(code_cells(&p.stats));
            row.push(top_categories_cell(&p.stats.categories, 3));
            rows.push(row);
        }
    }
    let mut header = vec!["learner".to_string(), "at".to_string()];
    header.extend(CODE_HEADER.iter().map(|h| h.to_string()));
    header.push("touched code".to_string());
    Table {
        id: "code-ideas-points".into(),
        caption: "The same per step or epoch: the ideas that step trained on (RL) or the epoch sampled (evolution)."
            .into(),
        numeric: vec![false, true, true, true, true, true, true, false],
        header,
        rows,
    }
}

/// A small line chart of some per-point scalars of one series; `None` when none of them was logged.
fn scalar_chart(s: &RunSeries, spec: &Spec<StepMetric>) -> Option<Chart> {
    let n = spec.values.len();
    let lines: Vec<Line> = spec
        .values
        .iter()
        .enumerate()
        .filter(|(_, (_, key))| s.points.iter().any(|p| p.scalars.contains_key(key)))
        .map(|(i, (name, key))| {
            let points =
                s.points.iter().map(|p| (p.index as f64, p.scalars.get(key).copied().unwrap_or(f64::NAN))).collect();
            Line::new(*name, PALETTE[(i + if n > 1 { 0 } else { 4 }) % PALETTE.len()], points)
        })
        .collect();
    if lines.is_empty() {
        return None;
    }
    let svg = line_chart(&LineChart {
        id: spec.id.clone(),
        size: SMALL,
        x: Axis::integer(format!("{} {}", s.label, s.kind.unit())),
        y: spec.y.clone(),
        lines,
        bands: vec![],
        markers: vec![],
    });
    Some(Chart { id: spec.id.clone(), title: spec.title.into(), caption: spec.caption.into(), svg, small: true })
}

fn training_section(data: &ReportData) -> Section {
    let mut charts = Vec::new();
    if let Some(s) = data.series(SeriesKind::Rl) {
        let specs: [Spec<StepMetric>; 5] = [
            spec(
                "train-kl",
                "KL to the reference",
                "k3 estimate of KL(policy ‖ reference), per token.",
                Axis::linear("KL"),
                vec![("KL", StepMetric::Kl)],
            ),
            spec(
                "train-entropy",
                "Policy entropy",
                "Mean token entropy of sampled ideas; falling entropy often precedes collapse.",
                Axis::linear("nats"),
                vec![("entropy", StepMetric::Entropy)],
            ),
            spec(
                "train-grad-norm",
                "Gradient norm",
                "Norm of the update's gradient before clipping.",
                Axis::linear("norm"),
                vec![("grad norm", StepMetric::GradNorm)],
            ),
            spec(
                "train-clip",
                "Clipping and flat groups",
                "Share of tokens clipped below / above, and of groups whose rewards were all equal (no signal).",
                Axis::linear("fraction"),
                vec![
                    ("clipped low", StepMetric::ClipLowFrac),
                    ("clipped high", StepMetric::ClipHighFrac),
                    ("flat groups", StepMetric::FracRewardZeroStd),
                ],
            ),
            spec(
                "train-rollout-mismatch",
                "Sampler against trained policy",
                "Mean |log pi_train - log pi_sample| per token on groups sampled by the weights being trained (near 0 \
                 when sampling reads the f32 weights, about 0.01 from a bf16 copy), and the share of tokens whose \
                 truncated importance weight hit grpo.rollout_is_threshold.",
                Axis::linear("nats / fraction"),
                vec![
                    ("|log-prob difference|", StepMetric::RolloutLogprobDiffMean),
                    ("truncated", StepMetric::RolloutIsRatioFractionHigh),
                ],
            ),
        ];
        charts.extend(specs.iter().filter_map(|spec| scalar_chart(s, spec)));
        let parts = [
            (StepMetric::SampleSeconds, "sample"),
            (StepMetric::WaitSeconds, "wait"),
            (StepMetric::ExecuteSeconds, "execute"),
            (StepMetric::ReferenceSeconds, "reference"),
            (StepMetric::UpdateSeconds, "update"),
        ];
        let present: Vec<(StepMetric, &str)> =
            parts.into_iter().filter(|(k, _)| s.points.iter().any(|p| p.scalars.contains_key(k))).collect();
        if !present.is_empty() {
            let layers =
                present.iter().enumerate().map(|(i, (_, n))| (n.to_string(), PALETTE[i].to_string())).collect();
            let columns = s
                .points
                .iter()
                .map(|p| Column {
                    label: p.index.to_string(),
                    values: present.iter().map(|&(k, _)| time_part(&p.scalars, k)).collect(),
                })
                .collect();
            charts.push(Chart {
                id: "train-time".into(),
                title: "Time per step".into(),
                caption: "Where each step's wall time went (the parts add up to the step's time).".into(),
                svg: stacked_bars(&StackedBars {
                    id: "train-time".into(),
                    size: WIDE,
                    x_label: "RL step".into(),
                    y: Axis::linear("seconds"),
                    layers,
                    columns,
                    markers: vec![],
                }),
                small: false,
            });
        }
    }
    section("training", "Training signals (RL)", charts, "No RL steps were logged.")
}

fn pipeline_section(data: &ReportData) -> Section {
    let mut charts = Vec::new();
    if !data.staleness.is_empty() {
        let columns = data
            .staleness
            .iter()
            .map(|b| Column { label: b.staleness.to_string(), values: vec![b.groups as f64] })
            .collect();
        charts.push(Chart {
            id: "staleness".into(),
            title: "Staleness of trained groups".into(),
            caption: "Groups by how many policy versions passed between sampling and training.".into(),
            svg: stacked_bars(&StackedBars {
                id: "staleness".into(),
                size: SMALL,
                x_label: "staleness (policy versions)".into(),
                y: Axis::integer("groups"),
                layers: vec![("groups".into(), PALETTE[4].into())],
                columns,
                markers: vec![],
            }),
            small: true,
        });
    }
    if !data.utilisation.is_empty() {
        let mut lines = vec![Line::new(
            "busy / total slots",
            PALETTE[2],
            data.utilisation
                .iter()
                .map(|u| (u.seconds, if u.total_slots > 0.0 { u.busy_slots / u.total_slots } else { f64::NAN }))
                .collect(),
        )];
        if data.utilisation.iter().any(|u| u.queue_depth.is_some()) {
            let max_q = data.utilisation.iter().filter_map(|u| u.queue_depth).fold(0.0f64, f64::max).max(1.0);
            lines.push(
                Line::new(
                    format!("queue depth / {}", svg::trim_number(max_q)),
                    PALETTE[6],
                    data.utilisation
                        .iter()
                        .map(|u| (u.seconds, u.queue_depth.map_or(f64::NAN, |q| q / max_q)))
                        .collect(),
                )
                .stroke(Stroke::Dashed),
            );
        }
        charts.push(Chart {
            id: "utilisation".into(),
            title: "Execution slot utilisation".into(),
            caption:
                "Share of execution slots busy over time, and the queue of ideas waiting (scaled to its maximum)."
                    .into(),
            svg: line_chart(&LineChart {
                id: "utilisation".into(),
                size: SMALL,
                x: Axis::linear("seconds since start"),
                y: Axis::linear("fraction").with_range(0.0, 1.05),
                lines,
                bands: vec![],
                markers: vec![],
            }),
            small: true,
        });
    }
    // Per-step summaries, when the trainer logs them instead of the detailed records.
    for s in &data.series {
        if data.staleness.is_empty() {
            let id = format!("staleness-{}", kind_id(s.kind));
            charts.extend(scalar_chart(
                s,
                &spec(
                    id,
                    "Mean staleness per step",
                    "Policy versions between sampling and training, averaged over the step's groups.",
                    Axis::linear("versions"),
                    vec![("mean staleness", StepMetric::StalenessMean)],
                ),
            ));
        }
        if data.utilisation.is_empty() {
            let id = format!("utilisation-{}", kind_id(s.kind));
            charts.extend(scalar_chart(
                s,
                &spec(
                    id,
                    "Slot utilisation per step",
                    "Share of execution slots busy during the step.",
                    Axis::linear("fraction").with_range(0.0, 1.04),
                    vec![("slot utilisation", StepMetric::SlotUtilisation)],
                ),
            ));
        }
    }
    section(
        "pipeline",
        "Pipeline: staleness and slot utilisation",
        charts,
        "This run did not record staleness or slot utilisation (the synchronous trainer samples, executes and \
         trains in turn; the asynchronous pipeline and its run store record them).",
    )
}

/// One part of a step's time, such that the parts add up to `step_seconds`. The pipeline's step is the sum of
/// sample, wait and update, and its `update_seconds` includes the reference model's forward (`reference_seconds`,
/// recorded by the learner), so that is taken out of the update bar; in older synchronous records it was apart.
fn time_part(scalars: &BTreeMap<StepMetric, f64>, key: StepMetric) -> f64 {
    let get = |k: StepMetric| scalars.get(&k).copied().unwrap_or(0.0);
    let pipeline = scalars.contains_key(&StepMetric::WaitSeconds);
    match key {
        StepMetric::UpdateSeconds if pipeline => {
            (get(StepMetric::UpdateSeconds) - get(StepMetric::ReferenceSeconds)).max(0.0)
        }
        k => get(k),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keeps_the_ends_and_the_count() {
        assert_eq!(spread(3, 7), [0, 1, 2]);
        let picks = spread(100, 7);
        assert_eq!(picks.len(), 7);
        assert_eq!((picks[0], picks[6]), (0, 99));
        assert!(picks.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn consecutive_alarms_make_one_run() {
        use crate::alarm::{Alarm, AlarmKind};
        let point = |index: u64, alarms: usize| SeriesPoint {
            index,
            n_ideas: 8,
            executions: 8,
            reward_mean: 0.0,
            reward_max: 0.0,
            reward_std: None,
            best_so_far: None,
            execution_rate: 1.0,
            failures: BTreeMap::new(),
            diagnostics: None,
            alarms: (0..alarms)
                .map(|i| Alarm {
                    kind: AlarmKind::CategoryDominance {
                        category: "lr".into(),
                        share: 1.0,
                        count: 8,
                        n_categorised: 8,
                        threshold: 0.5,
                    },
                    message: format!("alarm {index}.{i}"),
                })
                .collect(),
            scalars: BTreeMap::new(),
        };
        let points: Vec<SeriesPoint> =
            [0, 1, 2, 0, 1, 0].iter().enumerate().map(|(i, &n)| point(i as u64, n)).collect();
        let refs: Vec<&SeriesPoint> = points.iter().collect();
        assert_eq!(alarm_runs(&refs), [(1, 2), (4, 4)]);
        let columns = alarm_columns(SeriesKind::Rl, &refs);
        assert_eq!(columns[0].2, "RL steps 1–2: 3 alarms; at step 2: alarm 2.0; alarm 2.1");
        assert_eq!(columns[1].2, "RL step 4: alarm 4.0");
    }

    /// The sampler-mismatch chart appears for a run that logs the mismatch (every run since it exists) and not for
    /// an older one, whose report stays as it was.
    #[test]
    fn the_sampler_mismatch_chart_shows_only_when_logged() {
        let point = |index: u64, scalars: BTreeMap<StepMetric, f64>| SeriesPoint {
            index,
            n_ideas: 8,
            executions: 8 * (index as usize + 1),
            reward_mean: 0.1,
            reward_max: 0.3,
            reward_std: None,
            best_so_far: None,
            execution_rate: 1.0,
            failures: BTreeMap::new(),
            diagnostics: None,
            alarms: vec![],
            scalars,
        };
        let ids = |scalars: BTreeMap<StepMetric, f64>| {
            let points = (0..3).map(|i| point(i, scalars.clone())).collect();
            let series = RunSeries { kind: SeriesKind::Rl, label: "RL".into(), points };
            let data = ReportData { series: vec![series], ..Default::default() };
            training_section(&data).charts.into_iter().map(|c| c.id).collect::<Vec<_>>()
        };
        let older = ids(BTreeMap::from([(StepMetric::Kl, 0.01)]));
        assert!(older.contains(&"train-kl".to_string()) && !older.contains(&"train-rollout-mismatch".to_string()));
        let logged = ids(BTreeMap::from([(StepMetric::Kl, 0.01), (StepMetric::RolloutLogprobDiffMean, 0.01)]));
        assert!(logged.contains(&"train-rollout-mismatch".to_string()), "{logged:?}");
    }

    #[test]
    fn colours() {
        assert_eq!(ramp(SeriesKind::Rl, 1.0), "#08306b");
        assert_eq!(darker("#ffffff"), "#a6a6a6");
    }

    #[test]
    fn time_parts_add_up_to_the_step_time() {
        use StepMetric::{ReferenceSeconds, SampleSeconds, StepSeconds, UpdateSeconds, WaitSeconds};
        let parts = [SampleSeconds, WaitSeconds, StepMetric::ExecuteSeconds, ReferenceSeconds, UpdateSeconds];
        // The pipeline's record of the step 0: sample + wait + update = 70.2 s, reference inside update.
        let pipeline = BTreeMap::from([
            (SampleSeconds, 30.0),
            (WaitSeconds, 5.2),
            (ReferenceSeconds, 7.1),
            (UpdateSeconds, 35.0),
            (StepSeconds, 70.2),
        ]);
        let sum: f64 = parts.iter().map(|&k| time_part(&pipeline, k)).sum();
        assert!((sum - 70.2).abs() < 1e-9, "{sum}");
        // A synchronous record: update_seconds excludes the reference already.
        let synchronous = BTreeMap::from([
            (SampleSeconds, 11.0),
            (ReferenceSeconds, 3.4),
            (UpdateSeconds, 33.0),
            (StepSeconds, 47.4),
        ]);
        let sum: f64 = parts.iter().map(|&k| time_part(&synchronous, k)).sum();
        assert!((sum - 47.4).abs() < 1e-9, "{sum}");
    }
}
