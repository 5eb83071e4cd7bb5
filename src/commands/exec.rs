//! `ideator exec`: implement and run one idea in this process, and print its result. Backends launch this
//! command (locally or through Slurm) so that every run is isolated in its own process.

use crate::set_tensor_threads;
use ideator_envs::{CpuParallelism, ExecResult, FailureCause, RunContext};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Environment name (`ideator env list`).
    #[arg(long)]
    pub env: String,
    /// Config file of a `command` environment.
    #[arg(long)]
    pub env_config: Option<PathBuf>,
    /// Scale (default: the environment's smallest).
    #[arg(long)]
    pub scale: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// File holding the idea (`[Experiment] ... [Code Changes] ... [End]`). Without it the baseline runs.
    #[arg(long)]
    pub idea: Option<PathBuf>,
    /// Wall-clock limit of the run in seconds (positive, at most 1e6).
    #[arg(long, value_parser = crate::run_config::seconds_arg)]
    pub time_limit: Option<f64>,
    /// Folder the run may write to and that is kept (default: a fresh folder under the system temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print the result as one JSON line (otherwise a short human-readable summary).
    #[arg(long)]
    pub json: bool,
    /// Also print the run's log (to stderr).
    #[arg(long)]
    pub log: bool,
    /// CPU threads for tensor ops (0: all cores). One per run by default: a backend runs several runs side by
    /// side, and candle's spinning thread barriers slow down sharply when cores are oversubscribed.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let env = ideator_envs::load(&args.env, args.env_config.as_deref())?;
    let device = ideator_envs::default_device();
    let threads = requested_threads(args.threads);
    // Before the first tensor operation: candle's thread pool reads its size once.
    let run_threads = match env.cpu_parallelism() {
        CpuParallelism::AcrossMicroBatches if device.is_cpu() => {
            set_tensor_threads(1);
            threads
        }
        _ => {
            set_tensor_threads(threads);
            1
        }
    };
    let scale = args.scale.clone().unwrap_or_else(|| env.default_scale());
    env.check_scale(&scale)?;
    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => fresh_work_dir(),
    };
    let mut ctx = RunContext::new(&scale, args.seed, &work_dir).with_device(device).with_threads(run_threads);
    // A file the user named that cannot be read is a usage error, not a failed idea: checked before anything runs.
    let idea = match &args.idea {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read the idea file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    if let Some(secs) = args.time_limit {
        let limit = crate::run_config::seconds("--time-limit", secs)?;
        ctx = ctx.with_time_limit(limit);
        start_watchdog(limit, args.json, work_dir.clone());
    }
    let result = match &idea {
        Some(bytes) => ideator_envs::execute_bytes(env.as_ref(), bytes, &ctx),
        None => {
            let started = std::time::Instant::now();
            let mut r = ideator_envs::run_recipe(env.as_ref(), &env.baseline(&scale)?, &ctx);
            r.seconds = started.elapsed().as_secs_f64();
            r
        }
    };
    // From here on the watchdog must not print a second result.
    let _printing = OUTPUT.lock().unwrap_or_else(|p| p.into_inner());
    if args.log {
        eprintln!("{}", result.log);
    }
    if args.json {
        let mut value = serde_json::json!({
            "status": result.status,
            "reward": result.reward,
            "metrics": result.metrics,
            "cause": result.cause,
            "message": result.message,
            "seconds": result.seconds,
            "changed": result.changed,
            "env": args.env,
            "scale": scale,
            "seed": args.seed,
            "work_dir": work_dir,
        });
        if !args.log {
            value["log_tail"] = serde_json::Value::String(last_lines(&result.log, 5));
        }
        println!("{}", serde_json::to_string(&value)?);
    } else {
        println!("work folder: {}", work_dir.display());
        match result.cause {
            None => println!("ok  reward {:.4}  ({:.1} s)  {}", result.reward, result.seconds, result.message),
            Some(cause) => println!("failed ({cause})  {}", result.message),
        }
        for (k, v) in &result.metrics {
            println!("  {k:<18} {v}");
        }
    }
    save_to_work_dir(&work_dir, &result);
    // Keep the lock until the process exits: the watchdog must never print a second result.
    std::mem::forget(_printing);
    Ok(())
}

/// Leaves the result and the full log in the work folder for inspection (best effort: a full disk must not turn
/// a finished run into a failure).
fn save_to_work_dir(dir: &std::path::Path, result: &ExecResult) {
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join("run.log"), &result.log);
    if let Ok(json) = serde_json::to_string_pretty(result) {
        let _ = std::fs::write(dir.join("result.json"), json + "\n");
    }
}

/// Held by whoever prints the result, so the watchdog and the normal path never both print.
static OUTPUT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Environments stop cooperatively at the deadline, but a step that hangs (or an evaluation that runs long) would
/// hold the backend's slot; past the limit plus a grace period the process reports a time-limit failure itself
/// and exits.
fn start_watchdog(limit: Duration, json: bool, work_dir: PathBuf) {
    let grace = Duration::from_secs(5).max(limit / 10);
    std::thread::spawn(move || {
        std::thread::sleep(limit + grace);
        let _printing = OUTPUT.lock().unwrap_or_else(|p| p.into_inner());
        let msg = format!(
            "the run did not stop within its time limit of {:.1} s (killed by the watchdog)",
            limit.as_secs_f64()
        );
        if json {
            let value = serde_json::json!({
                "status": "failed", "reward": 0.0, "metrics": {}, "cause": FailureCause::TimeLimit,
                "message": msg, "seconds": (limit + grace).as_secs_f64(), "work_dir": work_dir,
            });
            println!("{value}");
        } else {
            println!("failed (time_limit)  {msg}");
        }
        std::process::exit(0);
    });
}

/// The threads this run may use: `RAYON_NUM_THREADS` when set (the global `--threads` and `IDEATOR_THREADS`, which
/// backends set per slot, end up there), else `--threads`, where 0 means every core.
fn requested_threads(arg: usize) -> usize {
    let from_env = std::env::var("RAYON_NUM_THREADS").ok().and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0);
    let all = || std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    from_env.unwrap_or(if arg == 0 { all() } else { arg })
}

fn fresh_work_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!("ideator-exec-{}-{nanos}", std::process::id()))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
