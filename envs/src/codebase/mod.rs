//! The `codebase` environment: an idea is a code change to a real program.
//!
//! A TOML config names a baseline folder, the command that runs it, the files an idea may edit (a whitelist), the
//! files it must never change (evaluation code and data: the reward-hacking guard), a time limit and resource
//! limits. Each execution copies the baseline into `WORK_DIR/code` (the baseline never changes), applies the idea,
//! runs the command there inside the [`crate::sandbox`], checks the protected files by SHA-256, and reads the
//! reward from the last JSON line of stdout, as the `command` environment does:
//! `{"reward": 0.42, "metrics": {...}}` or `{"status": "failed", "cause": "...", "message": "..."}`.
//!
//! Implementation (`implementation = "direct"`): the idea's `[Code Changes]` holds a unified diff against the
//! editable files, applied with `diffy` (see [`patch`]). A diff that names a protected file fails as
//! `implausible`; one that names any other non-editable file, or does not apply, fails as `implementation`.
//! A protected file changed by the run itself also fails as `implausible`.
//!
//! The work folder keeps `idea.md`, `patch.diff` (the applied diff), `code/` (the changed copy), `stdout.log` and
//! `stderr.log`. Metrics: `applied` (1 when the diff applied), `ran` (1 when the program printed a successful
//! result), `diff_files`, `diff_lines_added`, `diff_lines_removed`, `program_seconds`. The result's `changed`
//! lists the touched code units (`train.py:fit`, `train.py:LR`): the idea's category for diagnostics.

pub mod implementer;
pub mod patch;

use crate::command::{describe_status, last_stderr_line, parse_result, read_tail};
use crate::environment::{EnvError, Environment, RunContext, ScaleInfo};
use crate::idea::split_sections;
use crate::knobs::{clip, Schema};
use crate::recipe::Recipe;
use crate::result::{ExecResult, FailureCause};
use crate::sandbox::{self, Limits, Policy};
use patch::{apply_diff, extract_diff, AppliedDiff, PatchError, Whitelist};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The TOML config of a codebase environment (paths relative to the config file's folder).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodebaseConfig {
    #[serde(default = "default_name")]
    pub name: String,
    /// The task as the ideator reads it (the editable files and the diff format are appended).
    pub description: String,
    /// The folder holding the baseline program.
    pub baseline: PathBuf,
    /// The program, run inside the copy: a name looked up on PATH, or a path relative to the copy.
    pub program: String,
    /// Its arguments; `{code}`, `{workdir}`, `{seed}` and `{scale}` are replaced, each staying one argv entry.
    #[serde(default)]
    pub args: Vec<String>,
    /// Files (relative to the baseline folder) an idea may change; an entry ending in `/` covers a folder.
    pub editable: Vec<String>,
    /// Files an idea and its run must never change (checked by hash after the run).
    #[serde(default)]
    pub protected: Vec<String>,
    /// Wall-clock limit of a run when the caller sets none, seconds.
    #[serde(default = "default_time_limit")]
    pub time_limit_secs: f64,
    /// CPU-time limit of the program, seconds (default: the wall-clock limit, rounded up, plus 1).
    #[serde(default)]
    pub cpu_time_limit_secs: Option<u64>,
    /// Address-space limit of the program, MiB; 0 turns it off (needed for CUDA programs).
    #[serde(default = "default_memory_mb")]
    pub memory_limit_mb: u64,
    /// Largest file the program may write (its stdout and stderr logs included), bytes.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
    /// Run the program in a new network namespace (effective when the executor runs as root).
    #[serde(default = "default_true")]
    pub isolate_network: bool,
    /// Environment variables passed to the program besides PATH, HOME and the locale.
    #[serde(default)]
    pub pass_env: Vec<String>,
    #[serde(default = "default_scales")]
    pub scales: Vec<String>,
    /// Rewards outside this range are implausible.
    #[serde(default = "default_plausible")]
    pub plausible_reward: (f64, f64),
    /// An idea in the exact format (a diff against the baseline), for the prompt.
    pub example_idea: String,
    /// How an idea becomes code: `direct` (the idea holds a unified diff) or `implementer` (a chat model writes
    /// the diff from the idea's description).
    #[serde(default)]
    pub implementation: Implementation,
    /// The chat model of `implementation = "implementer"`.
    #[serde(default)]
    pub implementer: Option<implementer::ImplementerConfig>,
    /// Whether a result may be reused for the same idea text at the same seed (the execution cache). Off by
    /// default: the program need not be deterministic. Never used in `implementer` mode (a chat model writes the
    /// diff anew each time).
    #[serde(default)]
    pub cache: bool,
    #[serde(skip)]
    pub config_dir: PathBuf,
}

