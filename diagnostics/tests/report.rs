//! The run report: loading a run folder into the data model, and the charts the HTML holds.
//!
//! `fixtures/report-run/` is a small fabricated run in the format `ideator train` writes (8 GRPO steps of 8 ideas on
//! the toy environment, drifting from varied ideas to copies of one learning-rate idea, with the collapse alarms
//! that drift fires). It is made by the ignored test at the end of this file, which computes every diagnostic with
//! this crate and the real MiniLM embedder:
//! `cargo test --release -p ideator-diagnostics --test report -- --ignored regenerate_run_fixture`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ideator_diagnostics::report::{
    load_run_folder, render_html, ReportData, RunSeries, SeriesKind, SeriesPoint, StalenessBin, UtilisationPoint,
};
use ideator_diagnostics::{AlarmKind, BatchDiagnostics, Category, ScoredIdea};
use ideator_rollout::pipeline::record::StepMetric;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report-run")
}

/// The `<svg ...>...</svg>` of the chart with this `data-chart` id.
fn chart<'a>(html: &'a str, id: &str) -> &'a str {
    let marker = format!("data-chart=\"{id}\"");
    let at = html.find(&marker).unwrap_or_else(|| panic!("chart {id} is missing"));
    let start = html[..at].rfind("<svg").unwrap();
    let end = at + html[at..].find("</svg>").unwrap() + "</svg>".len();
    &html[start..end]
}

fn count(svg: &str, class: &str) -> usize {
    svg.matches(&format!("class=\"{class}\"")).count()
}

fn chart_ids(html: &str) -> Vec<String> {
    html.split("data-chart=\"").skip(1).map(|s| s[..s.find('"').unwrap()].to_string()).collect()
}

