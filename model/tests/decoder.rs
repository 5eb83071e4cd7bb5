//! The decoder's two forward paths on tiny random models of every architecture: gradients reach every
//! parameter, the fused log-prob op equals the composed one, and cached decoding equals the training forward;
//! the portable path a GPU takes equals the CPU kernels, and bf16 stays close to f32.
//! Device-agnostic: they run on `IDEATOR_TEST_DEVICE` (cpu by default, cuda in scripts/gpu-check.sh).

mod common;

use candle_core::{DType, Tensor, Var};
use candle_nn::ops::log_softmax;
use common::{tiny_decoder, tiny_decoder_in, ARCHS};
use ideator_model::device::{test_device, with_portable_kernels};
use ideator_model::linear::sum_sq;
use ideator_model::logprob::{composed, linear_logprobs_and_entropy};
use ideator_model::{AdapterMode, Backprop, Decoder, LoraConfig};

fn seqs() -> Vec<Vec<u32>> {
    vec![vec![5, 17, 3, 88, 42, 7, 9, 60], vec![11, 2, 33, 4, 96]]
}

#[test]
fn every_parameter_gets_a_gradient_in_full_fine_tuning() {
    for arch in ARCHS {
        let mut dec = tiny_decoder(arch, 1);
        let vars = dec.make_trainable().unwrap();
        let (lp, ent) = dec.score_tokens(&seqs(), &[1, 2], 0, AdapterMode::default()).unwrap();
        let loss = ((lp.sum_all().unwrap() * -1.0).unwrap() + (ent.sum_all().unwrap() * 0.1).unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{arch:?}: no gradient for {name}"));
            assert!(sum_sq(g).unwrap() > 0.0, "{arch:?}: zero gradient for {name}");
        }
    }
}

#[test]
fn lora_adapters_get_gradients_and_base_weights_stay_frozen() {
    for arch in ARCHS {
        let mut dec = tiny_decoder(arch, 2);
        let vars = dec.add_lora(&LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, ..Default::default() }, 3).unwrap();
        assert_eq!(vars.len(), 2 * 7 * 2, "A and B for 7 projections in 2 layers");
        // B starts at zero, so A's gradient is zero at first: move B off zero, as one optimiser step would.
        for (name, var) in &vars {
            if name.ends_with("lora_B.weight") {
                var.set(&var.as_tensor().randn_like(0.0, 0.1).unwrap()).unwrap();
            }
        }
        let mode = AdapterMode { enabled: true, dropout_seed: Some(5) };
        let (lp, _) = dec.score_tokens(&seqs(), &[1, 1], 0, mode).unwrap();
        let grads = (lp.sum_all().unwrap() * -1.0).unwrap().backward().unwrap();
        for (name, var) in &vars {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            assert!(sum_sq(g).unwrap() > 0.0, "{arch:?}: zero gradient for {name}");
        }
        // Base weights stay plain tensors: no optimiser can update them.
        for (name, t) in dec.named_tensors() {
            assert!(!t.is_variable(), "frozen base tensor {name} is a variable");
        }
    }
}

#[test]
fn adapters_change_outputs_only_when_enabled_and_merge_exactly() {
    let mut dec = tiny_decoder(ideator_model::Arch::Qwen2, 4);
    let base = dec.score_tokens(&seqs(), &[1, 1], 0, AdapterMode::default()).unwrap().0.to_vec1::<f32>().unwrap();
    for (name, var) in dec.add_lora(&LoraConfig { rank: 2, ..Default::default() }, 1).unwrap() {
        if name.ends_with("lora_B.weight") {
            var.set(&var.as_tensor().randn_like(0.0, 0.05).unwrap()).unwrap();
        }
    }
    let on = AdapterMode { enabled: true, dropout_seed: None };
    let off = dec.score_tokens(&seqs(), &[1, 1], 0, AdapterMode::default()).unwrap().0.to_vec1::<f32>().unwrap();
    let adapted = dec.score_tokens(&seqs(), &[1, 1], 0, on).unwrap().0.to_vec1::<f32>().unwrap();
    assert_eq!(base, off, "disabled adapters must give the base model (the KL reference)");
    assert!(base.iter().zip(&adapted).any(|(a, b)| (a - b).abs() > 1e-3));
    dec.merge_lora().unwrap();
    assert!(!dec.has_lora());
    let merged = dec.score_tokens(&seqs(), &[1, 1], 0, AdapterMode::default()).unwrap().0.to_vec1::<f32>().unwrap();
    for (a, m) in adapted.iter().zip(&merged) {
        assert!((a - m).abs() < 1e-4, "merged {m} vs adapted {a}");
    }
}