/// How an idea's `[Code Changes]` becomes code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Implementation {
    /// `[Code Changes]` holds a unified diff, applied as is.
    #[default]
    Direct,
    /// `[Code Changes]` describes the change; a chat model writes (and repairs) the diff.
    Implementer,
}

fn default_name() -> String {
    "codebase".into()
}
fn default_time_limit() -> f64 {
    600.0
}
fn default_memory_mb() -> u64 {
    4096
}
fn default_max_output() -> u64 {
    16 * 1024 * 1024
}
fn default_true() -> bool {
    true
}
fn default_scales() -> Vec<String> {
    vec!["default".into()]
}
fn default_plausible() -> (f64, f64) {
    (f64::NEG_INFINITY, f64::INFINITY)
}

/// Largest editable file shown in the prompt, bytes.
const MAX_PROMPT_FILE_BYTES: usize = 16 * 1024;
/// Most bytes of each output stream kept in the result's log.
const LOG_TAIL_BYTES: u64 = 32 * 1024;

/// The diff rules appended to the task (and told to an implementer model).
pub(crate) const DIFF_FORMAT: &str = "Answer with exactly one idea in this format:\n\
[Experiment]\n\
One or two sentences: what you change and why it should improve the result.\n\
[Code Changes]\n\
A unified diff against the editable files above: `--- a/FILE` and `+++ b/FILE` headers, then hunks starting with \
`@@ -OLD_START,OLD_COUNT +NEW_START,NEW_COUNT @@`; context lines start with a space, removed lines with `-`, added \
lines with `+`, copied exactly from the current file. Change only the editable files.\n\
[End]";

/// The idea format when an implementer model writes the diff.
pub(crate) const DESCRIBED_FORMAT: &str = "Answer with exactly one idea in this format:\n\
[Experiment]\n\
One or two sentences: what you change and why it should improve the result.\n\
[Code Changes]\n\
A precise description of the change to the editable files above (which function, which lines, the new code); an \
engineer implements it as written.\n\
[End]";

pub struct CodebaseEnv {
    cfg: CodebaseConfig,
    whitelist: Whitelist,
}

impl CodebaseEnv {
    /// Reads and validates a config file.
    ///
    /// Errors: the file cannot be read or parsed, or [`CodebaseEnv::new`] rejects it.
    pub fn from_file(path: &Path) -> Result<CodebaseEnv, EnvError> {
        let (mut cfg, dir) = crate::command::read_env_config::<CodebaseConfig>(path, "codebase")?;
        cfg.config_dir = dir;
        CodebaseEnv::new(cfg)
    }

    /// Validates a config: the baseline folder exists, every editable and protected path is relative, inside it
    /// and exists (folders may be empty), no path is both, and the limits are positive.
    pub fn new(cfg: CodebaseConfig) -> Result<CodebaseEnv, EnvError> {
        let bad = |msg: String| Err(EnvError::Config(format!("codebase environment {}: {msg}", cfg.name)));
        let root = cfg.config_dir.join(&cfg.baseline);
        if !root.is_dir() {
            return bad(format!("the baseline folder {} does not exist; set `baseline` to it", root.display()));
        }
        if cfg.editable.is_empty() {
            return bad("`editable` is empty: list the files an idea may change".into());
        }
        for p in cfg.editable.iter().chain(&cfg.protected) {
            let escapes = Path::new(p).components().any(|c| !matches!(c, Component::Normal(_)));
            if p.is_empty() || escapes {
                return bad(format!("{p:?} must be a plain path relative to the baseline folder"));
            }
            if !p.ends_with('/') && !root.join(p).is_file() {
                return bad(format!("{p} does not exist in {}", root.display()));
            }
        }
        if let Some(p) = cfg.editable.iter().find(|p| cfg.protected.contains(p)) {
            return bad(format!("{p} is both editable and protected; pick one"));
        }
        if cfg.implementation == Implementation::Implementer && cfg.implementer.is_none() {
            return bad("implementation = \"implementer\" needs an [implementer] table (base_url, model)".into());
        }
        if cfg.scales.is_empty() {
            return bad("`scales` is empty; list at least one".into());
        }
        if !(cfg.time_limit_secs.is_finite() && cfg.time_limit_secs > 0.0) {
            return bad("time_limit_secs must be a positive number".into());
        }
        let whitelist = Whitelist { editable: cfg.editable.clone(), protected: cfg.protected.clone() };
        Ok(CodebaseEnv { cfg, whitelist })
    }

