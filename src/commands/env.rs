//! `ideator env`: list the environments, show one's knobs, print its ideator prompt, or write example ideas
//! (chat JSONL) for the supervised warm-up.

use anyhow::Context;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// Options naming one environment.
#[derive(clap::Args)]
pub struct Which {
    /// Environment name (`ideator env list` shows them).
    pub name: String,
    /// Scale whose baseline the defaults show (default: the environment's smallest).
    #[arg(long)]
    pub scale: Option<String>,
    /// Config file of a `command` environment.
    #[arg(long)]
    pub env_config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// List the environments.
    List,
    /// Show an environment's task, scales and knobs (Markdown).
    Show {
        #[command(flatten)]
        which: Which,
        /// Print the knob schema as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the ideator prompt of an environment.
    Prompt {
        #[command(flatten)]
        which: Which,
    },
    /// Write N varied, schema-valid example ideas as chat JSONL (system, user = prompt, assistant = idea).
    Examples {
        #[command(flatten)]
        which: Which,
        #[arg(long, default_value_t = 32)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Action::List => {
            for (name, summary) in ideator_envs::list() {
                println!("{name:<10} {summary}");
            }
        }
        Action::Show { which, json } => {
            let env = ideator_envs::load(&which.name, which.env_config.as_deref())?;
            let scale = which.scale.unwrap_or_else(|| env.default_scale());
            env.check_scale(&scale)?;
            let schema = env.schema(&scale)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&schema)?);
                return Ok(());
            }
            println!("# {}\n\n{}\n\n## Scales\n", env.name(), env.description().trim());
            for s in env.scales() {
                let (lo, hi) = env.plausible_reward(&s.name);
                println!("- `{}`: {} (plausible reward {lo:.3} to {hi:.3})", s.name, s.doc);
            }
            println!("\n## Knobs (defaults = baseline at scale `{scale}`)\n\n{}", schema.to_markdown());
        }
        Action::Prompt { which } => {
            let env = ideator_envs::load(&which.name, which.env_config.as_deref())?;
            let scale = which.scale.unwrap_or_else(|| env.default_scale());
            println!("{}", ideator_envs::prompt::ideator_prompt(env.as_ref(), &scale)?);
        }
        Action::Examples { which, n, seed, out } => {
            let env = ideator_envs::load(&which.name, which.env_config.as_deref())?;
            let scale = which.scale.unwrap_or_else(|| env.default_scale());
            let examples = ideator_envs::prompt::examples(env.as_ref(), &scale, n, seed)?;
            let jsonl = ideator_envs::prompt::to_jsonl(&examples);
            match out {
                Some(path) => {
                    std::fs::write(&path, jsonl).with_context(|| format!("cannot write {}", path.display()))?;
                    println!("wrote {} example ideas to {}", examples.len(), path.display());
                }
                None => print!("{jsonl}"),
            }
        }
    }
    Ok(())
}