#[test]
fn fused_logprobs_match_composed_values_and_gradients() {
    let dev = test_device();
    let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (150, 16), &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (300, 16), &dev).unwrap()).unwrap();
    let targets: Vec<u32> = (0..150).map(|i| (i * 7 % 300) as u32).collect();
    let coef = Tensor::new(&[[1.0f32, 0.3]], &dev).unwrap();
    let run = |fused: bool| {
        let out = if fused {
            linear_logprobs_and_entropy(h.as_tensor(), w.as_tensor(), &targets).unwrap()
        } else {
            composed(h.as_tensor(), w.as_tensor(), &targets).unwrap()
        };
        let loss = out.broadcast_mul(&coef).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        (
            out.to_vec2::<f32>().unwrap(),
            g.get(h.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            g.get(w.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
        )
    };
    let (o1, gh1, gw1) = run(true);
    let (o2, gh2, gw2) = run(false);
    let close = |a: &Vec<Vec<f32>>, b: &Vec<Vec<f32>>, tol: f32, what: &str| {
        for (ra, rb) in a.iter().zip(b) {
            for (x, y) in ra.iter().zip(rb) {
                assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: {x} vs {y}");
            }
        }
    };
    close(&o1, &o2, 1e-4, "values");
    close(&gh1, &gh2, 1e-4, "grad hidden");
    close(&gw1, &gw2, 1e-4, "grad weight");
}

/// Log-probs of `seq[1..]` through the KV-cached path: prefill a prefix, then feed one token at a time.
fn cached_logprobs(dec: &ideator_model::Decoder, seq: &[u32], prefill: usize) -> Vec<f32> {
    let dev = test_device();
    let mut cache = dec.new_cache(1, seq.len()).unwrap();
    let mut out = Vec::new();
    let step = |cache: &mut ideator_model::kv_cache::KvCache, from: usize, to: usize| {
        let ids = Tensor::new(&seq[from..to], &dev).unwrap().unsqueeze(0).unwrap();
        let pos: Vec<u32> = (from as u32..to as u32).collect();
        let pos = Tensor::new(pos.as_slice(), &dev).unwrap().unsqueeze(0).unwrap();
        let logits = dec.decode(&ids, &pos, &[vec![true; to]], cache, AdapterMode::default()).unwrap();
        log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap().remove(0)
    };
    let lsm = step(&mut cache, 0, prefill);
    out.push(lsm[seq[prefill] as usize]);
    for i in prefill..seq.len() - 1 {
        let lsm = step(&mut cache, i, i + 1);
        out.push(lsm[seq[i + 1] as usize]);
    }
    out
}

#[test]
fn cached_decoding_equals_the_training_forward() {
    for arch in ARCHS {
        let dec = tiny_decoder(arch, 6);
        let seq = seqs()[0].clone();
        let full = dec
            .score_tokens(std::slice::from_ref(&seq), &[3], 0, AdapterMode::default())
            .unwrap()
            .0
            .to_vec1::<f32>()
            .unwrap();
        let cached = cached_logprobs(&dec, &seq, 3);
        assert_eq!(full.len(), cached.len());
        for (a, b) in full.iter().zip(&cached) {
            assert!((a - b).abs() < 1e-4, "{arch:?}: training {a} vs cached {b}");
        }
    }
}

/// Log-probs through the KV-cached path fed in `chunks` (their sizes sum to `seq.len() - 1`): each chunk's last
/// logits score the token after it. Returns (position scored, log-prob) pairs.
fn chunked_logprobs(dec: &ideator_model::Decoder, seq: &[u32], chunks: &[usize]) -> Vec<(usize, f32)> {
    let dev = test_device();
    let mut cache = dec.new_cache(1, seq.len()).unwrap();
    let mut from = 0;
    let mut out = Vec::new();
    for &n in chunks {
        let to = from + n;
        let ids = Tensor::new(&seq[from..to], &dev).unwrap().unsqueeze(0).unwrap();
        let pos: Vec<u32> = (from as u32..to as u32).collect();
        let pos = Tensor::new(pos.as_slice(), &dev).unwrap().unsqueeze(0).unwrap();
        let logits = dec.decode(&ids, &pos, &[vec![true; to]], &mut cache, AdapterMode::default()).unwrap();
        let lsm = log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap().remove(0);
        out.push((to, lsm[seq[to] as usize]));
        from = to;
    }
    out
}

/// Prefills longer than a decode step (the blocked attention kernel on the CPU), first and after cached tokens.
#[test]
fn long_prefills_and_chunks_equal_the_training_forward() {
    let seq: Vec<u32> = (0..40u32).map(|i| (i * 37) % 90 + 1).collect();
    for arch in ARCHS {
        let dec = tiny_decoder(arch, 6);
        let full = dec.score_tokens(std::slice::from_ref(&seq), &[1], 0, AdapterMode::default()).unwrap().0;
        let full = full.to_vec1::<f32>().unwrap();
        let chunks = [9, 6, 1, 23];
        let cached = chunked_logprobs(&dec, &seq, &chunks);
        let portable = with_portable_kernels(|| chunked_logprobs(&dec, &seq, &chunks));
        for ((pos, a), (_, b)) in cached.iter().zip(&portable) {
            let want = full[pos - 1];
            assert!((a - want).abs() < 1e-4, "{arch:?} position {pos}: training {want} vs cached {a}");
            assert!((a - b).abs() < 1e-4, "{arch:?} position {pos}: portable {b} vs CPU kernels {a}");
        }
    }
}

#[test]
fn padding_does_not_change_log_probs() {
    for arch in ARCHS {
        let dec = tiny_decoder(arch, 8);
        let s = seqs();
        let batched = dec.score_tokens(&s, &[1, 1], 0, AdapterMode::default()).unwrap().0.to_vec1::<f32>().unwrap();
        let mut alone =
            dec.score_tokens(&s[..1], &[1], 0, AdapterMode::default()).unwrap().0.to_vec1::<f32>().unwrap();
        alone.extend(dec.score_tokens(&s[1..], &[1], 0, AdapterMode::default()).unwrap().0.to_vec1::<f32>().unwrap());
        for (a, b) in batched.iter().zip(&alone) {
            assert!((a - b).abs() < 1e-5, "{arch:?}: batched {a} vs alone {b}");
        }
    }
}

#[test]
fn left_padded_decoding_matches_unpadded() {
    let dev = test_device();
    for arch in ARCHS {
        let dec = tiny_decoder(arch, 9);
        let short = [4u32, 8, 15, 16];
        let long = [23u32, 42, 1, 2, 3, 5, 8];
        // Row 0 left-padded by 3; its positions restart at 0 after the padding.
        let mut cache = dec.new_cache(2, 8).unwrap();
        let ids: Vec<u32> = [0, 0, 0].iter().chain(&short).chain(&long).copied().collect();
        let pos: Vec<u32> = [0, 0, 0, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6].to_vec();
        let valid = vec![vec![false, false, false, true, true, true, true], vec![true; 7]];
        let logits = dec
            .decode(
                &Tensor::from_vec(ids, (2, 7), &dev).unwrap(),
                &Tensor::from_vec(pos, (2, 7), &dev).unwrap(),
                &valid,
                &mut cache,
                AdapterMode::default(),
            )
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut solo_cache = dec.new_cache(1, 8).unwrap();
        let solo = dec
            .decode(
                &Tensor::new(&short, &dev).unwrap().unsqueeze(0).unwrap(),
                &Tensor::new(&[0u32, 1, 2, 3], &dev).unwrap().unsqueeze(0).unwrap(),
                &[vec![true; 4]],
                &mut solo_cache,
                AdapterMode::default(),
            )
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (a, b) in logits[0].iter().zip(&solo[0]) {
            assert!((a - b).abs() < 1e-4, "{arch:?}: padded {a} vs solo {b}");
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Scoring {
    Concatenated,
    Shared(Backprop),
}

/// Log-probs, entropies and the gradient of every var for one way of scoring continuations after a prefix.
fn score_with(
    dec: &Decoder,
    vars: &[(String, Var)],
    mode: AdapterMode,
    how: Scoring,
) -> (Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
    let prefix = vec![3u32, 14, 15, 92, 65, 35];
    let conts = vec![vec![8u32, 9, 7], vec![93u32], vec![2u32, 38, 46, 26, 43]];
    let concat: Vec<Vec<u32>> = conts.iter().map(|c| [prefix.clone(), c.clone()].concat()).collect();
    let from = vec![prefix.len(); conts.len()];
    let loss_of = |lp: &Tensor, ent: &Tensor| {
        ((lp.sum_all().unwrap() * -1.0).unwrap() + (ent.sum_all().unwrap() * 0.1).unwrap()).unwrap()
    };
    let (lp, ent, grads) = match how {
        Scoring::Concatenated => {
            let (lp, ent) = dec.score_tokens(&concat, &from, 0, mode).unwrap();
            let grads = loss_of(&lp, &ent).backward().unwrap();
            (lp, ent, grads)
        }
        Scoring::Shared(backprop) => {
            let s = dec.score_continuations(&prefix, &conts, 0, mode, 1.0, backprop).unwrap();
            let grads = s.backward(&loss_of(&s.logprobs, &s.entropies)).unwrap();
            (s.logprobs.clone(), s.entropies.clone(), grads)
        }
    };
    let g = vars
        .iter()
        .map(|(name, v)| {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{how:?}: no gradient for {name}"));
            g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        })
        .collect();
    (lp.to_vec1::<f32>().unwrap(), ent.to_vec1::<f32>().unwrap(), g)
}

fn assert_same_scores(
    what: &str,
    vars: &[(String, Var)],
    a: &(Vec<f32>, Vec<f32>, Vec<Vec<f32>>),
    b: &(Vec<f32>, Vec<f32>, Vec<Vec<f32>>),
) {
    assert_eq!(a.0.len(), 9);
    assert_eq!(a.0.len(), b.0.len());
    for (x, y) in a.0.iter().zip(&b.0).chain(a.1.iter().zip(&b.1)) {
        assert!((x - y).abs() < 1e-4, "{what}: {x} vs {y}");
    }
    for ((name, _), (ga, gb)) in vars.iter().zip(a.2.iter().zip(&b.2)) {
        assert!(ga.iter().any(|x| *x != 0.0), "{what}: gradient of {name} is all zero");
        for (x, y) in ga.iter().zip(gb) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}: gradient of {name}: {x} vs {y}");
        }
    }
}

#[test]
fn shared_prefix_scoring_equals_scoring_the_concatenations() {
    for arch in ARCHS {
        let mut dec = tiny_decoder(arch, 12);
        let vars = dec.make_trainable().unwrap();
        let mode = AdapterMode::default();
        let reference = score_with(&dec, &vars, mode, Scoring::Concatenated);
        for backprop in [Backprop::Full, Backprop::Checkpointed] {
            let shared = score_with(&dec, &vars, mode, Scoring::Shared(backprop));
            assert_same_scores(&format!("{arch:?} full fine-tuning, {backprop:?}"), &vars, &shared, &reference);
        }
    }
}

#[test]
fn checkpointed_backward_matches_the_full_graph_with_lora_and_dropout() {
    for arch in ARCHS {
        let mut dec = tiny_decoder(arch, 12);
        let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, ..LoraConfig::default() };
        let vars = dec.add_lora(&cfg, 7).unwrap();
        // Non-zero B so that adapters change the forward, and dropout masks that must be recomputed identically.
        for (_, v) in &vars {
            v.set(&Tensor::randn(0f32, 0.05, v.shape(), v.device()).unwrap()).unwrap();
        }
        let mode = AdapterMode { enabled: true, dropout_seed: Some(11) };
        let full = score_with(&dec, &vars, mode, Scoring::Shared(Backprop::Full));
        let checkpointed = score_with(&dec, &vars, mode, Scoring::Shared(Backprop::Checkpointed));
        assert_same_scores(&format!("{arch:?} LoRA"), &vars, &checkpointed, &full);
    }
}

#[test]
fn scores_without_gradients_refuse_a_backward() {
    let dec = tiny_decoder(ARCHS[0], 12);
    let s =
        dec.score_continuations(&[1, 2, 3], &[vec![4, 5]], 0, AdapterMode::default(), 1.0, Backprop::None).unwrap();
    assert_eq!(s.logprobs.dims(), &[2]);
    assert!(!s.logprobs.track_op());
    assert!(s.backward(&s.logprobs.sum_all().unwrap()).is_err());
}

/// Every op with a CPU kernel (blocked attention, fused log-probs, LoRA's frozen matmul, the one-row decode
/// matmul) has a portable twin built from candle ops, which GPUs run. Forced on the CPU, the portable path must
/// give the same log-probs, entropies and gradients (full fine-tuning and LoRA) and the same cached decoding.
#[test]
fn the_portable_path_a_gpu_takes_equals_the_cpu_kernels() {
    for arch in ARCHS {
        let mut dec = tiny_decoder(arch, 13);
        let vars = dec.make_trainable().unwrap();
        let mode = AdapterMode::default();
        let fast = score_with(&dec, &vars, mode, Scoring::Shared(Backprop::Full));
        let portable = with_portable_kernels(|| score_with(&dec, &vars, mode, Scoring::Shared(Backprop::Full)));
        assert_same_scores(&format!("{arch:?} full fine-tuning"), &vars, &portable, &fast);

        let mut dec = tiny_decoder(arch, 14);
        let vars = dec.add_lora(&LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() }, 2).unwrap();
        for (_, v) in &vars {
            v.set(&Tensor::randn(0f32, 0.05, v.shape(), v.device()).unwrap()).unwrap();
        }
        let mode = AdapterMode { enabled: true, dropout_seed: None };
        let fast = score_with(&dec, &vars, mode, Scoring::Shared(Backprop::Full));
        let portable = with_portable_kernels(|| score_with(&dec, &vars, mode, Scoring::Shared(Backprop::Full)));
        assert_same_scores(&format!("{arch:?} LoRA"), &vars, &portable, &fast);

        let seq = seqs()[0].clone();
        let fast = cached_logprobs(&dec, &seq, 3);
        let portable = with_portable_kernels(|| cached_logprobs(&dec, &seq, 3));
        for (a, b) in portable.iter().zip(&fast) {
            assert!((a - b).abs() < 1e-4, "{arch:?}: portable decoding {a} vs CPU kernels {b}");
        }
    }
}

