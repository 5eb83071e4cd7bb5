//! The `command` environment: an external program implements and runs the idea.
//!
//! Protocol: the run's work folder receives `idea.md` (the idea as written), `task.md` (the task), `recipe.json`
//! (the validated knobs, when the config declares some) and `run.json` (scale, seed, time limit). The program and
//! its arguments come from the config; `{workdir}`, `{idea}`, `{task}`, `{recipe}`, `{seed}`, `{scale}` and
//! `{config_dir}` in the arguments are replaced by values, each argument staying one argv entry: no shell ever sees
//! the idea. The program runs in the work folder, in its own process group (killed as a whole at the time limit),
//! with stdout and stderr captured to files there (and killed when they exceed a cap, which also bounds the files). Its last stdout line is a
//! JSON result: `{"reward": 0.42, "metrics": {...}}` on success, or
//! `{"status": "failed", "cause": "non_finite_loss", "message": "..."}`. The work folder is kept for inspection.

use crate::environment::{EnvError, Environment, RunContext, ScaleInfo};
use crate::knobs::{clip, Knob, Schema};
use crate::recipe::Recipe;
use crate::result::{ExecResult, FailureCause};
use crate::sandbox;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// The TOML config of a command environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Shown by `env list` and in results.
    #[serde(default = "default_name")]
    pub name: String,
    /// The task as the ideator and the program read it.
    pub description: String,
    /// The program: a name looked up on PATH, or a path (relative paths are relative to the config's folder).
    pub program: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Time limit when the caller sets none.
    #[serde(default = "default_time_limit")]
    pub time_limit_secs: f64,
    /// Captured stdout + stderr beyond this many bytes kills the run.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
    #[serde(default = "default_scales")]
    pub scales: Vec<String>,
    /// Rewards outside this range are implausible.
    #[serde(default = "default_plausible")]
    pub plausible_reward: (f64, f64),
    /// An idea in the exact format, for the prompt.
    pub example_idea: String,
    /// Knobs the idea may set (validated before the program runs); none means free-form code changes.
    #[serde(default)]
    pub knobs: Vec<Knob>,
    /// Whether a result may be reused for the same idea text at the same seed (the execution cache). Off by
    /// default: an external program need not be deterministic. Turn it on when it is.
    #[serde(default)]
    pub cache: bool,
    /// The folder of the config file (set when loading; `{config_dir}` in args).
    #[serde(skip)]
    pub config_dir: PathBuf,
}

fn default_name() -> String {
    "command".into()
}
fn default_time_limit() -> f64 {
    3600.0
}
fn default_max_output() -> u64 {
    16 * 1024 * 1024
}
fn default_scales() -> Vec<String> {
    vec!["default".into()]
}
fn default_plausible() -> (f64, f64) {
    (f64::NEG_INFINITY, f64::INFINITY)
}

/// Most bytes of the output kept in the result's log.
const LOG_TAIL_BYTES: u64 = 32 * 1024;
const POLL: Duration = Duration::from_millis(20);

/// Reads an environment's TOML config file; returns it with the file's folder, absolute (programs run inside a
/// work folder, so paths relative to the config must not depend on the current directory).
///
/// Errors: the file cannot be read, is not a valid `kind` config, or its folder cannot be resolved.
pub(crate) fn read_env_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    kind: &str,
) -> Result<(T, PathBuf), EnvError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| EnvError::Io { context: format!("cannot read {}", path.display()), source })?;
    let cfg: T = toml::from_str(&text)
        .map_err(|e| EnvError::Config(format!("{} is not a valid {kind} environment config: {e}", path.display())))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = dir.canonicalize().map_err(|source| EnvError::Io {
        context: format!("cannot resolve the folder of {}", path.display()),
        source,
    })?;
    Ok((cfg, dir))
}

pub struct CommandEnv {
    cfg: CommandConfig,
    schema: Schema,
}

impl CommandEnv {
    pub fn from_file(path: &Path) -> Result<CommandEnv, EnvError> {
        let (mut cfg, dir) = read_env_config::<CommandConfig>(path, "command")?;
        cfg.config_dir = dir;
        CommandEnv::new(cfg)
    }

