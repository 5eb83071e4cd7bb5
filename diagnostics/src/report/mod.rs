//! The run report: one self-contained HTML file with inline SVG charts, readable in a browser with no network.
//!
//! - [`data`]: the plain data model ([`ReportData`]) any source fills;
//! - [`run_folder`]: fills it from a run folder's JSONL files, or from the same typed step records taken from the
//!   run store ([`from_records`]; the CLI reads the store, this crate never opens it);
//! - [`svg`]: hand-written chart primitives; [`charts`]: which numbers go on which chart;
//! - [`render_html`]: the page, from a minijinja template (`report.html`) with the charts inlined.
//!
//! The page has no scripts, no external fonts, stylesheets or images: everything is in the one file.

pub mod charts;
pub mod data;
pub mod run_folder;
pub mod svg;

use std::path::Path;

use minijinja::{context, Environment};
use serde::Serialize;

pub use charts::{sections, Chart, Section};
pub use data::{
    CheckpointInfo, CodeIdeaPoint, CodeIdeaSeries, Evaluation, ReportData, RunSeries, SeriesKind, SeriesPoint,
    StalenessBin, TopIdea, UtilisationPoint,
};
pub use run_folder::{from_records, load_run_folder};

use crate::error::{DiagnosticsError, Result};

const TEMPLATE: &str = include_str!("report.html");

/// Summary numbers of one series for the cards at the top.
#[derive(Serialize)]
struct Card {
    label: String,
    unit: &'static str,
    points: usize,
    executions: usize,
    mean_first: String,
    mean_last: String,
    best: String,
    execution_rate: String,
    alarms: bool,
    alarm_points: usize,
}

#[derive(Serialize)]
struct AlarmRow {
    series: String,
    unit: &'static str,
    index: u64,
    message: String,
}

#[derive(Serialize)]
struct IdeaRow {
    reward: String,
    at: String,
    copies: usize,
    category: String,
    text: String,
}

#[derive(Serialize)]
struct CheckpointRow {
    step: u64,
    score: String,
}

/// A number for the tables: four decimals, or a dash when there is none.
fn fmt(v: Option<f64>) -> String {
    fmt_decimals(v, 4)
}

fn fmt_decimals(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "–".to_string(),
    }
}

fn cards(data: &ReportData) -> Vec<Card> {
    data.series
        .iter()
        .map(|s| {
            let best = s
                .points
                .iter()
                .filter_map(|p| p.best_so_far)
                .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.max(v))));
            let alarm_points = s.points.iter().filter(|p| !p.alarms.is_empty()).count();
            Card {
                label: s.label.clone(),
                unit: s.kind.unit(),
                points: s.points.len(),
                executions: s.executions(),
                // The cards are for a glance: three decimals fit the width.
                mean_first: fmt_decimals(s.points.first().map(|p| p.reward_mean), 3),
                mean_last: fmt_decimals(s.points.last().map(|p| p.reward_mean), 3),
                best: fmt_decimals(best, 3),
                execution_rate: s
                    .points
                    .last()
                    .filter(|p| p.execution_rate.is_finite())
                    .map_or("–".into(), |p| format!("{:.0}%", 100.0 * p.execution_rate)),
                alarms: alarm_points > 0,
                alarm_points,
            }
        })
        .collect()
}

/// Renders the report page.
pub fn render_html(data: &ReportData) -> Result<String> {
    let mut env = Environment::new();
    env.add_template("report.html", TEMPLATE)
        .map_err(|e| DiagnosticsError::Invalid(format!("report template: {e}")))?;
    let alarms: Vec<AlarmRow> = data
        .alarms()
        .map(|(s, p, a)| AlarmRow {
            series: s.label.clone(),
            unit: s.kind.unit(),
            index: p.index,
            message: a.message.clone(),
        })
        .collect();
    let top_ideas: Vec<IdeaRow> = data
        .top_ideas
        .iter()
        .map(|i| IdeaRow {
            reward: fmt(Some(i.reward)),
            at: format!("{} {}", i.kind.unit(), i.index),
            copies: i.copies,
            category: i.category.clone().unwrap_or_else(|| "–".into()),
            text: i.text.clone(),
        })
        .collect();
    let checkpoints: Vec<CheckpointRow> =
        data.checkpoints.iter().map(|c| CheckpointRow { step: c.step, score: fmt(c.score) }).collect();
    let template = env.get_template("report.html").expect("added above");
    template
        .render(context! {
            title => data.title,
            source => data.source,
            cards => cards(data),
            sections => sections(data),
            alarms => alarms,
            top_ideas => top_ideas,
            checkpoints => checkpoints,
            notes => data.notes,
            config_text => data.config_text,
            experiment_only => data.is_experiment_only(),
        })
        .map_err(|e| DiagnosticsError::Invalid(format!("rendering the report: {e:#}")))
}

/// Renders the report and writes it to `out`.
pub fn write_report(data: &ReportData, out: &Path) -> Result<()> {
    let html = render_html(data)?;
    std::fs::write(out, html).map_err(|e| DiagnosticsError::file(out, format!("cannot write the report: {e}")))
}