    pub fn config(&self) -> &CodebaseConfig {
        &self.cfg
    }

    fn baseline_dir(&self) -> PathBuf {
        self.cfg.config_dir.join(&self.cfg.baseline)
    }

    /// The editable files with their current text, as shown to the ideator.
    fn editable_listing(&self) -> String {
        let root = self.baseline_dir();
        let mut out = String::new();
        for p in self.cfg.editable.iter().filter(|p| !p.ends_with('/')) {
            let text = std::fs::read_to_string(root.join(p)).unwrap_or_default();
            out.push_str(&format!("--- {p} ---\n{}\n", clip(&text, MAX_PROMPT_FILE_BYTES)));
        }
        out
    }

    fn policy(&self, ctx: &RunContext, limit: Duration) -> Policy {
        let mb = self.cfg.memory_limit_mb;
        let cpu = self.cfg.cpu_time_limit_secs.unwrap_or(limit.as_secs_f64().ceil() as u64 + 1);
        let mut set_env = BTreeMap::new();
        set_env.insert("IDEATOR_SEED".to_string(), ctx.seed.to_string());
        set_env.insert("IDEATOR_SCALE".to_string(), ctx.scale.clone());
        set_env.insert("IDEATOR_WORKDIR".to_string(), ctx.work_dir.to_string_lossy().into_owned());
        Policy {
            limits: Limits {
                address_space_bytes: (mb > 0).then_some(mb * 1024 * 1024),
                cpu_seconds: Some(cpu),
                file_size_bytes: Some(self.cfg.max_output_bytes),
            },
            isolate_network: self.cfg.isolate_network,
            pass_env: self.cfg.pass_env.clone(),
            set_env,
        }
    }

    fn substitute(&self, arg: &str, ctx: &RunContext, code: &Path) -> String {
        arg.replace("{code}", &code.to_string_lossy())
            .replace("{workdir}", &ctx.work_dir.to_string_lossy())
            .replace("{seed}", &ctx.seed.to_string())
            .replace("{scale}", &ctx.scale)
    }

    /// Direct implementation: the idea's `[Code Changes]` is the diff.
    fn implement_direct(&self, idea: &str, ctx: &RunContext, limit: Duration) -> ExecResult {
        let diff = split_sections(idea)
            .map_err(|e| ExecResult::failed(FailureCause::Implementation, e))
            .and_then(|s| extract_diff(&s.code_changes).ok_or_else(|| patch_failure(&PatchError::NoDiff)));
        match diff {
            Ok(diff) => self.try_diff(Some(&diff), ctx, limit).unwrap_or_else(|f| f),
            Err(failure) => not_applied(failure),
        }
    }

