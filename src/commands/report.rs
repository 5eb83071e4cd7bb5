//! `ideator report RUN`: one self-contained HTML file with the run's charts (reward, max@k, diversity, categories,
//! execution, code ideas, training signals, staleness and slot utilisation, alarms, top ideas), readable in a
//! browser with no network. A run folder with a run store is read from the store: every run in it (RL steps and
//! evolution epochs on the same charts, evaluations of checkpoints as max@k curves); an older folder from its JSONL
//! files; an experiment folder from its runs' stores (every arm on one chart per metric).

use std::path::PathBuf;

use ideator_diagnostics::report::{load_run_folder, write_report};

#[derive(clap::Args)]
pub struct Args {
    /// The run folder (the one holding store.sqlite, or metrics.jsonl and ideas.jsonl).
    pub run: PathBuf,
    /// Where to write the report (default: RUN/report.html).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print a JSON summary (the report's path, series, alarms, code-idea statistics) instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let data = if crate::commands::experiment::comparison::is_experiment(&args.run) {
        ideator_diagnostics::report::ReportData {
            title: args.run.display().to_string(),
            source: args.run.join(crate::commands::experiment::MANIFEST).display().to_string(),
            experiment: Some(crate::commands::experiment::comparison::load_folder(&args.run)?),
            ..Default::default()
        }
    } else if crate::store_data::store_path(&args.run).is_file() {
        crate::store_data::load_store(&args.run)?.data
    } else {
        load_run_folder(&args.run)?
    };
    let out = args.out.clone().unwrap_or_else(|| args.run.join("report.html"));
    write_report(&data, &out)?;
    let alarms = data.alarms().count();
    if args.json {
        let series: Vec<serde_json::Value> = data
            .series
            .iter()
            .map(|s| {
                serde_json::json!({
                    "kind": s.kind,
                    "points": s.points.len(),
                    "executions": s.executions(),
                    "alarms": s.points.iter().map(|p| p.alarms.len()).sum::<usize>(),
                })
            })
            .collect();
        let summary = serde_json::json!({
            "report": out.display().to_string(),
            "series": series,
            "evaluations": data.evaluations.iter().map(|e| &e.label).collect::<Vec<_>>(),
            "alarms": alarms,
            "top_reward": data.top_ideas.first().map(|i| i.reward),
            "code_ideas": data.code_ideas,
            "notes": data.notes,
        });
        println!("{summary}");
    } else {
        for note in &data.notes {
            eprintln!("note: {note}");
        }
        let mut points: Vec<String> =
            data.series.iter().map(|s| format!("{} {}s", s.points.len(), s.kind.unit())).collect();
        if let Some(e) = &data.experiment {
            points.push(format!("an experiment of {} arms", e.arms.len()));
        }
        let alarms = if data.is_experiment_only() { String::new() } else { format!("; {alarms} collapse alarm(s)") };
        println!(
            "report written to {} ({}{alarms})",
            out.display(),
            if points.is_empty() { "no steps".to_string() } else { points.join(", ") }
        );
    }
    Ok(())
}