#[test]
fn loads_the_fixture_run() {
    let data = load_run_folder(&fixture_dir()).unwrap();
    assert_eq!(data.title, "report-run");
    assert!(data.notes.is_empty(), "{:?}", data.notes);
    assert!(data.config_text.as_deref().unwrap().contains("[grpo]"));
    assert_eq!(data.series.len(), 1);
    let rl = &data.series[0];
    assert_eq!(rl.kind, SeriesKind::Rl);
    let indices: Vec<u64> = rl.points.iter().map(|p| p.index).collect();
    assert_eq!(indices, (0..8).collect::<Vec<_>>());
    let executions: Vec<usize> = rl.points.iter().map(|p| p.executions).collect();
    assert_eq!(executions, (1..=8).map(|i| 8 * i).collect::<Vec<_>>());

    // Every point's numbers agree with its own diagnostics and with its ideas.
    let ideas: Vec<serde_json::Value> = std::fs::read_to_string(fixture_dir().join("ideas.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for p in &rl.points {
        let d = p.diagnostics.as_ref().expect("the fixture logs diagnostics every step");
        assert_eq!(p.n_ideas, d.n_ideas);
        assert!((p.reward_mean - d.mean_reward).abs() < 1e-12);
        assert!((p.execution_rate - d.execution_rate).abs() < 1e-12);
        assert!(d.embedding.is_some());
        let step_ideas: Vec<&serde_json::Value> = ideas.iter().filter(|i| i["step"] == p.index).collect();
        let failed = step_ideas.iter().filter(|i| i["status"] == "failed").count();
        assert_eq!(p.failures.values().sum::<usize>(), failed, "step {}", p.index);
        assert!(p.scalars.contains_key(&StepMetric::Kl) && p.scalars.contains_key(&StepMetric::UpdateSeconds));
        assert!(!p.scalars.contains_key(&StepMetric::RewardMean), "named fields stay out of the scalars");
        assert!(!p.scalars.contains_key(&StepMetric::WaitSeconds), "not logged by the synchronous trainer");
    }
    // The running best never falls and ends at the best executed idea.
    let best: Vec<f64> = rl.points.iter().filter_map(|p| p.best_so_far).collect();
    assert!(best.windows(2).all(|w| w[1] >= w[0]));
    let top = &data.top_ideas[0];
    assert_eq!(Some(top.reward), best.last().copied());
    assert!(data.top_ideas.windows(2).all(|w| w[0].reward >= w[1].reward));
    // Collapse: the late steps repeat one idea, and the alarms say so.
    assert!(data.top_ideas.iter().any(|i| i.copies >= 5), "{:?}", data.top_ideas);
    assert!(rl.points[0].alarms.is_empty());
    let last = rl.points.last().unwrap();
    assert!(last.alarms.iter().any(|a| matches!(a.kind, AlarmKind::CategoryDominance { .. })));
    assert!(last.alarms.iter().any(|a| matches!(a.kind, AlarmKind::DiversityDrop { .. })));
    let steps: Vec<u64> = data.checkpoints.iter().map(|c| c.step).collect();
    assert_eq!(steps, [4, 8]);
    assert!(data.checkpoints.iter().all(|c| c.score.is_some()));
    // The data model serialises (the run store's loader and `--json` consumers read the same shape).
    let back: ReportData = serde_json::from_str(&serde_json::to_string(&data).unwrap()).unwrap();
    assert_eq!(back.series[0].points.len(), 8);
}

#[test]
fn the_page_has_every_chart_with_one_element_per_series_and_alarm() {
    let data = load_run_folder(&fixture_dir()).unwrap();
    let rl = &data.series[0];
    let html = render_html(&data).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // Self-contained: nothing is fetched.
    for banned in ["<script", "<link", "@import", "http://", "https://", "url("] {
        let outside_svg_ns = html.replace("http://www.w3.org/2000/svg", "");
        assert!(!outside_svg_ns.contains(banned), "the page refers to {banned}");
    }
    let ids = chart_ids(&html);
    for id in [
        "reward",
        "maxk-rl",
        "maxk-time-rl",
        "div-vendi",
        "div-cosine",
        "div-distinct",
        "div-self-bleu",
        "div-gzip",
        "div-category-entropy",
        "div-length",
        "categories-rl",
        "outcomes-rl",
        "train-kl",
        "train-entropy",
        "train-grad-norm",
        "train-clip",
        "train-time",
    ] {
        assert!(ids.iter().any(|i| i == id), "chart {id} is missing; have {ids:?}");
    }
    assert_eq!(html.matches("<svg").count(), ids.len(), "one <svg> per chart");
    // Alarms at consecutive steps make one marker (a shaded span), so count the runs of alarmed steps.
    let alarmed: Vec<bool> = rl.points.iter().map(|p| !p.alarms.is_empty()).collect();
    let alarm_runs = (0..alarmed.len()).filter(|&i| alarmed[i] && (i == 0 || !alarmed[i - 1])).count();
    assert!(alarm_runs >= 1);

    let reward = chart(&html, "reward");
    assert_eq!(count(reward, "series"), 3, "mean, batch max, best so far");
    assert_eq!(count(reward, "band"), 1);
    assert_eq!(count(reward, "alarm-marker"), alarm_runs);
    // One point marker per step on each line (the best-so-far line starts at the first executed idea).
    let with_best = rl.points.iter().filter(|p| p.best_so_far.is_some()).count();
    assert_eq!(reward.matches("<circle").count(), 8 + 8 + with_best);

    // max@k: a curve per step (8 steps fit), with k = 1, 2, 4, 8 each.
    let maxk = chart(&html, "maxk-rl");
    assert_eq!(count(maxk, "series"), 8);
    assert_eq!(maxk.matches("<circle").count(), 8 * 4);
    assert!(maxk.contains("step 7, latest") && maxk.contains("step 4 (checkpoint)"));
    assert_eq!(count(chart(&html, "maxk-time-rl"), "series"), 4, "max@1, 2, 4, 8");

    assert_eq!(count(chart(&html, "div-distinct"), "series"), 3);
    assert_eq!(count(chart(&html, "div-vendi"), "alarm-marker"), alarm_runs);
    assert_eq!(count(chart(&html, "categories-rl"), "alarm-marker"), alarm_runs);

    // Stacked bars: one rect per non-zero layer of each column.
    let categories = chart(&html, "categories-rl");
    let nonzero: usize = rl
        .points
        .iter()
        .map(|p| {
            let c = &p.diagnostics.as_ref().unwrap().categories;
            c.shares.len() + usize::from(c.n_uncategorised > 0)
        })
        .sum();
    assert_eq!(count(categories, "bar"), nonzero);
    let outcomes = chart(&html, "outcomes-rl");
    let nonzero: usize = rl.points.iter().map(|p| usize::from(p.execution_rate > 0.0) + p.failures.len()).sum();
    assert_eq!(count(outcomes, "bar"), nonzero);
    assert_eq!(count(chart(&html, "train-time"), "bar"), 8 * 4, "sample, execute, reference, update");

    // Tables: every alarm and every top idea, with the text escaped.
    assert_eq!(html.matches("<tr class=\"alarm\">").count(), data.alarms().count());
    assert!(html.contains("[Experiment]") && html.contains("id=\"top-ideas\""));
    assert!(!html.contains("<pre>[Code Changes]<"), "idea text sits inside its table cell");
    assert!(html.contains("No collapse alarm fired") == (data.alarms().count() == 0));
    // No pipeline data in a synchronous run: the section says why instead of drawing empty charts.
    assert!(html.contains("did not record staleness or slot utilisation"));
}

fn point(index: u64, n: usize, diagnostics: BatchDiagnostics) -> SeriesPoint {
    SeriesPoint {
        index,
        n_ideas: n,
        executions: n * (index as usize + 1),
        reward_mean: diagnostics.mean_reward,
        reward_max: diagnostics.best_reward,
        reward_std: Some(diagnostics.reward_std),
        best_so_far: Some(diagnostics.best_reward),
        execution_rate: diagnostics.execution_rate,
        failures: BTreeMap::new(),
        diagnostics: Some(diagnostics),
        alarms: Vec::new(),
        scalars: BTreeMap::new(),
    }
}

fn batch(rewards: &[f64]) -> BatchDiagnostics {
    let cats: Vec<Category> = (0..rewards.len()).map(|i| [format!("knob{}", i % 3)].into()).collect();
    let texts: Vec<String> = (0..rewards.len()).map(|i| format!("idea number {i} changes knob{}", i % 3)).collect();
    let ideas: Vec<ScoredIdea> = rewards
        .iter()
        .zip(&texts)
        .zip(&cats)
        .map(|((&reward, text), c)| ScoredIdea { text, reward, executed: true, category: Some(c) })
        .collect();
    BatchDiagnostics::compute(&ideas, None).unwrap()
}

#[test]
fn rl_and_evolution_share_the_reward_chart_on_an_execution_axis() {
    let rl = RunSeries {
        kind: SeriesKind::Rl,
        label: "RL".into(),
        points: (0..3).map(|i| point(i, 4, batch(&[0.1, 0.2, 0.3, 0.1 * i as f64]))).collect(),
    };
    let evolution = RunSeries {
        kind: SeriesKind::Evolution,
        label: "evolution".into(),
        points: (0..2).map(|i| point(i, 6, batch(&[0.2, 0.25, 0.3, 0.35, 0.4, 0.2 + 0.1 * i as f64]))).collect(),
    };
    let data = ReportData {
        title: "both".into(),
        series: vec![rl, evolution],
        staleness: vec![StalenessBin { staleness: 0, groups: 5 }, StalenessBin { staleness: 1, groups: 2 }],
        utilisation: (0..5)
            .map(|i| UtilisationPoint {
                seconds: 10.0 * i as f64,
                busy_slots: (i % 3) as f64,
                total_slots: 2.0,
                queue_depth: Some(i as f64),
            })
            .collect(),
        ..ReportData::default()
    };
    let html = render_html(&data).unwrap();
    let reward = chart(&html, "reward");
    assert_eq!(count(reward, "series"), 6, "mean, max and best so far of each learner");
    assert_eq!(count(reward, "band"), 2);
    assert!(reward.contains("ideas sent to the executor (cumulative)"));
    assert!(reward.contains("data-series=\"evolution mean\""));
    // Each learner gets its own max@k and category charts; diversity lines come in pairs.
    for id in ["maxk-rl", "maxk-evolution", "categories-rl", "categories-evolution", "outcomes-evolution"] {
        chart(&html, id);
    }
    assert_eq!(count(chart(&html, "maxk-evolution"), "series"), 2);
    assert_eq!(count(chart(&html, "div-distinct"), "series"), 6);
    assert_eq!(count(chart(&html, "div-self-bleu"), "series"), 2);
    // No embeddings, no training scalars: those charts are left out rather than drawn empty.
    assert!(!html.contains("data-chart=\"div-vendi\"") && !html.contains("data-chart=\"train-kl\""));
    assert_eq!(count(chart(&html, "staleness"), "bar"), 2);
    assert_eq!(count(chart(&html, "utilisation"), "series"), 2);
    assert!(!html.contains("did not record staleness"));
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn loader_tolerates_a_cut_last_line_and_rejects_a_broken_middle_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = load_run_folder(dir.path()).unwrap_err().to_string();
    assert!(missing.contains("neither metrics.jsonl nor ideas.jsonl"), "{missing}");

    // Ideas alone (metrics never written): points come from the ideas, last line cut short by a crash.
    let idea = |step: u64, text: &str, status: &str, reward: f64, cat: &str| {
        serde_json::json!({"step": step, "text": text, "status": status, "reward": reward,
            "cause": if status == "ok" { serde_json::Value::Null } else { "implementation".into() },
            "category": if status == "ok" { serde_json::json!([cat]) } else { serde_json::Value::Null }})
        .to_string()
    };
    let lines = [
        idea(0, "raise lr to 3e-3", "ok", 0.4, "lr"),
        idea(0, "nonsense", "failed", 0.0, ""),
        idea(1, "lower lr to 1e-4", "ok", 0.2, "lr"),
        idea(1, "raise lr to 3e-3", "ok", 0.4, "lr"),
    ];
    write(dir.path(), "ideas.jsonl", &format!("{}\n{{\"step\": 1, \"te", lines.join("\n")));
    let data = load_run_folder(dir.path()).unwrap();
    let rl = &data.series[0];
    assert_eq!(rl.points.len(), 2);
    assert_eq!((rl.points[0].execution_rate, rl.points[1].execution_rate), (0.5, 1.0));
    assert_eq!(rl.points[0].failures.get("implementation"), Some(&1));
    assert_eq!(rl.points[1].best_so_far, Some(0.4));
    assert_eq!((data.top_ideas.len(), data.top_ideas[0].copies), (2, 2));
    assert!(data.notes.iter().any(|n| n.contains("unfinished last line")), "{:?}", data.notes);
    assert!(data.notes.iter().any(|n| n.contains("from ideas.jsonl alone")));

    // Metrics: an evolution record (with `epoch`) makes its own series; a step without diagnostics gets them
    // recomputed from its ideas.
    write(
        dir.path(),
        "metrics.jsonl",
        "{\"step\": 0, \"reward_mean\": 0.2, \"reward_max\": 0.4, \"execution_rate\": 0.5, \"kl\": 0.01, \
           \"staleness_mean\": 0.5, \"slot_utilisation\": 0.75}\n\
         {\"epoch\": 0, \"reward_mean\": 0.3, \"reward_max\": 0.5, \"execution_rate\": 1.0, \"n_ideas\": 6}\n",
    );
    let data = load_run_folder(dir.path()).unwrap();
    assert_eq!(data.series.iter().map(|s| s.kind).collect::<Vec<_>>(), [SeriesKind::Rl, SeriesKind::Evolution]);
    let step0 = &data.series[0].points[0];
    assert_eq!(step0.diagnostics.as_ref().unwrap().n_ideas, 2);
    assert_eq!(step0.scalars.get(&StepMetric::Kl), Some(&0.01));
    assert_eq!(data.series[1].points[0].executions, 6);
    assert!(data.notes.iter().any(|n| n.contains("recomputed from ideas.jsonl")));
    // Per-step pipeline numbers get their charts; the notes are listed on the page.
    let html = render_html(&data).unwrap();
    assert_eq!(count(chart(&html, "staleness-rl"), "series"), 1);
    assert_eq!(count(chart(&html, "utilisation-rl"), "series"), 1);
    assert!(html.contains("recomputed from ideas.jsonl"));

    write(dir.path(), "metrics.jsonl", "{\"step\": 0}\nnot json\n{\"step\": 1}\n");
    let err = load_run_folder(dir.path()).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl") && err.contains("line 2"), "{err}");
    write(dir.path(), "metrics.jsonl", "{\"reward_mean\": 0.2}\n");
    let err = load_run_folder(dir.path()).unwrap_err().to_string();
    assert!(err.contains("neither a `step` nor an `epoch`"), "{err}");
}

/// The one point of a run folder whose metrics.jsonl holds this one record.
fn point_of_line(record: &serde_json::Value) -> SeriesPoint {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "metrics.jsonl", &format!("{record}\n"));
    let data = load_run_folder(dir.path()).unwrap();
    assert!(data.notes.is_empty(), "{:?}", data.notes);
    data.series[0].points[0].clone()
}