    /// Implementer: a chat model writes the diff and repairs it (see [`implementer`]).
    fn implement_with_model(&self, idea: &str, ctx: &RunContext, limit: Duration) -> ExecResult {
        let Some(model) = &self.cfg.implementer else {
            return ExecResult::failed(
                FailureCause::Infrastructure,
                "implementation = \"implementer\" needs [implementer]",
            );
        };
        let log_dir = ctx.work_dir.join("implementer");
        if let Err(e) = std::fs::create_dir_all(&log_dir) {
            return infrastructure(&ctx.work_dir, e);
        }
        let mut messages = implementer::first_request(
            self.cfg.description.trim(),
            idea,
            &self.editable_listing(),
            &self.cfg.editable,
        );
        let mut last = ExecResult::failed(FailureCause::Implementation, "the implementer was never asked");
        let mut attempts = 0usize;
        for index in 0..=model.max_repairs {
            attempts = index + 1;
            let answer = match model.complete(&messages) {
                Ok(a) => a,
                Err(e) => {
                    last = ExecResult::failed(FailureCause::Infrastructure, e.to_string());
                    break;
                }
            };
            let diff = implementer::diff_in_answer(&answer);
            let outcome = match &diff {
                Some(d) => self.try_diff(Some(d), ctx, ctx.time_left().unwrap_or(limit)),
                None => Err(not_applied(patch_failure(&PatchError::NoDiff))),
            };
            let (result, error) = match outcome {
                Ok(r) if r.cause == Some(FailureCause::RuntimeError) => {
                    let error = format!("the diff applied but the program crashed: {}", r.message);
                    (r, Some(error))
                }
                Ok(r) => (r, None),
                Err(f) => {
                    let error = format!("the diff was rejected: {}", f.message);
                    (f, Some(error))
                }
            };
            let record = implementer::Attempt {
                index,
                messages: messages.clone(),
                answer: answer.clone(),
                diff,
                outcome: error.clone().unwrap_or_else(|| format!("applied and ran: {}", result.message)),
            };
            let json = serde_json::to_string_pretty(&record).expect("plain data");
            let _ = std::fs::write(log_dir.join(format!("attempt-{index}.json")), json + "\n");
            last = result;
            let Some(error) = error else { break };
            messages.push(implementer::ChatMessage::new("assistant", answer));
            messages.push(implementer::repair_request(&error));
        }
        if last.metrics.get("applied") == Some(&0.0) && last.cause != Some(FailureCause::Infrastructure) {
            last.message =
                format!("no diff of the implementer applied in {attempts} attempts; last: {}", last.message);
        }
        last.metrics.insert("implementer_attempts".to_string(), attempts as f64);
        last.metrics.insert("repair_attempts".to_string(), attempts.saturating_sub(1) as f64);
        last
    }

    /// Copies the baseline, applies `diff` (none: the baseline runs), runs the program and checks the protected
    /// files. `Err` when the diff did not apply (nothing ran).
    fn try_diff(&self, diff: Option<&str>, ctx: &RunContext, limit: Duration) -> Result<ExecResult, ExecResult> {
        let code = fresh_copy(&self.baseline_dir(), &ctx.work_dir).map_err(|e| infrastructure(&ctx.work_dir, e))?;
        let before = hash_protected(&code, &self.cfg.protected);
        let mut metrics = BTreeMap::new();
        let mut applied = AppliedDiff::default();
        if let Some(diff) = diff {
            let _ = std::fs::write(ctx.work_dir.join("patch.diff"), diff);
            applied = apply_diff(diff, &code, &self.whitelist).map_err(|e| not_applied(patch_failure(&e)))?;
            metrics.insert("diff_files".to_string(), applied.files.len() as f64);
            metrics.insert("diff_lines_added".to_string(), applied.lines_added as f64);
            metrics.insert("diff_lines_removed".to_string(), applied.lines_removed as f64);
        }
        metrics.insert("applied".to_string(), 1.0);
        let mut result = self.run_program(&code, ctx, limit);
        metrics.insert("ran".to_string(), if result.is_ok() { 1.0 } else { 0.0 });
        let after = hash_protected(&code, &self.cfg.protected);
        let changed: Vec<&str> =
            before.iter().filter(|(p, h)| after.get(*p) != Some(h)).map(|(p, _)| p.as_str()).collect();
        if !changed.is_empty() {
            result = result.into_failure(
                FailureCause::Implausible,
                format!("the run changed protected files ({}); not rewarded", changed.join(", ")),
            );
        }
        result.metrics.append(&mut metrics);
        result.changed = applied.units.into_iter().collect();
        Ok(result)
    }