/// Largest per-token log-prob difference (nats) allowed between bf16 and f32 on these tiny models: their logits
/// span tens of nats (init scale 10), and a bf16 value carries 8 significant bits.
const BF16_TOLERANCE: f32 = 0.5;

/// bf16 computes the same model: log-probs within [`BF16_TOLERANCE`] of f32, cached decoding agreeing with the
/// bf16 training forward, and gradients (in bf16) reaching every parameter.
#[test]
fn bf16_stays_close_to_f32_and_trains() {
    for arch in ARCHS {
        let reference = tiny_decoder(arch, 15);
        let mut half = tiny_decoder_in(arch, 15, DType::BF16);
        let s = seqs();
        let lp = |d: &Decoder| {
            let (lp, _) = d.score_tokens(&s, &[1, 1], 0, AdapterMode::default()).unwrap();
            lp.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()
        };
        let (want, got) = (lp(&reference), lp(&half));
        let worst = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= BF16_TOLERANCE && got.iter().all(|x| x.is_finite()), "{arch:?}: bf16 off by {worst}");
        assert!(got.iter().zip(&want).any(|(a, b)| a != b), "{arch:?}: bf16 gave f32's exact values: not bf16?");

        let cached = cached_logprobs(&half, &s[0], 3);
        for (a, b) in cached.iter().zip(&got[2..s[0].len() - 1]) {
            assert!((a - b).abs() <= BF16_TOLERANCE, "{arch:?}: bf16 cached {a} vs training forward {b}");
        }

        let vars = half.make_trainable().unwrap();
        let (lp, _) = half.score_tokens(&s, &[1, 1], 0, AdapterMode::default()).unwrap();
        let grads = (lp.sum_all().unwrap() * -1.0).unwrap().backward().unwrap();
        for (name, var) in &vars {
            assert_eq!(var.dtype(), DType::BF16, "{name}");
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{arch:?}: no bf16 gradient for {name}"));
            assert!(sum_sq(g).unwrap() > 0.0, "{arch:?}: zero bf16 gradient for {name}");
        }
    }
}

