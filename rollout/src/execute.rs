//! Turning sampled ideas into results. The RL loop talks to an [`IdeaExecutor`]; the in-process one runs the
//! environment in this process, one idea after the other.

use std::path::PathBuf;
use std::time::Duration;

use ideator_envs::{execute, Environment, ExecResult, RunContext};
use serde::{Deserialize, Serialize};

/// One idea to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdeaJob {
    /// Unique within the run (`s00003-g0-i5`): names the work folder.
    pub id: String,
    pub text: String,
    /// Seed of the run (environments are deterministic for a recipe, scale and seed).
    pub seed: u64,
}

pub trait IdeaExecutor {
    /// Runs the jobs and returns one result per job, in order. Failures of ideas are results (reward 0), not
    /// errors.
    fn run_batch(&mut self, jobs: &[IdeaJob]) -> Vec<ExecResult>;
}

/// Runs ideas in this process, sequentially.
pub struct InProcess {
    pub env: Box<dyn Environment>,
    pub scale: String,
    /// Each idea gets `work_root/<job id>/`.
    pub work_root: PathBuf,
    pub time_limit: Option<Duration>,
}

impl IdeaExecutor for InProcess {
    fn run_batch(&mut self, jobs: &[IdeaJob]) -> Vec<ExecResult> {
        jobs.iter()
            .map(|job| {
                let mut ctx = RunContext::new(&self.scale, job.seed, self.work_root.join(&job.id));
                if let Some(limit) = self.time_limit {
                    ctx = ctx.with_time_limit(limit);
                }
                execute(self.env.as_ref(), &job.text, &ctx)
            })
            .collect()
    }
}
