//! The Slurm backend: one `sbatch` job per run. The job script runs the program in the run's folder with stdout
//! and stderr captured there and writes its exit code last, so the result is read from files whatever Slurm's
//! accounting keeps. Job states come from `squeue --states=all` (which still lists recently ended jobs), then
//! `sacct` when accounting is configured; a job that vanished without leaving its exit code is an infrastructure
//! failure. Runs past their time limit (counted from when the job is first seen running) are cancelled and scored
//! as timeouts; `--time` gives Slurm a hard stop a minute later. Jobs survive a crash of the trainer and are
//! re-attached by job id, or found by their unique job name if the crash fell between `sbatch` and recording
//! the id.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{crashed, result_in, shell_quote, timed_out, Backend, BackendError, Finished, Outcome, RunSpec};
use crate::result::{ExecResult, FailureCause};

/// `[backend]` settings of the Slurm backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// Most jobs queued or running at once.
    pub max_jobs: usize,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// `--gpus-per-task` (0: none).
    pub gpus_per_run: u32,
    /// `--cpus-per-task`; also the run's `IDEATOR_THREADS`.
    pub cpus_per_run: u32,
    /// `--mem` (e.g. "16G").
    pub mem: Option<String>,
    /// More `sbatch` arguments, verbatim (e.g. ["--constraint=a100"]).
    pub extra_args: Vec<String>,
    /// Seconds between state queries.
    pub poll_interval_s: f64,
    /// Seconds the controller may stay unreachable before running jobs count as lost (and are retried).
    pub unreachable_timeout_s: f64,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            max_jobs: 8,
            partition: None,
            account: None,
            qos: None,
            gpus_per_run: 0,
            cpus_per_run: 1,
            mem: None,
            extra_args: vec![],
            poll_interval_s: 5.0,
            unreachable_timeout_s: 600.0,
        }
    }
}

struct Job {
    spec: RunSpec,
    job_id: String,
    /// When the job was first seen running (time limits count from there).
    started: Option<Instant>,
}

pub struct SlurmBackend {
    cfg: SlurmConfig,
    jobs: Vec<Job>,
    last_query: Option<Instant>,
    last_success: Instant,
}

/// What a job's state means for us.
enum State {
    Active { running: bool },
    Done(Outcome),
}

fn exit_code_file(spec: &RunSpec) -> std::path::PathBuf {
    spec.work_dir.join("exit_code")
}

fn run(cmd: &str, args: &[String]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said = if stderr.trim().is_empty() { String::from_utf8_lossy(&out.stdout) } else { stderr };
        Err(format!("{cmd} failed ({}): {}", out.status, said.trim()))
    }
}

impl SlurmBackend {
    pub fn new(cfg: &SlurmConfig) -> Result<SlurmBackend, BackendError> {
        if cfg.max_jobs == 0 || cfg.cpus_per_run == 0 {
            return Err(BackendError::Config("backend.max_jobs and backend.cpus_per_run must be at least 1".into()));
        }
        // Written so that NaN fails too; the upper bound keeps the poll loop's durations finite.
        if !(cfg.poll_interval_s > 0.0 && cfg.poll_interval_s <= 1e6) {
            return Err(BackendError::Config(format!(
                "backend.poll_interval_s must be in (0, 1e6] seconds, got {}",
                cfg.poll_interval_s
            )));
        }
        Ok(SlurmBackend { cfg: cfg.clone(), jobs: vec![], last_query: None, last_success: Instant::now() })
    }

    /// Whether `sbatch` and a reachable controller exist (`scontrol ping`).
    pub fn available() -> Result<(), String> {
        let out = run("scontrol", &["ping".into()])?;
        if out.contains("UP") {
            Ok(())
        } else {
            Err(format!("scontrol ping: {}", out.trim()))
        }
    }

    fn script(&self, spec: &RunSpec) -> String {
        let mut line = shell_quote(&spec.program.display().to_string());
        for a in &spec.args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        let mut s = String::from("#!/bin/sh\n# Written by ideator: one execution.\n");
        // A cancelled job (SIGTERM) must not look like a run that ended by itself: no exit code file then.
        s.push_str("trap 'exit 143' TERM INT\n");
        s.push_str(&format!("cd {} || exit 97\n", shell_quote(&spec.work_dir.display().to_string())));
        for (k, v) in &spec.env {
            s.push_str(&format!("export {k}={}\n", shell_quote(v)));
        }
        s.push_str(&format!("export IDEATOR_THREADS={}\n", self.cfg.cpus_per_run));
        s.push_str(&format!("{line} > stdout.txt 2> stderr.txt\n"));
        s.push_str("code=$?\necho $code > exit_code.tmp && mv exit_code.tmp exit_code\nexit $code\n");
        s
    }