    /// Runs the program in the copy and reads its result.
    fn run_program(&self, code: &Path, ctx: &RunContext, limit: Duration) -> ExecResult {
        let program = if self.cfg.program.contains('/') {
            code.join(&self.cfg.program)
        } else {
            PathBuf::from(&self.cfg.program)
        };
        let args: Vec<String> = self.cfg.args.iter().map(|a| self.substitute(a, ctx, code)).collect();
        let stdout_path = ctx.work_dir.join("stdout.log");
        let stderr_path = ctx.work_dir.join("stderr.log");
        let policy = self.policy(ctx, limit);
        let ran = match sandbox::run(&program, &args, code, &policy, limit, &stdout_path, &stderr_path) {
            Ok(r) => r,
            Err(e) => {
                return ExecResult::failed(FailureCause::Infrastructure, format!("cannot run {program:?}: {e}"))
            }
        };
        let stdout_tail = read_tail(&stdout_path, LOG_TAIL_BYTES);
        let stderr_tail = read_tail(&stderr_path, LOG_TAIL_BYTES);
        let log = format!("--- stdout ---\n{stdout_tail}\n--- stderr ---\n{stderr_tail}");
        let mut metrics = BTreeMap::new();
        metrics.insert("program_seconds".to_string(), ran.seconds);
        let result = if ran.timed_out {
            ExecResult::failed(FailureCause::TimeLimit, format!("time limit of {:.1} s reached", limit.as_secs_f64()))
        } else {
            classify_exit(ran.status, &stdout_tail, &stderr_tail, &policy.limits)
        };
        let mut result = result.with_log(log);
        result.metrics.append(&mut metrics);
        result
    }
}

/// The result of a finished program: a resource limit it hit, a crash, or its JSON result line.
fn classify_exit(status: std::process::ExitStatus, stdout: &str, stderr: &str, limits: &Limits) -> ExecResult {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGXCPU) => {
            let secs = limits.cpu_seconds.unwrap_or(0);
            return ExecResult::failed(FailureCause::TimeLimit, format!("CPU time limit of {secs} s reached"));
        }
        Some(libc::SIGXFSZ) => {
            let bytes = limits.file_size_bytes.unwrap_or(0);
            return ExecResult::failed(
                FailureCause::RuntimeError,
                format!("the program wrote a file (or output) larger than {bytes} bytes"),
            );
        }
        _ => {}
    }
    if !status.success() && looks_out_of_memory(stderr) {
        let limit = limits.address_space_bytes.map(|b| format!(" (limit {} MiB)", b / (1024 * 1024)));
        return ExecResult::failed(
            FailureCause::OutOfMemory,
            format!(
                "the program ran out of memory{}; last stderr line: {}",
                limit.unwrap_or_default(),
                last_stderr_line(stderr)
            ),
        );
    }
    let last_line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    match parse_result(last_line) {
        Ok(parsed) if parsed.is_ok() && !status.success() => ExecResult::failed(
            FailureCause::RuntimeError,
            format!("the program printed a result but exited with {}", describe_status(Some(status))),
        ),
        Ok(parsed) => parsed,
        Err(e) if !status.success() => ExecResult::failed(
            FailureCause::RuntimeError,
            format!(
                "the program exited with {} ({e}); last stderr line: {}",
                describe_status(Some(status)),
                last_stderr_line(stderr)
            ),
        ),
        Err(e) => ExecResult::failed(FailureCause::RuntimeError, e),
    }
}

/// Allocation failures as Python, C, C++ and Rust report them (the address-space limit makes `malloc` fail
/// rather than the kernel's OOM killer strike).
fn looks_out_of_memory(stderr: &str) -> bool {
    let tail: String = stderr.lines().rev().take(20).collect::<Vec<_>>().join("\n");
    ["MemoryError", "Cannot allocate memory", "std::bad_alloc", "memory allocation of", "out of memory"]
        .iter()
        .any(|m| tail.contains(m))
}

/// A failure before anything ran, marked `applied = 0`.
fn not_applied(mut failure: ExecResult) -> ExecResult {
    failure.metrics.insert("applied".to_string(), 0.0);
    failure
}

fn patch_failure(e: &PatchError) -> ExecResult {
    let cause = if e.is_protected() { FailureCause::Implausible } else { FailureCause::Implementation };
    ExecResult::failed(cause, e.to_string())
}

