//! The GRPO learner learns: on a tiny randomly initialised character model, a reward computed from the text
//! rises clearly within a bounded number of steps, with LoRA and with full fine-tuning. And training resumes
//! exactly: N steps straight equal N/2 steps, a checkpoint on disk, a fresh process state, and N/2 more. And the
//! micro-batches that run side by side on the threads give the same update as on one thread, for GRPO and SFT.

use candle_core::{DType, Device};
use ideator_checkpoints::{BaseModel, Checkpoint};
use ideator_model::device::test_device;
use ideator_model::sampler::{sample, SamplingParams};
use ideator_model::tiny::{char_tokenizer, tiny_decoder_on};
use ideator_model::{LoraConfig, Tokenizer};
use ideator_trainer::config::{OptimConfig, TrainMode};
use ideator_trainer::grpo::{GrpoStepStats, LearnerState};
use ideator_trainer::sft::{SftExample, SftLearner};
use ideator_trainer::{GrpoConfig, GrpoLearner, ScoredGroup, ScoredSample, TrainablePolicy};

/// Share of the generated characters that are vowels: near 5/44 for a uniform random model.
fn vowel_share(text: &str) -> f64 {
    let n = text.chars().count();
    if n == 0 {
        return 0.0;
    }
    text.chars().filter(|c| "aeiou".contains(*c)).count() as f64 / n as f64
}

/// A learner on the test device (`IDEATOR_TEST_DEVICE`) in f32.
fn learner(mode: TrainMode, lr: f64, steps: u64) -> (GrpoLearner, Tokenizer) {
    learner_on(mode, lr, steps, DType::F32, &test_device())
}

fn learner_on(mode: TrainMode, lr: f64, steps: u64, dtype: DType, device: &Device) -> (GrpoLearner, Tokenizer) {
    learner_with(mode, lr, steps, dtype, device, 8)
}

fn learner_with(
    mode: TrainMode,
    lr: f64,
    steps: u64,
    dtype: DType,
    device: &Device,
    micro_batch: usize,
) -> (GrpoLearner, Tokenizer) {
    let tok = char_tokenizer().unwrap();
    let policy = TrainablePolicy::new(tiny_decoder_on(1, dtype, device).unwrap(), &mode, true, 7, 0).unwrap();
    let cfg = GrpoConfig { group_size: 8, beta: 0.01, micro_batch, ..Default::default() };
    let optim = OptimConfig { lr, ..Default::default() };
    (GrpoLearner::new(policy, cfg, optim, steps, 12, 99).unwrap(), tok)
}

/// One RL step: sample a group per prompt from the current policy, score, update. Returns (mean reward, loss).
fn rl_step(l: &mut GrpoLearner, tok: &Tokenizer, step: u64) -> (f64, f64) {
    let stats = rl_step_stats(l, tok, step);
    (stats.reward_mean, stats.loss)
}

/// The same, returning the update's statistics.
fn rl_step_stats(l: &mut GrpoLearner, tok: &Tokenizer, step: u64) -> GrpoStepStats {
    let prompts = vec![tok.encode("x=", false).unwrap(), tok.encode("idea:", false).unwrap()];
    let params = SamplingParams { max_new_tokens: 12, seed: 1000 + step, batch_size: 16, ..Default::default() };
    let p = l.policy();
    let out = sample(p.decoder(), tok, &prompts, 8, &params, p.sampling_mode(), None).unwrap();
    let groups: Vec<ScoredGroup> = prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| ScoredGroup {
            prompt_ids: prompt.clone(),
            policy_version: step,
            temperature: params.logprob_temperature(),
            samples: out
                .iter()
                .filter(|c| c.prompt_index == i)
                .map(|c| ScoredSample {
                    completion_ids: c.token_ids.clone(),
                    behaviour_logprobs: c.logprobs.clone(),
                    reward: vowel_share(&c.text),
                    cluster: None,
                })
                .collect(),
        })
        .collect();
    l.train_step(&groups).unwrap()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn check_learns(mode: TrainMode, lr: f64) {
    check_learns_in(mode, lr, DType::F32);
}

fn check_learns_in(mode: TrainMode, lr: f64, dtype: DType) {
    let steps = 40;
    let (mut l, tok) = learner_on(mode.clone(), lr, steps, dtype, &test_device());
    let rewards: Vec<f64> = (0..steps).map(|s| rl_step(&mut l, &tok, s).0).collect();
    let first = mean(&rewards[..5]);
    let last = mean(&rewards[rewards.len() - 5..]);
    eprintln!("{mode:?}: mean reward {first:.3} -> {last:.3}");
    assert!(last > first + 0.25 && last > 2.0 * first, "{mode:?}: reward did not rise: {rewards:?}");
}