    fn sbatch_args(&self, spec: &RunSpec, script: &std::path::Path) -> Vec<String> {
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name={}", spec.key),
            format!("--chdir={}", spec.work_dir.display()),
            format!("--output={}", spec.work_dir.join("slurm-%j.out").display()),
            "--ntasks=1".into(),
            format!("--cpus-per-task={}", self.cfg.cpus_per_run),
        ];
        if let Some(limit) = spec.time_limit {
            // Slurm counts whole minutes; our own limit (seconds) stops the run first.
            a.push(format!("--time={}", (limit.as_secs_f64() / 60.0).ceil() as u64 + 1));
        }
        if let Some(p) = &self.cfg.partition {
            a.push(format!("--partition={p}"));
        }
        if let Some(p) = &self.cfg.account {
            a.push(format!("--account={p}"));
        }
        if let Some(p) = &self.cfg.qos {
            a.push(format!("--qos={p}"));
        }
        if self.cfg.gpus_per_run > 0 {
            a.push(format!("--gpus-per-task={}", self.cfg.gpus_per_run));
        }
        if let Some(m) = &self.cfg.mem {
            a.push(format!("--mem={m}"));
        }
        a.extend(self.cfg.extra_args.iter().cloned());
        a.push(script.display().to_string());
        a
    }

    /// States of the given job ids: from squeue (recently ended jobs included), then sacct for the rest.
    fn query(&self, ids: &[String]) -> Result<HashMap<String, String>, String> {
        let mut states = HashMap::new();
        if ids.is_empty() {
            return Ok(states);
        }
        let out = run("squeue", &["-h".into(), "--states=all".into(), "-o".into(), "%i|%T".into()])?;
        for line in out.lines() {
            if let Some((id, st)) = line.trim().split_once('|') {
                if ids.iter().any(|i| i == id) {
                    states.insert(id.to_string(), st.to_string());
                }
            }
        }
        let missing: Vec<&String> = ids.iter().filter(|i| !states.contains_key(*i)).collect();
        if !missing.is_empty() {
            let list = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
            // sacct fails without accounting storage: then the files decide.
            if let Ok(out) = run(
                "sacct",
                &["-n".into(), "-P".into(), "-X".into(), "-o".into(), "JobID,State".into(), "-j".into(), list],
            ) {
                for line in out.lines() {
                    if let Some((id, st)) = line.trim().split_once('|') {
                        // "CANCELLED by 0" -> "CANCELLED"
                        let st = st.split_whitespace().next().unwrap_or("").to_string();
                        states.insert(id.to_string(), st);
                    }
                }
            }
        }
        Ok(states)
    }

    fn interpret(job: &Job, state: Option<&str>) -> State {
        let finished_files = exit_code_file(&job.spec).exists();
        let from_files = |how: &str| match result_in(&job.spec) {
            Some(r) => Outcome::Result(r),
            None => Outcome::Result(crashed(&job.spec, how)),
        };
        match state {
            Some("PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD") => {
                State::Active { running: false }
            }
            Some("RUNNING" | "COMPLETING" | "SUSPENDED" | "STAGE_OUT" | "SIGNALING" | "RESIZING" | "STOPPED") => {
                if finished_files && result_in(&job.spec).is_some() {
                    // The run printed its result: it is final even if Slurm still tidies up. (Without a result, the
                    // final state decides: a job cancelled from outside may still write its exit code.)
                    State::Done(from_files("ended"))
                } else {
                    State::Active { running: true }
                }
            }
            Some("COMPLETED" | "FAILED") => State::Done(from_files("ended")),
            Some("TIMEOUT" | "DEADLINE") => State::Done(Outcome::Result(timed_out(job.spec.time_limit))),
            Some("OUT_OF_MEMORY") => State::Done(Outcome::Result(ExecResult::failed(
                FailureCause::OutOfMemory,
                "Slurm stopped the job: out of memory",
            ))),
            // Cancelled after printing its result (e.g. while Slurm tidied up): the result stands.
            Some("CANCELLED") if result_in(&job.spec).is_some() => State::Done(from_files("ended")),
            Some(st @ ("CANCELLED" | "NODE_FAIL" | "BOOT_FAIL" | "PREEMPTED" | "REVOKED")) => {
                State::Done(Outcome::Infrastructure(format!("Slurm job {} ended as {st}", job.job_id)))
            }
            Some(other) if finished_files => {
                tracing::debug!("job {} in state {other} left its exit code", job.job_id);
                State::Done(from_files("ended"))
            }
            Some(other) => State::Done(Outcome::Infrastructure(format!("Slurm job {} in state {other}", job.job_id))),
            None if finished_files => State::Done(from_files("ended")),
            None => State::Done(Outcome::Infrastructure(format!(
                "Slurm job {} vanished without finishing (not in squeue or sacct)",
                job.job_id
            ))),
        }
    }

    fn find_by_name(&self, name: &str) -> Option<String> {
        let out =
            run("squeue", &["-h".into(), "--states=all".into(), "-o".into(), "%i".into(), format!("--name={name}")])
                .ok()?;
        out.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
    }

    fn scancel(ids: &[String]) {
        // Jobs re-attached from their files alone have no id to cancel.
        let ids: Vec<String> = ids.iter().filter(|i| i.as_str() != "unknown").cloned().collect();
        if ids.is_empty() {
            return;
        }
        if let Err(e) = run("scancel", &ids) {
            tracing::warn!("{e}");
        }
    }
}