/// SHA-256 of each protected file (a folder entry covers every file under it), keyed by relative path.
fn hash_protected(root: &Path, protected: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in protected {
        let path = root.join(p);
        let files = if path.is_dir() { files_under(&path) } else { vec![path] };
        for f in files {
            let rel = f.strip_prefix(root).unwrap_or(&f).to_string_lossy().into_owned();
            let digest = match std::fs::read(&f) {
                Ok(bytes) => format!("{:x}", Sha256::digest(&bytes)),
                Err(_) => "missing".to_string(),
            };
            out.insert(rel, digest);
        }
    }
    out
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&p)),
            Ok(_) => out.push(p),
            Err(_) => {}
        }
    }
    out.sort();
    out
}

/// Copies a folder recursively (symbolic links are copied as links, so a link cannot smuggle outside files in).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// A fresh copy of the baseline at `WORK_DIR/code` (an older copy there is removed first).
fn fresh_copy(baseline: &Path, work_dir: &Path) -> std::io::Result<PathBuf> {
    let code = work_dir.join("code");
    if code.exists() {
        std::fs::remove_dir_all(&code)?;
    }
    copy_dir(baseline, &code)?;
    Ok(code)
}

impl Environment for CodebaseEnv {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The idea's whole text (its diff is what runs), and only for a deterministic program (`cache = true`) whose
    /// ideas are applied directly.
    fn cache_identity(&self, recipe: &Recipe) -> Option<String> {
        (self.cfg.cache && self.cfg.implementation == Implementation::Direct).then(|| recipe.idea.clone())
    }

    fn description(&self) -> String {
        format!(
            "{}\n\nEditable files (an idea may change only these; protected: {}):\n\n{}",
            self.cfg.description.trim(),
            if self.cfg.protected.is_empty() { "none".to_string() } else { self.cfg.protected.join(", ") },
            self.editable_listing()
        )
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
        Ok(Schema::new(Vec::new()))
    }

    fn plausible_reward(&self, _scale: &str) -> (f64, f64) {
        self.cfg.plausible_reward
    }

    fn example_idea(&self) -> String {
        self.cfg.example_idea.clone()
    }

    /// The code units the idea's diff touches (`train.py:fit`), read against the baseline without running it;
    /// `None` when the diff does not apply, and always with an implementer (its diff is not known in advance).
    fn categorize(&self, idea: &str, _scale: &str) -> Option<Vec<String>> {
        if self.cfg.implementation != Implementation::Direct {
            return None;
        }
        let diff = extract_diff(&split_sections(idea).ok()?.code_changes)?;
        let summary = patch::diff_summary(&diff, &self.baseline_dir(), &self.whitelist).ok()?;
        Some(summary.units.into_iter().collect())
    }

    fn not_implemented(&self, failure: ExecResult) -> ExecResult {
        not_applied(failure)
    }

    fn idea_format(&self) -> Option<String> {
        Some(match self.cfg.implementation {
            Implementation::Direct => DIFF_FORMAT.to_string(),
            Implementation::Implementer => DESCRIBED_FORMAT.to_string(),
        })
    }

    fn run(&self, recipe: &Recipe, ctx: &RunContext) -> ExecResult {
        let limit = ctx.time_left().unwrap_or(Duration::from_secs_f64(self.cfg.time_limit_secs));
        let prepared = std::fs::create_dir_all(&ctx.work_dir)
            .and_then(|_| std::fs::write(ctx.work_dir.join("idea.md"), &recipe.idea));
        if let Err(e) = prepared {
            return infrastructure(&ctx.work_dir, e);
        }
        if recipe.idea.trim().is_empty() {
            return self.try_diff(None, ctx, limit).unwrap_or_else(|f| f);
        }
        match self.cfg.implementation {
            Implementation::Direct => self.implement_direct(&recipe.idea, ctx, limit),
            Implementation::Implementer => self.implement_with_model(&recipe.idea, ctx, limit),
        }
    }
}

fn infrastructure(work_dir: &Path, e: std::io::Error) -> ExecResult {
    ExecResult::failed(
        FailureCause::Infrastructure,
        format!("cannot prepare the work folder {}: {e}", work_dir.display()),
    )
}