#[test]
fn lora_learns_the_synthetic_reward() {
    check_learns(TrainMode::Lora { lora: LoraConfig { rank: 8, alpha: 16.0, ..Default::default() } }, 5e-2);
}

#[test]
fn full_fine_tuning_learns_the_synthetic_reward() {
    check_learns(TrainMode::Full, 1e-2);
}

fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// The learner runs its micro-batches side by side, one per thread of the pool (`micro_batches::in_waves`), and
/// sums their gradients in micro-batch order: three steps (sampling, reference, update) on 2 and 3 threads give
/// the losses and weights of 1 thread, bit for bit. On the CPU, as below. Not claimed for a thread count that
/// leaves a wave of one pass: that pass runs with the whole pool, and the attention op splits its work (and its
/// sums) by the pool's size.
#[test]
fn updates_do_not_depend_on_the_thread_count() {
    for mode in
        [TrainMode::Lora { lora: LoraConfig { rank: 4, dropout: 0.1, ..Default::default() } }, TrainMode::Full]
    {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                // Two groups of 8 in micro-batches of 3 + 3 + 2: six passes, in waves of 2 + 2 + 2 on two threads,
                // 3 + 3 on three, each pass on a one-thread pool.
                let (mut l, tok) = learner_with(mode.clone(), 1e-2, 3, DType::F32, &Device::Cpu, 3);
                let mut losses = Vec::new();
                for step in 0..3 {
                    let stats = rl_step_stats(&mut l, &tok, step);
                    assert_eq!(stats.sequences, 16, "every sample carries a gradient (beta > 0)");
                    losses.push(stats.loss.to_bits());
                }
                let weights: Vec<Vec<u32>> = l.policy().params().iter().map(|(_, v)| bits(v.as_tensor())).collect();
                (losses, weights)
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            assert_eq!(other.0, one.0, "{mode:?}: losses on {threads} threads");
            assert!(other.1 == one.1, "{mode:?}: weights on {threads} threads differ from one thread's");
        }
    }
}

/// The SFT learner runs its micro-batches side by side too: three steps on 2 and 4 threads give the losses and
/// weights of 1 thread, bit for bit (two prompts of three answers in micro-batches of 2 + 1 + 2 + 1: waves of 2 + 2
/// on two threads, one wave of 4 on four), with LoRA dropout and with full fine-tuning.
#[test]
fn sft_updates_do_not_depend_on_the_thread_count() {
    let tok = char_tokenizer().unwrap();
    let enc = |s: &str| tok.encode(s, false).unwrap();
    let batch: Vec<SftExample> = [("x=", ["aei", "ou a", "e"]), ("idea:", ["io", "u ea", "a"])]
        .iter()
        .flat_map(|(p, answers)| answers.map(|a| SftExample { prompt_ids: enc(p), completion_ids: enc(a) }))
        .collect();
    for mode in
        [TrainMode::Lora { lora: LoraConfig { rank: 4, dropout: 0.1, ..Default::default() } }, TrainMode::Full]
    {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let policy =
                    TrainablePolicy::new(tiny_decoder_on(1, DType::F32, &Device::Cpu).unwrap(), &mode, false, 7, 0)
                        .unwrap();
                let optim = OptimConfig { lr: 1e-2, ..Default::default() };
                let mut l = SftLearner::new(policy, optim, 2, 3, 5).unwrap();
                let losses: Vec<u64> = (0..3).map(|_| l.train_step(&batch).unwrap().loss.to_bits()).collect();
                let weights: Vec<Vec<u32>> = l.policy().params().iter().map(|(_, v)| bits(v.as_tensor())).collect();
                (losses, weights)
            })
        };
        let one = run(1);
        for threads in [2, 4] {
            let other = run(threads);
            assert_eq!(other.0, one.0, "{mode:?}: SFT losses on {threads} threads");
            assert!(other.1 == one.1, "{mode:?}: SFT weights on {threads} threads differ from one thread's");
        }
    }
}