#[test]
fn decode_weight_bytes_count_every_parameter_once_and_adapters_only_when_enabled() {
    let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
    for arch in ARCHS {
        let mut dec = tiny_decoder_in(arch, 1, DType::F32);
        let all: usize = dec.named_tensors().iter().map(|(_, t)| bytes(t)).sum();
        // A tied head is the embedding, read once as the head; an untied one leaves the embedding unread.
        let embed = bytes(&dec.named_tensors()[0].1);
        let expected = if dec.config().tie_word_embeddings { all } else { all - embed };
        assert_eq!(dec.decode_weight_bytes(AdapterMode::default()), expected, "{arch:?}");
        let adapters: usize = dec
            .add_lora(&LoraConfig { rank: 2, ..Default::default() }, 1)
            .unwrap()
            .iter()
            .map(|(_, v)| bytes(v))
            .sum();
        assert_eq!(dec.decode_weight_bytes(AdapterMode::default()), expected, "{arch:?}: adapters off");
        let on = AdapterMode { enabled: true, dropout_seed: None };
        assert_eq!(dec.decode_weight_bytes(on), expected + adapters, "{arch:?}: adapters on");
    }
}

/// `prompts` left-padded to the longest as one prefill batch: ids and rotary positions (rows, longest), and per row
/// which keys are real tokens.
fn left_padded(prompts: &[Vec<u32>]) -> (Tensor, Tensor, Vec<Vec<bool>>) {
    let (rows, longest) = (prompts.len(), prompts.iter().map(Vec::len).max().unwrap());
    let (mut ids, mut pos, mut valid) = (Vec::new(), Vec::new(), Vec::new());
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(0u32, pad).chain(p.iter().copied()));
        pos.extend(std::iter::repeat_n(0u32, pad).chain(0..p.len() as u32));
        valid.push([vec![false; pad], vec![true; p.len()]].concat());
    }
    let dev = test_device();
    (
        Tensor::from_vec(ids, (rows, longest), &dev).unwrap(),
        Tensor::from_vec(pos, (rows, longest), &dev).unwrap(),
        valid,
    )
}