    pub fn new(cfg: CommandConfig) -> Result<CommandEnv, EnvError> {
        let schema = Schema::new(cfg.knobs.clone());
        schema.validate().map_err(|e| EnvError::Config(format!("command environment {}: {e}", cfg.name)))?;
        if cfg.scales.is_empty() {
            return Err(EnvError::Config("a command environment needs at least one scale".into()));
        }
        // Written so that NaN fails too; the upper bound keeps Duration::from_secs_f64 from panicking.
        if !(cfg.time_limit_secs > 0.0 && cfg.time_limit_secs <= 1e6) {
            return Err(EnvError::Config(format!(
                "command environment {}: time_limit_secs must be in (0, 1e6] seconds, got {}",
                cfg.name, cfg.time_limit_secs
            )));
        }
        Ok(CommandEnv { cfg, schema })
    }

    pub fn config(&self) -> &CommandConfig {
        &self.cfg
    }

    fn program_path(&self) -> PathBuf {
        let p = Path::new(&self.cfg.program);
        if p.is_relative() && self.cfg.program.contains('/') {
            self.cfg.config_dir.join(p)
        } else {
            p.to_path_buf()
        }
    }

    fn write_inputs(&self, recipe: &Recipe, ctx: &RunContext, limit: Duration) -> std::io::Result<()> {
        let dir = &ctx.work_dir;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("idea.md"), &recipe.idea)?;
        std::fs::write(dir.join("task.md"), self.cfg.description.trim().to_string() + "\n")?;
        if !self.schema.knobs.is_empty() {
            let json = serde_json::to_string_pretty(&recipe.values).expect("plain data");
            std::fs::write(dir.join("recipe.json"), json + "\n")?;
        }
        let run = serde_json::json!({
            "scale": ctx.scale, "seed": ctx.seed, "time_limit_secs": limit.as_secs_f64(),
            "changed": recipe.changed,
        });
        std::fs::write(dir.join("run.json"), serde_json::to_string_pretty(&run).expect("plain data") + "\n")
    }

    fn substitute(&self, arg: &str, ctx: &RunContext) -> String {
        let dir = &ctx.work_dir;
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        arg.replace("{workdir}", &path(dir.clone()))
            .replace("{idea}", &path(dir.join("idea.md")))
            .replace("{task}", &path(dir.join("task.md")))
            .replace("{recipe}", &path(dir.join("recipe.json")))
            .replace("{seed}", &ctx.seed.to_string())
            .replace("{scale}", &ctx.scale)
            .replace("{config_dir}", &path(self.cfg.config_dir.clone()))
    }
}

impl Environment for CommandEnv {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The whole idea text (the program reads all of it) plus the knobs, and only when the config says the
    /// program is deterministic (`cache = true`).
    fn cache_identity(&self, recipe: &Recipe) -> Option<String> {
        self.cfg
            .cache
            .then(|| format!("{}\n{}", serde_json::to_string(&recipe.values).unwrap_or_default(), recipe.idea))
    }

    fn description(&self) -> String {
        self.cfg.description.clone()
    }

    fn scales(&self) -> Vec<ScaleInfo> {
        self.cfg
            .scales
            .iter()
            .map(|s| ScaleInfo { name: s.clone(), doc: format!("as the program defines {s}") })
            .collect()
    }

    fn schema(&self, scale: &str) -> Result<Schema, EnvError> {
        self.check_scale(scale)?;
        Ok(self.schema.clone())
    }

    fn plausible_reward(&self, _scale: &str) -> (f64, f64) {
        self.cfg.plausible_reward
    }

    fn example_idea(&self) -> String {
        self.cfg.example_idea.clone()
    }