/// On the CPU whatever `IDEATOR_TEST_DEVICE` says: bit-exactness is a property of our CPU kernels (fixed
/// summation orders); a GPU's embedding backward adds gradients with atomics, in no fixed order.
#[test]
fn resume_is_bit_exact() {
    let learner = |mode: TrainMode, lr: f64, steps: u64| learner_on(mode, lr, steps, DType::F32, &Device::Cpu);
    for mode in
        [TrainMode::Lora { lora: LoraConfig { rank: 4, dropout: 0.1, ..Default::default() } }, TrainMode::Full]
    {
        let n = 6;
        let (mut straight, tok) = learner(mode.clone(), 1e-2, n);
        let losses: Vec<f64> = (0..n).map(|s| rl_step(&mut straight, &tok, s).1).collect();

        let (mut first_half, tok) = learner(mode.clone(), 1e-2, n);
        let mut resumed_losses: Vec<f64> = (0..n / 2).map(|s| rl_step(&mut first_half, &tok, s).1).collect();
        let (weights, optimizer, state) = first_half.export();
        let dir = tempfile::tempdir().unwrap();
        let base = BaseModel { spec: "tiny".into(), weights_sha256: vec![], config: serde_json::json!({}) };
        let saved = ideator_checkpoints::save(
            dir.path(),
            &Checkpoint {
                step: state.step,
                weights_kind: first_half.policy().weights_kind(),
                base_model: base.clone(),
                weights,
                optimizer,
                trainer_state: serde_json::to_value(&state).unwrap(),
                config_text: String::new(),
                score: None,
            },
        )
        .unwrap();
        drop(first_half);
        let loaded = ideator_checkpoints::load(&saved.path, Some(&base)).unwrap();
        let (mut second_half, tok) = learner(mode.clone(), 1e-2, n);
        let state: LearnerState = serde_json::from_value(loaded.trainer_state).unwrap();
        second_half.restore(&loaded.weights, &loaded.optimizer, &state).unwrap();
        resumed_losses.extend((n / 2..n).map(|s| rl_step(&mut second_half, &tok, s).1));

        let a: Vec<u64> = losses.iter().map(|x| x.to_bits()).collect();
        let b: Vec<u64> = resumed_losses.iter().map(|x| x.to_bits()).collect();
        assert_eq!(a, b, "{mode:?}: losses differ after resume");
        let (wa, oa, _) = straight.export();
        let (wb, ob, _) = second_half.export();
        for (k, v) in &wa {
            assert_eq!(bits(v), bits(&wb[k]), "{mode:?}: weight {k} differs after resume");
        }
        for (k, v) in &oa {
            assert_eq!(bits(v), bits(&ob[k]), "{mode:?}: optimiser state {k} differs after resume");
        }
    }
}

#[test]
fn first_update_ratios_are_one_at_any_sampling_temperature() {
    for temperature in [0.5, 1.0, 1.7] {
        let (mut l, tok) = learner(TrainMode::Lora { lora: LoraConfig { rank: 4, ..Default::default() } }, 1e-3, 1);
        let prompt = tok.encode("x=", false).unwrap();
        let params = SamplingParams { temperature, max_new_tokens: 10, seed: 5, batch_size: 8, ..Default::default() };
        let p = l.policy();
        let out =
            sample(p.decoder(), &tok, std::slice::from_ref(&prompt), 8, &params, p.sampling_mode(), None).unwrap();
        let group = ScoredGroup {
            prompt_ids: prompt,
            policy_version: 0,
            temperature: params.logprob_temperature(),
            samples: out
                .iter()
                .map(|c| ScoredSample {
                    completion_ids: c.token_ids.clone(),
                    behaviour_logprobs: c.logprobs.clone(),
                    reward: vowel_share(&c.text),
                    cluster: None,
                })
                .collect(),
        };
        let s = l.train_step(&[group]).unwrap();
        // Same policy that sampled: every importance ratio is 1, nothing is clipped, the KL is 0.
        assert!((s.ratio_mean - 1.0).abs() < 1e-4 && s.ratio_max < 1.0 + 1e-3, "T={temperature}: {s:?}");
        assert_eq!((s.clip_low_frac, s.clip_high_frac), (0.0, 0.0), "T={temperature}");
        assert!(s.kl.abs() < 1e-6, "T={temperature}: kl {}", s.kl);
    }
}