/// Log-probs and entropies of `conts[r]` after `prompts[r]`, decoded as one batch through the KV cache: the
/// prompts left-padded and prefilled together, then one token per row per step.
fn batched_cached_scores(
    dec: &Decoder,
    prompts: &[Vec<u32>],
    conts: &[Vec<u32>],
    mode: AdapterMode,
) -> (Vec<f32>, Vec<f32>) {
    let dev = test_device();
    let rows = prompts.len();
    let (longest, steps) = (prompts.iter().map(Vec::len).max().unwrap(), conts[0].len());
    let mut cache = dec.new_cache(rows, longest + steps).unwrap();
    let (mut step_ids, mut step_pos, mut valid) = left_padded(prompts);
    // Per step, per row: (log-prob of the continuation's token, entropy).
    let mut scores: Vec<Vec<(f32, f32)>> = vec![Vec::new(); rows];
    for s in 0..steps {
        let logits = dec.decode(&step_ids, &step_pos, &valid, &mut cache, mode).unwrap();
        let lsm = log_softmax(&logits, 1).unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in lsm.iter().enumerate() {
            let entropy = -row.iter().map(|l| l.exp() * l).sum::<f32>();
            scores[r].push((row[conts[r][s] as usize], entropy));
            valid[r].push(true);
        }
        let next: Vec<u32> = conts.iter().map(|c| c[s]).collect();
        let next_pos: Vec<u32> = prompts.iter().map(|p| (p.len() + s) as u32).collect();
        step_ids = Tensor::from_vec(next, (rows, 1), &dev).unwrap();
        step_pos = Tensor::from_vec(next_pos, (rows, 1), &dev).unwrap();
    }
    scores.into_iter().flatten().unzip()
}

