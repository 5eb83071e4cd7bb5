//! `ideator merge`: a checkpoint's adapters (or full weights) folded into its base model, written as a Hugging Face
//! model folder that `--model` (and transformers) can load.

use std::path::PathBuf;

use crate::policy_init::load_checkpoint_model;

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
    let model = load_checkpoint_model(&args.checkpoint, args.model.as_deref())?;
    ideator_model::weights::export::write_hf_folder(&model.decoder, &model.tokenizer, &args.out)?;
    println!("merged model written to {}", args.out.display());
    Ok(())
}
