//! `ideator tokenize`: token ids of a text under a model's tokenizer.

#[derive(clap::Args)]
pub struct Args {
    /// Text to tokenize.
    #[arg(long)]
    pub text: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::bail!("tokenize is not wired to the model crate yet (text was {:?})", args.text)
}