#[test]
fn an_older_builds_record_gives_the_same_point_as_this_builds() {
    use ideator_rollout::pipeline::record::{ExecutionStats, RewardStats, StepTiming};
    use ideator_rollout::pipeline::{LearnerStats, StepRecord};
    use ideator_trainer::GrpoStepStats;

    let rewards = [0.1, 0.3, 0.0, 0.2];
    let grpo = GrpoStepStats { kl: 0.01, entropy: 1.7, grad_norm: 0.4, clip_low_frac: 0.02, ..Default::default() };
    let new = StepRecord {
        step: 5,
        rewards: RewardStats {
            execution_rate: 0.75,
            best_reward_so_far: Some(0.4),
            failures: BTreeMap::from([("implementation".to_string(), 1)]),
            ..RewardStats::of(&rewards)
        },
        executions: ExecutionStats { frac_reward_zero_std: 0.5, ..Default::default() },
        timing: StepTiming {
            sample_seconds: 11.0,
            wait_seconds: 2.0,
            update_seconds: 30.0,
            step_seconds: 43.0,
            ..Default::default()
        },
        learner: LearnerStats { grpo: Some(GrpoStepStats { reference_seconds: 3.0, ..grpo }), evolution: None },
        ..Default::default()
    };
    // The same step as the synchronous trainer wrote it: `n_ideas` for `sequences`, only part of the GRPO
    // statistics, none of the pipeline's counts, and a non-finite max as null.
    let n = &new.rewards;
    let old = serde_json::json!({
        "step": 5, "n_ideas": 4, "reward_mean": n.reward_mean, "reward_std": n.reward_std, "reward_max": n.reward_max,
        "best_reward_so_far": 0.4, "execution_rate": 0.75, "failures": {"implementation": 1}, "kl": 0.01,
        "entropy": 1.7, "grad_norm": 0.4, "clip_low_frac": 0.02, "clip_high_frac": 0.0, "frac_reward_zero_std": 0.5,
        "sample_seconds": 11.0, "wait_seconds": 2.0, "reference_seconds": 3.0, "update_seconds": 30.0,
        "step_seconds": 43.0, "slot_utilisation": null, "loss": 0.001, "lr": 2e-4,
    });
    let new_point = point_of_line(&new.to_json());
    assert_eq!(point_of_line(&old), new_point);
    assert_eq!((new_point.n_ideas, new_point.scalars.get(&StepMetric::Kl)), (4, Some(&0.01)));
}