    fn run(&self, recipe: &Recipe, ctx: &RunContext) -> ExecResult {
        let limit = ctx.time_left().unwrap_or(Duration::from_secs_f64(self.cfg.time_limit_secs));
        if let Err(e) = self.write_inputs(recipe, ctx, limit) {
            return ExecResult::failed(
                FailureCause::Infrastructure,
                format!("cannot prepare the work folder {}: {e}", ctx.work_dir.display()),
            );
        }
        let stdout_path = ctx.work_dir.join("stdout.log");
        let stderr_path = ctx.work_dir.join("stderr.log");
        let files = File::create(&stdout_path).and_then(|o| Ok((o, File::create(&stderr_path)?)));
        let (stdout_file, stderr_file) = match files {
            Ok(f) => f,
            Err(e) => {
                return ExecResult::failed(FailureCause::Infrastructure, format!("cannot create log files: {e}"))
            }
        };
        let args: Vec<String> = self.cfg.args.iter().map(|a| self.substitute(a, ctx)).collect();
        let program = self.program_path();
        let mut cmd = Command::new(&program);
        // The program dies with the thread that started it (PR_SET_PDEATHSIG); the watcher below kills its whole
        // group when this process dies in any way (Ctrl-C, SIGKILL), so nothing outlives the executor.
        sandbox::die_with_parent(&mut cmd);
        let mut child = match cmd
            .args(&args)
            .current_dir(&ctx.work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("IDEATOR_WORKDIR", &ctx.work_dir)
            .env("IDEATOR_SEED", ctx.seed.to_string())
            .env("IDEATOR_SCALE", &ctx.scale)
            .process_group(0)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return ExecResult::failed(
                    FailureCause::Infrastructure,
                    format!("cannot start {}: {e}", program.display()),
                )
            }
        };
        let pgid = child.id() as i32;
        let _watch = sandbox::GroupWatch::start(child.id())
            .map_err(|e| tracing::warn!("cannot start the watcher of process group {pgid}: {e}"))
            .ok();
        // The output goes through pipes so that what reaches the disk is bounded too (the program writing straight
        // into the files used to leave logs many times the cap before the poll below noticed).
        let logs = OutputLogs::start(&mut child, stdout_file, stderr_file, self.cfg.max_output_bytes);
        let start = Instant::now();
        let mut stop: Option<(FailureCause, String)> = None;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(e) => {
                    stop = Some((FailureCause::Infrastructure, format!("cannot wait for the program: {e}")));
                    break None;
                }
            }
            if start.elapsed() >= limit {
                stop = Some((FailureCause::TimeLimit, format!("time limit of {:.1} s reached", limit.as_secs_f64())));
                break None;
            }
            if logs.bytes_seen() > self.cfg.max_output_bytes {
                stop = Some((
                    FailureCause::RuntimeError,
                    format!("the program wrote more than {} bytes of output", self.cfg.max_output_bytes),
                ));
                break None;
            }
            std::thread::sleep(POLL);
        };
        // The whole group goes, so grandchildren cannot outlive the run (also after a normal exit).
        kill_group(pgid);
        let status = status.or_else(|| child.wait().ok());
        logs.finish();
        let stdout_tail = read_tail(&stdout_path, LOG_TAIL_BYTES);
        let stderr_tail = read_tail(&stderr_path, LOG_TAIL_BYTES);
        let log = format!("--- stdout ---\n{stdout_tail}\n--- stderr ---\n{stderr_tail}");
        let mut metrics = BTreeMap::new();
        metrics.insert("program_seconds".into(), start.elapsed().as_secs_f64());
        if let Some((cause, msg)) = stop {
            return ExecResult::failed(cause, msg).with_metrics(metrics).with_log(log);
        }
        let exit_ok = status.is_some_and(|s| s.success());
        let last_line = stdout_tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        let result = match parse_result(last_line) {
            Ok(mut parsed) => {
                if parsed.is_ok() && !exit_ok {
                    ExecResult::failed(
                        FailureCause::RuntimeError,
                        format!("the program printed a result but exited with {}", describe_status(status)),
                    )
                } else {
                    metrics.append(&mut parsed.metrics);
                    parsed
                }
            }
            Err(e) if !exit_ok => ExecResult::failed(
                FailureCause::RuntimeError,
                format!(
                    "the program exited with {} ({e}); last stderr line: {}",
                    describe_status(status),
                    last_stderr_line(&stderr_tail)
                ),
            ),
            Err(e) => ExecResult::failed(FailureCause::RuntimeError, e),
        };
        result.with_metrics(metrics).with_log(log)
    }
}

