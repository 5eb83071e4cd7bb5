//! The local backend: each run is a child process in its own process group, in one of N slots. A slot is a CPU
//! share (each child gets `IDEATOR_THREADS` so that slots do not oversubscribe the cores: candle's thread pool
//! spin-waits, and oversubscribed it runs several times slower) or a GPU (`CUDA_VISIBLE_DEVICES` set per run;
//! several slots may share one large GPU). A run past its time limit, or cancelled, is killed with its whole
//! process group; children are also killed when the trainer dies (`PR_SET_PDEATHSIG`), so a restarted trainer
//! never races an orphan for the same idea.

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::gpu::{discover, runs_that_fit};
use super::{crashed, result_in, timed_out, Backend, BackendError, Finished, Outcome, RunSpec};

/// Which GPUs the slots use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GpuSelection {
    /// `"none"` (CPU slots) or `"auto"` (every GPU the driver reports; needs the `cuda` feature).
    Named(String),
    /// These GPU ids.
    Ids(Vec<u32>),
}

/// `[backend]` settings of the local backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// CPU slots (ignored when GPUs are used: then each GPU gives `runs_per_gpu` slots).
    pub slots: usize,
    pub gpus: GpuSelection,
    /// Runs sharing one GPU. With `gpus = "auto"` and `memory_per_run_gb`, as many as fit in its free memory.
    pub runs_per_gpu: usize,
    pub memory_per_run_gb: Option<f64>,
    /// CPU threads of each run (`IDEATOR_THREADS`); default: the machine's cores divided among the slots.
    pub threads_per_run: Option<usize>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            slots: 1,
            gpus: GpuSelection::Named("none".into()),
            runs_per_gpu: 1,
            memory_per_run_gb: None,
            threads_per_run: None,
        }
    }
}

impl LocalConfig {
    /// The GPU of each slot (`None`: a CPU slot).
    pub fn slot_gpus(&self) -> Result<Vec<Option<u32>>, BackendError> {
        if self.slots == 0 || self.runs_per_gpu == 0 {
            return Err(BackendError::Config("backend.slots and backend.runs_per_gpu must be at least 1".into()));
        }
        let per_gpu = |fit: Option<usize>| fit.unwrap_or(self.runs_per_gpu);
        let mut slots = Vec::new();
        match &self.gpus {
            GpuSelection::Named(n) if n == "none" => slots.extend(std::iter::repeat_n(None, self.slots)),
            GpuSelection::Named(n) if n == "auto" => {
                let gpus = discover().map_err(BackendError::Config)?;
                if gpus.is_empty() {
                    return Err(BackendError::Config("backend.gpus = \"auto\" but no GPU was found".into()));
                }
                for g in gpus {
                    let fit = self.memory_per_run_gb.map(|gb| runs_that_fit(&g, (gb * (1u64 << 30) as f64) as u64));
                    slots.extend(std::iter::repeat_n(Some(g.id), per_gpu(fit)));
                }
            }
            GpuSelection::Named(other) => {
                return Err(BackendError::Config(format!(
                    "backend.gpus must be \"none\", \"auto\" or a list of GPU ids, not {other:?}"
                )))
            }
            GpuSelection::Ids(ids) => {
                if ids.is_empty() {
                    return Err(BackendError::Config("backend.gpus is an empty list".into()));
                }
                for &id in ids {
                    slots.extend(std::iter::repeat_n(Some(id), self.runs_per_gpu));
                }
            }
        }
        Ok(slots)
    }
}

struct Running {
    spec: RunSpec,
    child: Child,
    slot: usize,
    deadline: Option<Instant>,
}

pub struct LocalBackend {
    slot_gpus: Vec<Option<u32>>,
    busy: Vec<bool>,
    threads: usize,
    running: Vec<Running>,
    /// Results found when re-attaching, reported by the next poll.
    ready: Vec<Finished>,
}

impl LocalBackend {
    pub fn new(cfg: &LocalConfig) -> Result<LocalBackend, BackendError> {
        let slot_gpus = cfg.slot_gpus()?;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = cfg.threads_per_run.unwrap_or((cores / slot_gpus.len()).max(1));
        if threads == 0 {
            return Err(BackendError::Config("backend.threads_per_run must be at least 1".into()));
        }
        Ok(LocalBackend { busy: vec![false; slot_gpus.len()], slot_gpus, threads, running: vec![], ready: vec![] })
    }