/// Writes `fixtures/report-run/`: a fabricated but realistic toy run, every number computed by this crate.
#[test]
#[ignore = "regenerates the fixture; needs the MiniLM assets (IDEATOR_ASSETS)"]
fn regenerate_run_fixture() {
    use ideator_diagnostics::{check_collapse, AlarmConfig, MiniLmEmbedder};

    let dir = fixture_dir();
    std::fs::create_dir_all(dir.join("checkpoints/step-00000004")).unwrap();
    std::fs::create_dir_all(dir.join("checkpoints/step-00000008")).unwrap();
    let embedder = MiniLmEmbedder::load_default(&candle_core::Device::Cpu).expect("MiniLM assets");
    let alarm = AlarmConfig { min_categorised_ideas: 4, ..AlarmConfig::default() };
    write(
        &dir,
        "config.toml",
        "[init]\ncheckpoint = \"sft/checkpoints/step-00000008\"\n[train]\nmode = \"lora\"\n[optim]\nlr = 2e-4\n\
         [grpo]\ngroup_size = 8\nbeta = 0.02\n[sampling]\ntemperature = 1.0\nmax_new_tokens = 96\n[env]\n\
         name = \"toy\"\n[rl]\nsteps = 8\ncheckpoint_every = 4\n[diagnostics]\nembeddings = true\n\
         [diagnostics.alarm]\nmin_categorised_ideas = 4\n",
    );
    // Ideas the toy ideator writes: varied at first, then more and more copies of one learning-rate idea.
    let varied = [
        ("Lower the learning rate for a steadier start", "lr = 1e-3", 0.21),
        ("Use a cosine schedule so the step shrinks late", "schedule = \"cosine\"", 0.17),
        ("Double the batch for less noisy gradients", "batch_size = 64", 0.16),
        ("Add weight decay against overfitting", "weight_decay = 0.1", 0.13),
        ("Clip gradients harder to avoid spikes", "grad_clip = 0.5", 0.11),
        ("Warm up for longer before the peak rate", "warmup_steps = 200", 0.12),
        ("Cosine decay with a short warm-up", "schedule = \"cosine\"\nwarmup_steps = 50", 0.19),
        ("Smaller batch, lower rate", "batch_size = 16\nlr = 5e-4", 0.14),
    ];
    let collapsed = ("Raise the learning rate to 3e-3 to learn faster", "lr = 3e-3", 0.27);
    let broken = [
        "[Experiment]\nRewire the decay slope with a minzomon set\n[Code Changes]\nschedule = \"minzomon\"\n[End]",
        "[Experiment]\nRaise grade_clip from 0.0 to 0.1 flare_clip is too sensitive\n[End]",
        "[Experiment]\nIncrease momentum of the dampening stretch\n[Code Changes]\ndampening = 4e-4\n[End]",
    ];
    let mut ideas_out = String::new();
    let mut metrics_out = String::new();
    let mut first: Option<BatchDiagnostics> = None;
    let mut best: Option<f64> = None;
    for step in 0..8u64 {
        // Steps 0-1: 3 failures, all varied; later fewer failures and more copies of the collapsed idea.
        let n_failed = [3, 3, 2, 2, 1, 1, 0, 0][step as usize];
        let n_copies = [0, 1, 2, 3, 4, 5, 7, 8][step as usize];
        let mut batch: Vec<(String, &str, f64, Option<Vec<String>>)> = Vec::new();
        for i in 0..8usize {
            let (text, status, reward, category) = if i < n_failed {
                (broken[(i + step as usize) % broken.len()].to_string(), "failed", 0.0, None)
            } else if i >= 8 - n_copies {
                let (exp, code, r) = collapsed;
                let knobs = vec!["lr".to_string()];
                (format!("[Experiment]\n{exp}\n[Code Changes]\n{code}\n[End]"), "ok", r, Some(knobs))
            } else {
                let (exp, code, r) = varied[(i * 3 + step as usize) % varied.len()];
                let mut knobs: Vec<String> =
                    code.lines().map(|l| l.split(" = ").next().unwrap().to_string()).collect();
                knobs.sort();
                // Later steps tune the values a little: small reward differences, as a real environment gives.
                let r = r + 0.004 * step as f64 - 0.003 * (i % 3) as f64;
                (format!("[Experiment]\n{exp}\n[Code Changes]\n{code}\n[End]"), "ok", r, Some(knobs))
            };
            batch.push((text, status, reward, category));
        }
        let categories: Vec<Option<Category>> =
            batch.iter().map(|b| b.3.as_ref().map(|k| k.iter().cloned().collect())).collect();
        let scored: Vec<ScoredIdea> = batch
            .iter()
            .zip(&categories)
            .map(|(b, c)| ScoredIdea { text: &b.0, reward: b.2, executed: b.1 == "ok", category: c.as_ref() })
            .collect();
        let d = BatchDiagnostics::compute(&scored, Some(&embedder)).unwrap();
        let alarms = check_collapse(&alarm, first.as_ref().unwrap_or(&d), &d);
        first.get_or_insert_with(|| d.clone());
        let mut failures = BTreeMap::new();
        for (i, b) in batch.iter().enumerate() {
            if b.1 == "ok" {
                best = Some(best.map_or(b.2, |x: f64| x.max(b.2)));
            } else {
                *failures.entry("implementation").or_insert(0) += 1;
            }
            let line = serde_json::json!({
                "step": step, "group": 0, "sample": i, "policy_version": step, "text": b.0,
                "completion_tokens": 40 + (b.0.len() / 4), "finish_reason": "stop", "status": b.1, "reward": b.2,
                "cause": if b.1 == "ok" { serde_json::Value::Null } else { "implementation".into() },
                "message": if b.1 == "ok" { format!("toy reward {:.4}", b.2) } else { "unknown knob".into() },
                "metrics": {}, "seconds": 0.00005, "category": b.3,
            });
            ideas_out.push_str(&format!("{line}\n"));
        }
        let s = step as f64;
        let record = serde_json::json!({
            "step": step, "sequences": 8, "reward_mean": d.mean_reward, "reward_max": d.best_reward,
            "reward_std": d.reward_std, "best_reward_so_far": best, "execution_rate": d.execution_rate,
            "failures": failures, "kl": 0.002 * s * s, "entropy": 1.8 - 0.16 * s, "grad_norm": 0.4 - 0.03 * s,
            "clip_low_frac": 0.01 * s / 8.0, "clip_high_frac": 0.02 * s / 8.0,
            "frac_reward_zero_std": if step >= 7 { 1.0 } else { 0.0 }, "loss": 0.001, "lr": 2e-4,
            "sample_seconds": 11.0 + 0.2 * s, "reference_seconds": 3.4, "execute_seconds": 0.0004,
            "update_seconds": 33.0 + 0.1 * s, "step_seconds": 47.5 + 0.3 * s, "trained_tokens": 600,
            "idea_chars_mean": d.text.length.mean_chars, "diagnostics": d, "alarms": alarms,
        });
        metrics_out.push_str(&format!("{record}\n"));
        if (step + 1) % 4 == 0 {
            let manifest = serde_json::json!({"format_version": 1, "step": step + 1, "weights": "lora",
                "score": d.mean_reward});
            write(&dir, &format!("checkpoints/step-{:08}/manifest.json", step + 1), &format!("{manifest:#}\n"));
        }
    }
    write(&dir, "ideas.jsonl", &ideas_out);
    write(&dir, "metrics.jsonl", &metrics_out);
}