/// The block that training and decoding share computes the same model on both paths: decoding batches of 1 to 20
/// rows (the few-rows kernel in its row range, 1 to 16 unless calibrated, candle's matmul beyond), left-padded, with LoRA adapters on, gives
/// the log-probs and entropies the training forward gives for the same sequences.
#[test]
fn batched_cached_decoding_with_lora_equals_the_training_forward() {
    for arch in ARCHS {
        let mut dec = tiny_decoder(arch, 16);
        let vars = dec.add_lora(&LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() }, 5).unwrap();
        for (_, v) in &vars {
            v.set(&Tensor::randn(0f32, 0.05, v.shape(), v.device()).unwrap()).unwrap();
        }
        let mode = AdapterMode { enabled: true, dropout_seed: None };
        for rows in [1usize, 3, 9, 20] {
            let (prompts, conts) = (prompts(rows, 2), conts(rows));
            let cached = batched_cached_scores(&dec, &prompts, &conts, mode);
            let training = training_scores(&dec, &prompts, &conts, mode);
            assert_close(&cached, &training, &format!("{arch:?}, {rows} rows: cached vs training"));
        }
    }
}

/// `rows` prompts of `len` to `len + 4` tokens.
fn prompts(rows: usize, len: usize) -> Vec<Vec<u32>> {
    (0..rows).map(|r| (0..len + r % 5).map(|i| ((r * 7 + i * 13 + 1) % 97) as u32).collect()).collect()
}

/// Log-probs and entropies of `conts[r]` after `prompts[r]` from the training forward.
fn training_scores(
    dec: &Decoder,
    prompts: &[Vec<u32>],
    conts: &[Vec<u32>],
    mode: AdapterMode,
) -> (Vec<f32>, Vec<f32>) {
    let seqs: Vec<Vec<u32>> = prompts.iter().zip(conts).map(|(p, c)| [p.clone(), c.clone()].concat()).collect();
    let from: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let (lp, ent) = dec.score_tokens(&seqs, &from, 0, mode).unwrap();
    (lp.to_vec1::<f32>().unwrap(), ent.to_vec1::<f32>().unwrap())
}

/// Log-probs and entropies agree token by token to 1e-4 (relative to 1 + |want|).
fn assert_close((lp, ent): &(Vec<f32>, Vec<f32>), (want_lp, want_ent): &(Vec<f32>, Vec<f32>), what: &str) {
    assert_eq!((lp.len(), ent.len()), (want_lp.len(), want_ent.len()), "{what}");
    for (a, b) in lp.iter().zip(want_lp).chain(ent.iter().zip(want_ent)) {
        assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{what}: {a} vs {b}");
    }
}

/// The bf16 sampling copy decodes the model whose weight matrices (embedding, projections, head) are rounded to
/// bf16 and whose norms and biases are not: batched cached decoding with the copy, LoRA on, at 1 to 20 rows (and a
/// prefill of more rows than the few-rows kernel takes) equals that rounded model's training forward. Setting f32
/// again gives back the f32 model's decoding exactly.
#[test]
fn a_bf16_sampling_copy_decodes_the_model_with_rounded_weight_matrices() {
    use ideator_model::device::Precision;
    if !test_device().is_cpu() {
        return; // The copy is a CPU feature (a GPU decoder is refused; tested below).
    }
    let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
    for arch in ARCHS {
        let mut dec = tiny_decoder(arch, 16);
        let tensors: std::collections::HashMap<String, Tensor> = dec
            .named_tensors()
            .into_iter()
            .map(|(n, t)| {
                let t = if t.rank() == 2 { round(&t) } else { t };
                (n, t)
            })
            .collect();
        let mut rounded =
            Decoder::from_tensors(dec.config().clone(), tensors, None, DType::F32, &test_device()).unwrap();
        let lora = LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() };
        let vars = dec.add_lora(&lora, 5).unwrap();
        let rounded_vars = rounded.add_lora(&lora, 5).unwrap();
        for ((_, v), (_, r)) in vars.iter().zip(&rounded_vars) {
            v.set(&Tensor::randn(0f32, 0.05, v.shape(), v.device()).unwrap()).unwrap();
            r.set(v.as_tensor()).unwrap();
        }
        let mode = AdapterMode { enabled: true, dropout_seed: None };
        let f32_before = batched_cached_scores(&dec, &prompts(3, 2), &conts(3), mode);
        dec.set_sampling_precision(Precision::Bf16).unwrap();
        assert_eq!(dec.sampling_precision(), Precision::Bf16);
        for (rows, len) in [(1usize, 2usize), (3, 2), (9, 2), (20, 2), (2, 40)] {
            let (prompts, conts) = (prompts(rows, len), conts(rows));
            let copy = batched_cached_scores(&dec, &prompts, &conts, mode);
            let training = training_scores(&rounded, &prompts, &conts, mode);
            assert_close(&copy, &training, &format!("{arch:?}, {rows} rows: copy vs rounded"));
        }
        dec.set_sampling_precision(Precision::F32).unwrap();
        assert_eq!(batched_cached_scores(&dec, &prompts(3, 2), &conts(3), mode), f32_before, "{arch:?}");
    }
}

