//! `ideator sft`: supervised warm-up on chat examples (LoRA or full), with checkpoints and exact resume.

use anyhow::Context;
use ideator_trainer::config::{OptimConfig, TrainMode};
use ideator_trainer::run_dir::RunDir;
use ideator_trainer::sft::SftLearner;
use ideator_trainer::sft_run::{
    read_chat_jsonl, run_sft, split_examples, tokenize_chats, total_steps, SftRunConfig, SftRunContext,
};
use ideator_trainer::TrainablePolicy;
use serde::{Deserialize, Serialize};

use crate::run_config::{
    base_model_identity, read_config, relative_to_config, run_dir_for, ModelSection, RunSection,
};
use crate::run_lock::lock_run_folder;

/// The command's flags: `--config`, `--run-dir`, `--resume`, `--json`.
pub type Args = crate::run_config::RunArgs;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SftFile {
    #[serde(default)]
    model: ModelSection,
    #[serde(default)]
    train: TrainMode,
    #[serde(default)]
    optim: OptimConfig,
    sft: SftRunConfig,
    #[serde(default)]
    run: RunSection,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Everything that can be checked before the run folder exists is: a config or data error leaves nothing.
    let (cfg, text): (SftFile, String) = read_config(&args.target.config)?;
    cfg.train.validate()?;
    cfg.sft.validate()?;
    cfg.optim.validate()?;
    // Relative data paths are relative to the config file.
    let data = relative_to_config(&args.target.config, &cfg.sft.data);
    let chats = read_chat_jsonl(&data)?;
    let root = run_dir_for(args.target.run_dir.as_deref(), &cfg.run, &args.target.config);
    let _lock = lock_run_folder(&root, "sft")?;
    let run_dir = RunDir::create(&root, args.resume)?;
    run_dir.write_config(&text)?;
    let model = cfg.model.args().load()?;
    let base = base_model_identity(&model)?;
    let examples = tokenize_chats(&chats, &model.tokenizer).with_context(|| format!("reading {}", data.display()))?;
    let (train, eval) = split_examples(examples, cfg.sft.eval_fraction, cfg.run.seed);
    let total = total_steps(train.len(), &cfg.sft);
    let pad = model.tokenizer.pad_id().unwrap_or(0);
    let policy = TrainablePolicy::new(model.decoder, &cfg.train, false, cfg.run.seed, pad)?;
    let mut learner = SftLearner::new(policy, cfg.optim.clone(), cfg.sft.micro_batch, total, cfg.run.seed)?;
    let bar = crate::progress::bar(total, "sft", !args.json);
    let on_step = |step: u64, _total: u64, loss: f64| {
        bar.set_position(step);
        bar.set_message(format!("loss {loss:.3}"));
    };
    let ctx = SftRunContext { run_dir: &run_dir, base_model: base, config_text: text.clone(), on_step: &on_step };
    let summary = run_sft(&mut learner, &train, &eval, &cfg.sft, &ctx)?;
    bar.finish_and_clear();
    if args.json {
        println!("{summary}");
    } else if summary["resumed_at_step"] == summary["steps"] {
        println!("sft already complete ({} steps); run folder {}", summary["steps"], run_dir.root.display());
    } else {
        println!(
            "sft done: {} steps, held-out loss {} -> {}; run folder {}",
            summary["steps"],
            summary["eval_loss_before"],
            summary["eval_loss_after"],
            run_dir.root.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_float_setting_that_is_not_finite_is_refused_naming_its_key() {
        let check = |text: &str| -> anyhow::Result<()> {
            let cfg: SftFile = crate::run_config::parse_config(text)?;
            cfg.train.validate()?;
            cfg.sft.validate()?;
            Ok(cfg.optim.validate()?)
        };
        let n = crate::run_config::float_keys::each_non_finite_is_refused::<SftFile>(
            "[sft]\ndata = \"x.jsonl\"\n",
            check,
        );
        assert!(n >= 8, "only {n} float settings found in the SFT config");
    }
}