pub(crate) fn describe_status(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "an unknown status".into(),
        },
        None => "an unknown status".into(),
    }
}

pub(crate) fn last_stderr_line(stderr: &str) -> String {
    clip(stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no stderr)"), 300)
}

/// The program's JSON result line.
#[derive(Deserialize)]
struct ProgramResult {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reward: Option<f64>,
    #[serde(default)]
    metrics: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    cause: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

pub(crate) fn parse_result(line: &str) -> Result<ExecResult, String> {
    let parsed: ProgramResult = serde_json::from_str(line.trim())
        .map_err(|e| format!("the last line of stdout is not a JSON result ({e}): {:?}", clip(line.trim(), 200)))?;
    let metrics: BTreeMap<String, f64> =
        parsed.metrics.iter().filter_map(|(k, v)| v.as_f64().map(|x| (clip(k, 64), x))).collect();
    let message = parsed.message.map(|m| clip(&m, 2000)).unwrap_or_default();
    if parsed.status.as_deref() == Some("failed") {
        let cause = parsed.cause.as_deref().and_then(FailureCause::parse).unwrap_or(FailureCause::RuntimeError);
        return Ok(ExecResult::failed(cause, message).with_metrics(metrics));
    }
    if let Some(status) = parsed.status.as_deref().filter(|s| *s != "ok") {
        return Err(format!("unknown status {:?} in the result (use \"ok\" or \"failed\")", clip(status, 40)));
    }
    match parsed.reward {
        Some(r) => Ok(ExecResult::ok(r, metrics, message)),
        None => Err("the JSON result has no \"reward\"".into()),
    }
}

/// Copies the program's stdout and stderr into their log files, keeping at most `cap` bytes on disk for the two
/// together, and counts every byte the program wrote (the run is stopped once that count exceeds the cap).
struct OutputLogs {
    seen: Arc<AtomicU64>,
    done: mpsc::Receiver<()>,
    copiers: usize,
}

/// How long `finish` waits for the pipes to close after the program's group was killed (a process that left the
/// group could hold them open forever; its output is then lost, not waited for).
const LOG_DRAIN: Duration = Duration::from_secs(2);

impl OutputLogs {
    fn start(child: &mut std::process::Child, stdout: File, stderr: File, cap: u64) -> OutputLogs {
        let seen = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (tx, done) = mpsc::channel();
        let mut copiers = 0;
        let pipes: [(Option<Box<dyn Read + Send>>, File); 2] = [
            (child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>), stdout),
            (child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>), stderr),
        ];
        for (pipe, file) in pipes {
            let Some(pipe) = pipe else { continue };
            let (seen, written, tx) = (seen.clone(), written.clone(), tx.clone());
            copiers += 1;
            std::thread::spawn(move || {
                copy_bounded(pipe, file, cap, &seen, &written);
                let _ = tx.send(());
            });
        }
        OutputLogs { seen, done, copiers }
    }

    fn bytes_seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Waits (briefly) until both pipes are drained, so the log files hold everything kept.
    fn finish(self) {
        let deadline = Instant::now() + LOG_DRAIN;
        for _ in 0..self.copiers {
            if self.done.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
                return;
            }
        }
    }
}

/// Reads `pipe` to its end; writes to `file` only while the bytes written by all copiers stay within `cap`
/// (reading on keeps the program from blocking on a full pipe until it is killed).
fn copy_bounded(mut pipe: impl Read, mut file: File, cap: u64, seen: &AtomicU64, written: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        seen.fetch_add(n as u64, Ordering::Relaxed);
        // Reserve room for this chunk; the part beyond the cap is dropped.
        let before = written.fetch_add(n as u64, Ordering::Relaxed);
        let keep = cap.saturating_sub(before).min(n as u64) as usize;
        if keep > 0 {
            let _ = file.write_all(&buf[..keep]);
        }
    }
}

/// The last `max` bytes of a file as (lossy) text.
pub(crate) fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max {
        let _ = f.seek(SeekFrom::Start(len - max));
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// SIGKILL to a whole process group (ignores a group that is already gone).
fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}