/// Decoding's f32 copy (packed tiles on AVX-512, decode_copy.rs) is of the weights as they were when built: after a
/// full-fine-tuning update and `refresh_sampling_copy`, batched decoding (8 rows, the copy's kernel) gives the new
/// weights' training scores (and before the refresh it does not: the copy is what decoding reads). The frozen reference made from it decodes the same. Skipped (with a line) where the copy is not packed.
#[test]
fn the_f32_decode_copy_follows_the_weights_after_a_refresh() {
    let rows = 8;
    if tiny_decoder(ARCHS[0], 1).decode_kernel(rows) != "packed_avx512" || !test_device().is_cpu() {
        eprintln!("skipped: decoding at {rows} rows does not use the packed copy on this machine");
        return;
    }
    let (prompts, conts) = (prompts(rows, 2), conts(rows));
    let mode = AdapterMode::default();
    for arch in ARCHS {
        let mut dec = tiny_decoder(arch, 21);
        let before = batched_cached_scores(&dec, &prompts, &conts, mode);
        assert_close(&before, &training_scores(&dec, &prompts, &conts, mode), &format!("{arch:?} before"));
        let vars = dec.make_trainable().unwrap();
        assert_eq!(batched_cached_scores(&dec, &prompts, &conts, mode), before, "{arch:?}: trainable, unchanged");
        // The projections, which decoding reads through their copies (norms and the embedding it reads directly).
        for (_, v) in vars.iter().filter(|(name, _)| name.ends_with("_proj.weight")) {
            v.set(&(v.as_tensor() * 0.7).unwrap()).unwrap();
        }
        // The copies are in use: without a refresh, the decode steps still read the old projections.
        let training = training_scores(&dec, &prompts, &conts, mode);
        let stale = batched_cached_scores(&dec, &prompts, &conts, mode);
        assert!(stale.0.iter().zip(&training.0).any(|(a, b)| (a - b).abs() > 1e-2), "{arch:?}: no copy in use");
        dec.refresh_sampling_copy().unwrap();
        let after = batched_cached_scores(&dec, &prompts, &conts, mode);
        assert_close(&after, &training, &format!("{arch:?} after the update"));
        assert!(
            after.0.iter().zip(&before.0).any(|(a, b)| (a - b).abs() > 1e-2),
            "{arch:?}: the update changed nothing"
        );
        let reference = dec.frozen_copy().unwrap();
        assert_eq!(batched_cached_scores(&reference, &prompts, &conts, mode), after, "{arch:?} reference");
    }
}

/// Four continuation tokens per row.
fn conts(rows: usize) -> Vec<Vec<u32>> {
    (0..rows).map(|r| (0..4).map(|s| ((r * 5 + s * 11 + 3) % 97) as u32).collect()).collect()
}

/// The copy halves what a decode step reads: the weight matrices count 2 bytes per value, the rest 4.
#[test]
fn a_bf16_sampling_copy_halves_the_matrices_a_decode_step_reads_and_is_refused_off_the_cpu_f32_path() {
    use ideator_model::device::Precision;
    let mut dec = tiny_decoder(ARCHS[1], 1);
    let f32_bytes = dec.decode_weight_bytes(AdapterMode::default());
    let vectors: usize = dec
        .named_tensors()
        .iter()
        .filter(|(n, t)| t.rank() == 1 && !n.contains("embed"))
        .map(|(_, t)| 4 * t.elem_count())
        .sum();
    if test_device().is_cpu() {
        dec.set_sampling_precision(Precision::Bf16).unwrap();
        assert_eq!(dec.decode_weight_bytes(AdapterMode::default()), (f32_bytes - vectors) / 2 + vectors);
    } else {
        assert!(dec.set_sampling_precision(Precision::Bf16).is_err());
    }
    let mut bf16 = tiny_decoder_in(ARCHS[1], 1, DType::BF16);
    let err = bf16.set_sampling_precision(Precision::Bf16).unwrap_err().to_string();
    assert!(err.contains("needs an f32 decoder on the CPU") && err.contains("keep dtype f32"), "{err}");
}

/// A kept prompt pass scores continuations exactly as scoring prompt and continuations together, for several
/// continuation sets after one pass, with adapters on and off.
#[test]
fn kept_prefix_states_score_like_the_shared_prefix_forward_bit_for_bit() {
    let prefix: Vec<u32> = (0..70u32).map(|i| (i * 13) % 90 + 1).collect();
    let sets = [conts(3), vec![vec![7, 8], vec![9, 10, 11, 12, 13, 14], vec![2]]];
    for arch in ARCHS {
        let mut dec = tiny_decoder(arch, 15);
        for (_, v) in dec.add_lora(&LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() }, 3).unwrap() {
            v.set(&Tensor::randn(0f32, 0.05, v.shape(), v.device()).unwrap()).unwrap();
        }
        for enabled in [false, true] {
            let mode = AdapterMode { enabled, dropout_seed: None };
            let states = dec.prefix_states(&prefix, mode).unwrap();
            assert_eq!(states.prefix(), prefix.as_slice());
            for set in &sets {
                let kept = dec.score_after_prefix(&states, set, 0, 0.9).unwrap().to_vec1::<f32>().unwrap();
                let whole = dec.score_continuations(&prefix, set, 0, mode, 0.9, Backprop::None).unwrap();
                let whole = whole.logprobs.to_vec1::<f32>().unwrap();
                assert_eq!(kept, whole, "{arch:?}, adapters {enabled}");
            }
        }
        let states = dec.prefix_states(&prefix, AdapterMode::default()).unwrap();
        assert!(dec.score_after_prefix(&states, &[vec![]], 0, 1.0).is_err(), "an empty continuation is refused");
        assert!(dec.score_after_prefix(&states, &conts(2), 0, 0.0).is_err(), "temperature 0 is refused");
        assert!(dec.prefix_states(&[], AdapterMode::default()).is_err(), "an empty prefix is refused");
    }
}

