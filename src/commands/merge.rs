//! `ideator merge`: a checkpoint's adapters (or full weights) folded into its base model, written as a Hugging Face
//! model folder that `--model` (and transformers) can load.

use std::path::PathBuf;

use anyhow::Context;

use crate::policy_init::{apply_checkpoint, load_initial_policy};
use crate::run_config::ModelSection;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint folder (`<run>/checkpoints/step-NNNNNNNN`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output folder for the merged model.
    #[arg(long)]
    pub out: PathBuf,
    /// Base model; default: the one recorded in the checkpoint's manifest.
    #[arg(long)]
    pub model: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let manifest = ideator_checkpoints::verify(&args.checkpoint)
        .with_context(|| format!("checking checkpoint {}", args.checkpoint.display()))?;
    // A run started from an earlier checkpoint records its base as "<model> + <initial checkpoint>".
    let recorded = manifest.base_model.spec.clone();
    let (base, init) = match recorded.split_once(" + ") {
        Some((b, i)) => (b.to_string(), Some(PathBuf::from(i))),
        None => (recorded.clone(), None),
    };
    let section = ModelSection { spec: args.model.clone().unwrap_or(base), device: "cpu".into() };
    let (mut model, identity) = load_initial_policy(&section, init.as_deref())?;
    apply_checkpoint(&mut model, &args.checkpoint, &identity)?;
    ideator_model::weights::export::write_hf_folder(&model.decoder, &model.tokenizer, &args.out)?;
    println!("merged model written to {}", args.out.display());
    Ok(())
}