/// Mixed precision: a bf16 policy's optimiser and checkpoints see f32 master weights and f32 moments; after
/// each update the decoder's bf16 adapters are the master weights rounded; and the reward still rises.
#[test]
fn bf16_policies_train_on_f32_master_weights() {
    let mode = TrainMode::Lora { lora: LoraConfig { rank: 8, alpha: 16.0, ..Default::default() } };
    let (mut l, tok) = learner_on(mode.clone(), 5e-2, 3, DType::BF16, &test_device());
    for step in 0..3 {
        rl_step(&mut l, &tok, step);
    }
    let (weights, optimizer, _) = l.export();
    assert!(!weights.is_empty() && !optimizer.is_empty());
    for (name, t) in weights.iter().chain(&optimizer) {
        assert_eq!(t.dtype(), DType::F32, "{name} is not f32");
    }
    let compute: std::collections::HashMap<String, candle_core::Var> =
        l.policy().decoder().lora_vars().into_iter().collect();
    for (name, master) in l.policy().params() {
        let c = &compute[name];
        assert_eq!(c.dtype(), DType::BF16, "{name}");
        let rounded = master.as_tensor().to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(bits(&rounded), bits(&c.as_tensor().to_dtype(DType::F32).unwrap()), "{name}");
    }
    check_learns_in(mode, 5e-2, DType::BF16);
}

/// Sampling from a bf16 copy (`[model] sampling_dtype = "bf16"`) with truncated importance sampling
/// (`grpo.rollout_is_threshold = 2`): the reward still rises as with f32 sampling, the mismatch is reported every
/// step, and after full fine-tuning's updates the copy is the trained weights rounded (refreshed, not stale).
#[test]
fn a_bf16_sampling_copy_with_truncated_importance_sampling_learns_and_follows_the_updates() {
    use ideator_model::device::Precision;
    if !test_device().is_cpu() {
        return; // The copy is a CPU feature.
    }
    let lora = TrainMode::Lora { lora: LoraConfig { rank: 8, alpha: 16.0, ..Default::default() } };
    for (mode, lr) in [(lora, 5e-2), (TrainMode::Full, 1e-2)] {
        let steps = 40;
        let tok = char_tokenizer().unwrap();
        let mut decoder = tiny_decoder_on(1, DType::F32, &Device::Cpu).unwrap();
        decoder.set_sampling_precision(Precision::Bf16).unwrap();
        let policy = TrainablePolicy::new(decoder, &mode, true, 7, 0).unwrap();
        let cfg = GrpoConfig {
            group_size: 8,
            beta: 0.01,
            micro_batch: 8,
            rollout_is_threshold: Some(2.0),
            ..Default::default()
        };
        let mut l = GrpoLearner::new(policy, cfg, OptimConfig { lr, ..Default::default() }, steps, 12, 99).unwrap();
        let stats: Vec<GrpoStepStats> = (0..steps).map(|s| rl_step_stats(&mut l, &tok, s)).collect();
        let rewards: Vec<f64> = stats.iter().map(|s| s.reward_mean).collect();
        let (first, last) = (mean(&rewards[..5]), mean(&rewards[rewards.len() - 5..]));
        let diff: Vec<f64> = stats.iter().map(|s| s.rollout_logprob_diff_mean.unwrap()).collect();
        let is_mean = mean(&stats.iter().map(|s| s.rollout_is_mean.unwrap()).collect::<Vec<_>>());
        eprintln!("{mode:?} with a bf16 copy: mean reward {first:.3} -> {last:.3}; |log-prob diff| {:.4}; IS weight {is_mean:.4}", mean(&diff));
        assert!(last > first + 0.25 && last > 2.0 * first, "{mode:?}: reward did not rise: {rewards:?}");
        assert!(diff.iter().all(|&d| d > 0.0 && d < 0.1), "{mode:?}: mismatch per step {diff:?}");
        assert!((is_mean - 1.0).abs() < 0.05, "{mode:?}: IS weights near 1 for a small mismatch: {is_mean}");

        let decoder = l.policy().decoder();
        let mut fresh = decoder.clone();
        fresh.refresh_sampling_copy().unwrap();
        let logits = |d: &ideator_model::Decoder| {
            let ids = candle_core::Tensor::new(&[[3u32, 9, 4]], &Device::Cpu).unwrap();
            let pos = candle_core::Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
            let mut cache = d.new_cache(1, 3).unwrap();
            bits(&d.decode(&ids, &pos, &[vec![true; 3]], &mut cache, l.policy().sampling_mode()).unwrap())
        };
        assert_eq!(logits(decoder), logits(&fresh), "{mode:?}: the sampling copy is stale after the updates");
    }
}