impl Backend for SlurmBackend {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn slots(&self) -> usize {
        self.cfg.max_jobs
    }

    fn running(&self) -> usize {
        self.jobs.len()
    }

    fn submit(&mut self, spec: &RunSpec) -> Result<String, BackendError> {
        if self.jobs.len() >= self.cfg.max_jobs {
            return Err(BackendError::NoFreeSlot);
        }
        std::fs::create_dir_all(&spec.work_dir)
            .map_err(|e| BackendError::Submit(format!("cannot create {}: {e}", spec.work_dir.display())))?;
        for stale in ["exit_code", "stdout.txt", "stderr.txt"] {
            let _ = std::fs::remove_file(spec.work_dir.join(stale));
        }
        let script = spec.work_dir.join("job.sh");
        std::fs::write(&script, self.script(spec))
            .map_err(|e| BackendError::Submit(format!("cannot write {}: {e}", script.display())))?;
        let out = run("sbatch", &self.sbatch_args(spec, &script)).map_err(BackendError::Submit)?;
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return Err(BackendError::Submit(format!("sbatch printed no job id: {out:?}")));
        }
        self.jobs.push(Job { spec: spec.clone(), job_id: id.clone(), started: None });
        Ok(id)
    }

    fn reattach(&mut self, spec: &RunSpec, job_id: Option<&str>) -> Result<bool, BackendError> {
        let id = match job_id {
            Some(id) => Some(id.to_string()),
            None => self.find_by_name(&spec.key),
        };
        match id {
            Some(id) => {
                self.jobs.push(Job { spec: spec.clone(), job_id: id, started: None });
                Ok(true)
            }
            None if exit_code_file(spec).exists() => {
                self.jobs.push(Job { spec: spec.clone(), job_id: "unknown".into(), started: None });
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn poll(&mut self) -> Vec<Finished> {
        let mut done = Vec::new();
        let now = Instant::now();
        let due = self.last_query.is_none_or(|t| now.duration_since(t).as_secs_f64() >= self.cfg.poll_interval_s);
        if due && !self.jobs.is_empty() {
            self.last_query = Some(now);
            let ids: Vec<String> = self.jobs.iter().map(|j| j.job_id.clone()).collect();
            match self.query(&ids) {
                Ok(states) => {
                    self.last_success = now;
                    let mut i = 0;
                    while i < self.jobs.len() {
                        let job = &mut self.jobs[i];
                        match Self::interpret(job, states.get(&job.job_id).map(String::as_str)) {
                            State::Active { running } => {
                                if running && job.started.is_none() {
                                    job.started = Some(now);
                                }
                                i += 1;
                            }
                            State::Done(outcome) => {
                                let job = self.jobs.swap_remove(i);
                                done.push(Finished { key: job.spec.key, outcome });
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot query Slurm: {e}");
                    if now.duration_since(self.last_success).as_secs_f64() > self.cfg.unreachable_timeout_s {
                        for job in std::mem::take(&mut self.jobs) {
                            done.push(Finished {
                                key: job.spec.key,
                                outcome: Outcome::Infrastructure(format!("Slurm unreachable: {e}")),
                            });
                        }
                    }
                }
            }
        }
        // Our own time limit, counted from the start of the run (not its wait in the queue).
        let mut expired = Vec::new();
        self.jobs.retain(|j| {
            let over = match (j.started, j.spec.time_limit) {
                (Some(s), Some(limit)) => now.duration_since(s) >= limit,
                _ => false,
            };
            if over {
                expired.push((j.spec.key.clone(), j.job_id.clone(), j.spec.time_limit));
            }
            !over
        });
        Self::scancel(&expired.iter().map(|e| e.1.clone()).collect::<Vec<_>>());
        for (key, _, limit) in expired {
            done.push(Finished { key, outcome: Outcome::Result(timed_out(limit)) });
        }
        done
    }

    fn cancel(&mut self, key: &str) {
        if let Some(i) = self.jobs.iter().position(|j| j.spec.key == key) {
            let job = self.jobs.swap_remove(i);
            Self::scancel(&[job.job_id]);
        }
    }

    fn cancel_all(&mut self) {
        let ids: Vec<String> = std::mem::take(&mut self.jobs).into_iter().map(|j| j.job_id).collect();
        Self::scancel(&ids);
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.cfg.poll_interval_s.min(1.0))
    }
}
