//! The `--model` / `--device` options shared by commands that load an ideator.

use anyhow::Context;
use ideator_model::device::Precision;
use ideator_model::load::{load_model, Model};
use ideator_model::ModelSpec;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face model folder, or hf:ORG/NAME[@REVISION]. Default: the fetched SmolLM2-135M-Instruct.
    #[arg(long)]
    pub model: Option<String>,
    /// cpu, cuda, cuda:N, or auto (a GPU if the binary was built with `--features cuda` and one is visible).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision of the forward passes: f32, or bf16 (GPU; training keeps f32 master weights and optimiser state).
    #[arg(long, default_value = "f32")]
    pub dtype: Precision,
    /// Precision of the weights sampling reads: f32 (exact), or bf16, a copy of the weights rounded to bf16 that
    /// halves the bytes a CPU decode step streams (the log-probs then come from the copy; in training it is rebuilt
    /// after each update, see `grpo.rollout_is_threshold`). CPU with dtype f32 only.
    #[arg(long, default_value = "f32")]
    pub sampling_dtype: Precision,
}

impl ModelArgs {
    pub fn spec(&self) -> anyhow::Result<ModelSpec> {
        Ok(match &self.model {
            Some(s) => s.parse()?,
            None => {
                let default = ModelSpec::default_model();
                if let ModelSpec::Gguf(p) = &default {
                    anyhow::ensure!(p.is_file(), "{}", ideator_model::assets::missing_asset_hint(p));
                }
                default
            }
        })
    }

    pub fn load(&self) -> anyhow::Result<Model> {
        let spec = self.spec()?;
        let device = ideator_model::device::parse_device(&self.device)?;
        let t0 = std::time::Instant::now();
        if self.dtype != Precision::F32 && device.is_cpu() {
            // Allowed (the CPU tests check the mixed-precision path this way), but candle's CPU bf16 matmul is
            // several times slower than its f32 one, and a CPU run gains nothing from it.
            tracing::warn!("dtype {} on the CPU is slow; use f32 there and {} on a GPU", self.dtype, self.dtype);
        }
        let mut model =
            load_model(&spec, self.dtype.dtype(), &device).with_context(|| format!("loading model {spec}"))?;
        self.apply_sampling(&mut model)?;
        tracing::info!("loaded {spec} in {:.1}s", t0.elapsed().as_secs_f64());
        Ok(model)
    }

    /// The model of `checkpoint` (its recorded base with its weights folded in; `--model` overrides the base)
    /// when given, else the model these options name; with the sampling precision asked for either way.
    pub fn load_or_checkpoint(&self, checkpoint: Option<&std::path::Path>) -> anyhow::Result<Model> {
        let Some(dir) = checkpoint else { return self.load() };
        let mut model = crate::policy_init::load_checkpoint_model(dir, self.model.as_deref())?;
        self.apply_sampling(&mut model)?;
        Ok(model)
    }

    /// Gives `model` the sampling precision these options ask for (a model loaded another way, e.g. from a
    /// checkpoint, takes it here).
    pub fn apply_sampling(&self, model: &mut Model) -> anyhow::Result<()> {
        model.decoder.set_sampling_precision(self.sampling_dtype).with_context(|| {
            format!("--sampling-dtype {} (or [model] sampling_dtype) cannot be used here", self.sampling_dtype)
        })
    }
}