    /// Threads each run gets.
    pub fn threads_per_run(&self) -> usize {
        self.threads
    }

    fn free_slot(&mut self, i: usize) {
        if let Some(b) = self.busy.get_mut(i) {
            *b = false;
        }
    }

    fn kill(child: &mut Child) {
        // The child leads its own process group: kill the group, so that whatever it started dies too.
        let pid = child.id() as libc::pid_t;
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn slots(&self) -> usize {
        self.slot_gpus.len()
    }

    fn running(&self) -> usize {
        self.running.len() + self.ready.len()
    }

    fn submit(&mut self, spec: &RunSpec) -> Result<String, BackendError> {
        let slot = self.busy.iter().position(|b| !b).ok_or(BackendError::NoFreeSlot)?;
        std::fs::create_dir_all(&spec.work_dir)
            .map_err(|e| BackendError::Submit(format!("cannot create {}: {e}", spec.work_dir.display())))?;
        let open = |p: std::path::PathBuf| {
            File::create(&p).map_err(|e| BackendError::Submit(format!("cannot create {}: {e}", p.display())))
        };
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .current_dir(&spec.work_dir)
            .stdin(Stdio::null())
            .stdout(open(spec.stdout_path())?)
            .stderr(open(spec.stderr_path())?)
            .env("IDEATOR_THREADS", self.threads.to_string())
            .process_group(0);
        if let Some(gpu) = self.slot_gpus[slot] {
            cmd.env("CUDA_VISIBLE_DEVICES", gpu.to_string());
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                // Die with the thread that started us (the trainer's dispatcher): no orphaned runs after a crash.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(137);
                }
                Ok(())
            });
        }
        let child =
            cmd.spawn().map_err(|e| BackendError::Submit(format!("cannot start {}: {e}", spec.program.display())))?;
        let id = format!("pid:{}", child.id());
        self.busy[slot] = true;
        let deadline = spec.time_limit.map(|d| Instant::now() + d);
        self.running.push(Running { spec: spec.clone(), child, slot, deadline });
        Ok(id)
    }

    fn reattach(&mut self, spec: &RunSpec, _job_id: Option<&str>) -> Result<bool, BackendError> {
        // Our children die with the trainer, so a run from before the restart either finished (its result is in
        // its folder) or is gone and must run again.
        match result_in(spec) {
            Some(r) => {
                self.ready.push(Finished { key: spec.key.clone(), outcome: Outcome::Result(r) });
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn poll(&mut self) -> Vec<Finished> {
        let mut done = std::mem::take(&mut self.ready);
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            let outcome = match r.child.try_wait() {
                Ok(Some(status)) => Some(match result_in(&r.spec) {
                    Some(result) => Outcome::Result(result),
                    None => match status.signal() {
                        Some(sig) => Outcome::Result(crashed(&r.spec, &format!("was killed by signal {sig}"))),
                        None => Outcome::Result(crashed(
                            &r.spec,
                            &format!("exited with code {}", status.code().unwrap_or(-1)),
                        )),
                    },
                }),
                Ok(None) if r.deadline.is_some_and(|d| Instant::now() >= d) => {
                    Self::kill(&mut r.child);
                    Some(Outcome::Result(timed_out(r.spec.time_limit)))
                }
                Ok(None) => None,
                Err(e) => Some(Outcome::Infrastructure(format!("cannot wait for the run: {e}"))),
            };
            match outcome {
                Some(outcome) => {
                    let r = self.running.swap_remove(i);
                    self.free_slot(r.slot);
                    done.push(Finished { key: r.spec.key, outcome });
                }
                None => i += 1,
            }
        }
        done
    }

    fn cancel(&mut self, key: &str) {
        if let Some(i) = self.running.iter().position(|r| r.spec.key == key) {
            let mut r = self.running.swap_remove(i);
            Self::kill(&mut r.child);
            self.free_slot(r.slot);
        }
        self.ready.retain(|f| f.key != key);
    }

    fn cancel_all(&mut self) {
        for mut r in std::mem::take(&mut self.running) {
            Self::kill(&mut r.child);
            self.free_slot(r.slot);
        }
        self.ready.clear();
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(10)
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        self.cancel_all();
    }
}
