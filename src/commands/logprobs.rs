//! `ideator logprobs`: log p(ids[i+1] | ids[..=i]) for every token of a text (tokenised without BOS).

use ideator_model::AdapterMode;

use super::model_args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to score.
    #[arg(long)]
    pub text: String,
    /// Print JSON (`{"ids": [...], "logprobs": [...]}`).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let model = args.model.load()?;
    let ids = model.tokenizer.encode(&args.text, false)?;
    anyhow::ensure!(ids.len() >= 2, "the text has {} token(s); scoring needs at least 2", ids.len());
    let pad = model.tokenizer.pad_id().unwrap_or(0);
    let (lp, _) = model.decoder.score_tokens(std::slice::from_ref(&ids), &[1], pad, AdapterMode::default())?;
    let logprobs = lp.to_vec1::<f32>()?;
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids, "logprobs": logprobs }));
    } else {
        println!("{}\t{}", ids[0], model.tokenizer.id_to_token(ids[0]).unwrap_or_default());
        for (id, lp) in ids[1..].iter().zip(&logprobs) {
            println!("{id}\t{lp:.4}\t{}", model.tokenizer.id_to_token(*id).unwrap_or_default());
        }
        let total: f32 = logprobs.iter().sum();
        println!("total log-prob {total:.3} over {} tokens", logprobs.len());
    }
    Ok(())
}