/// Logits of `prompt_of_row.len()` rows continuing `prompts` (left-padded, prefilled once each) by `conts`, one
/// token per step, the rows `keep` alone kept after step 1: the prompts' cache either copied to every row
/// (`shared` false) or read in place (`KvCache::into_shared_prompts`).
fn logits_after_prompts(
    dec: &Decoder,
    prompts: &[Vec<u32>],
    prompt_of_row: &[usize],
    keep: &[usize],
    shared: bool,
) -> Vec<Vec<f32>> {
    let dev = test_device();
    let (width, steps) = (prompts.iter().map(Vec::len).max().unwrap(), 4);
    let (ids, pos, prompt_valid) = left_padded(prompts);
    let mode = AdapterMode::default();
    let mut cache = dec.new_cache(prompts.len(), if shared { width } else { width + steps }).unwrap();
    dec.decode(&ids, &pos, &prompt_valid, &mut cache, mode).unwrap();
    if shared {
        cache = cache.into_shared_prompts(prompt_of_row, steps).unwrap();
    } else {
        cache.select_rows(prompt_of_row).unwrap();
    }
    let mut rows: Vec<usize> = (0..prompt_of_row.len()).collect();
    let mut valid: Vec<Vec<bool>> = prompt_of_row.iter().map(|&p| prompt_valid[p].clone()).collect();
    let mut out = Vec::new();
    for s in 0..steps {
        if s == 2 {
            cache.select_rows(keep).unwrap();
            rows = keep.iter().map(|&i| rows[i]).collect();
            valid = keep.iter().map(|&i| valid[i].clone()).collect();
        }
        let next: Vec<u32> = rows.iter().map(|&r| ((r * 31 + s * 7 + 3) % 97) as u32).collect();
        let next_pos: Vec<u32> = rows.iter().map(|&r| (prompts[prompt_of_row[r]].len() + s) as u32).collect();
        valid.iter_mut().for_each(|v| v.push(true));
        let (n, p) = (rows.len(), next_pos);
        let ids = Tensor::from_vec(next, (n, 1), &dev).unwrap();
        let pos = Tensor::from_vec(p, (n, 1), &dev).unwrap();
        out.extend(dec.decode(&ids, &pos, &valid, &mut cache, mode).unwrap().to_vec2::<f32>().unwrap());
    }
    out
}

/// Rows that continue shared prompts, reading the prompts' keys and values in place, decode exactly as rows that
/// each hold a copy of their prompt's cache: with padded prompts, rows out of prompt order, rows dropped midway,
/// on the fused kernel and on the portable path (which copies the prompts in front of each row).
#[test]
fn decoding_after_shared_prompts_equals_decoding_after_copies() {
    let prompts = vec![vec![5u32, 17, 3, 88, 42, 7], vec![11, 2, 33, 4, 96, 1, 8, 19, 23]];
    let (prompt_of_row, keep) = ([1usize, 0, 1, 1, 0], [4usize, 0, 2]);
    for arch in ARCHS {
        let dec = tiny_decoder(arch, 21);
        let copies = logits_after_prompts(&dec, &prompts, &prompt_of_row, &keep, false);
        let shared = logits_after_prompts(&dec, &prompts, &prompt_of_row, &keep, true);
        assert_eq!(copies, shared, "{arch:?}: fused kernel");
        let portable = with_portable_kernels(|| logits_after_prompts(&dec, &prompts, &prompt_of_row, &keep, true));
        let portable_copies =
            with_portable_kernels(|| logits_after_prompts(&dec, &prompts, &prompt_of_row, &keep, false));
        assert_eq!(portable, portable_copies, "{arch:?}: portable path");
        for (a, b) in portable.iter().flatten().zip(shared.iter().flatten()) {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{arch:?}: portable {a} vs fused {b}");
        }
    }
}

/// A shared-prompt cache refuses a prompt it does not hold, a second sharing, and dropping a row it does not have.
#[test]
fn shared_prompt_caches_refuse_rows_they_do_not_have() {
    let dec = tiny_decoder(ARCHS[0], 3);
    let cache = dec.new_cache(2, 4).unwrap();
    let err = cache.clone().into_shared_prompts(&[0, 2], 4).unwrap_err().to_string();
    assert!(err.contains("prompt 2 of 2"), "{err}");
    let mut shared = cache.into_shared_prompts(&[1, 1, 0], 4).unwrap();
    assert_eq!((shared.batch(), shared.capacity()), (3, 4));
    let err = shared.clone().into_shared_prompts(&[0], 4).unwrap_err().to_string();
    assert!(err.contains("already"), "{err}");
    let err = shared.select_rows(&[3]).unwrap_err().to_string();
    assert!(err.contains("sequence 3"), "{err}");
    shared.select_rows(&[2, 0]).unwrap();
    assert_eq!(shared.batch(), 2);
}
