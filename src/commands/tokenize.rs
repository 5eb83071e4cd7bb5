//! `ideator tokenize`: token ids of a text under a model's tokenizer (no BOS added).

use super::model_args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to tokenize.
    #[arg(long)]
    pub text: String,
    /// Print JSON (`{"ids": [...]}`) instead of one `id<TAB>token` per line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = args.model.spec()?;
    // Only the tokenizer is needed: avoid loading weights.
    let tokenizer = match &spec {
        ideator_model::ModelSpec::Gguf(p) => ideator_model::Tokenizer::from_gguf_file(p)?,
        _ => args.model.load()?.tokenizer,
    };
    let ids = tokenizer.encode(&args.text, false)?;
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        for id in ids {
            println!("{id}\t{}", tokenizer.id_to_token(id).unwrap_or_default());
        }
    }
    Ok(())
}
