//! Every parameter of every architecture variant receives a gradient (candle's fused ops would silently cut it),
//! and the optimisers reduce the loss of a tiny model.

use candle_core::Tensor;
use ideator_envs::pretrain::gpt::{Activation, Gpt, GptConfig, NormKind, Positions};
use ideator_envs::pretrain::optim::{newton_schulz, OptimConfig, Optimizer, OptimizerKind};
use ideator_model::device::test_device;

fn base() -> GptConfig {
    GptConfig {
        n_layer: 2,
        d_model: 16,
        n_head: 2,
        mlp_hidden: 32,
        max_len: 8,
        norm: NormKind::LayerNorm,
        post_norm: false,
        qk_norm: false,
        activation: Activation::Gelu,
        positions: Positions::Learned,
        tied_embeddings: true,
        logit_softcap: None,
        init_std: 0.1,
        zero_init_head: false,
    }
}

fn batch() -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..2 * 9).map(|i| (i * 37 % 256) as u32).collect();
    let t = Tensor::from_vec(ids, (2, 9), &test_device()).unwrap();
    (t.narrow(1, 0, 8).unwrap().contiguous().unwrap(), t.narrow(1, 1, 8).unwrap().contiguous().unwrap())
}

fn variants() -> Vec<(&'static str, GptConfig)> {
    let b = base();
    vec![
        ("baseline", b.clone()),
        ("rmsnorm", GptConfig { norm: NormKind::RmsNorm, ..b.clone() }),
        ("post-norm", GptConfig { post_norm: true, ..b.clone() }),
        ("post-rmsnorm", GptConfig { post_norm: true, norm: NormKind::RmsNorm, ..b.clone() }),
        ("qk-norm", GptConfig { qk_norm: true, ..b.clone() }),
        ("relu2", GptConfig { activation: Activation::ReluSquared, ..b.clone() }),
        ("swiglu", GptConfig { activation: Activation::SwiGlu, ..b.clone() }),
        ("rope", GptConfig { positions: Positions::Rope { base: 10000.0 }, ..b.clone() }),
        ("rope+qk-norm", GptConfig { positions: Positions::Rope { base: 500.0 }, qk_norm: true, ..b.clone() }),
        ("untied", GptConfig { tied_embeddings: false, ..b.clone() }),
        ("softcap", GptConfig { logit_softcap: Some(2.0), ..b.clone() }),
        ("untied+zero-head", GptConfig { tied_embeddings: false, zero_init_head: true, ..b }),
    ]
}

#[test]
fn every_parameter_gets_a_gradient_in_every_variant() {
    let (x, y) = batch();
    for (name, cfg) in variants() {
        let zero_head = cfg.zero_init_head;
        let model = Gpt::new(cfg.clone(), 3, &test_device()).unwrap();
        let (ce, z) = model.loss(&x, &y).unwrap();
        let loss = (ce + (z * 1e-3).unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let expected = cfg.total_params();
        let counted: usize = model.params().iter().map(|(_, v, _)| v.elem_count()).sum();
        assert_eq!(counted, expected, "{name}: parameter count");
        for (pname, var, _) in model.params() {
            let g = grads.get(var).unwrap_or_else(|| panic!("{name}: {pname} has no gradient"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            // A zero head blocks the gradient to everything below it at the first step (by design).
            if zero_head && pname != "head" {
                continue;
            }
            assert!(norm > 0.0 && norm.is_finite(), "{name}: {pname} has gradient norm {norm}");
        }
    }
}

#[test]
fn each_optimizer_lowers_the_training_loss() {
    let (x, y) = batch();
    for (kind, lr) in [
        (OptimizerKind::AdamW, 1e-2),
        (OptimizerKind::Lion, 1e-3),
        (OptimizerKind::Sgd, 0.05),
        (OptimizerKind::Muon, 1e-2),
    ] {
        let model = Gpt::new(base(), 1, &test_device()).unwrap();
        let cfg = OptimConfig { kind, beta1: 0.9, beta2: 0.95, weight_decay: 0.0, momentum: 0.9, eps: 1e-8 };
        let vars: Vec<_> = model.params().iter().map(|(_, v, _)| v.clone()).collect();
        let mut opt = Optimizer::new(cfg, model.params().iter().map(|(_, v, r)| (v.clone(), *r)).collect()).unwrap();
        let first = model.loss(&x, &y).unwrap().0.to_scalar::<f32>().unwrap();
        for _ in 0..20 {
            let (ce, _) = model.loss(&x, &y).unwrap();
            let g = ce.backward().unwrap();
            let grads: Vec<_> = vars.iter().map(|v| g.get(v).map(Tensor::detach)).collect();
            opt.step(&grads, lr, 0.05).unwrap();
        }
        let last = model.loss(&x, &y).unwrap().0.to_scalar::<f32>().unwrap();
        assert!(last < first - 0.5, "{kind:?}: loss {first} -> {last}");
    }
}

#[test]
fn newton_schulz_roughly_orthogonalises() {
    // A pseudo-random matrix with rows scaled from 1 to 8 (condition number well above 1).
    let (r, c) = (8usize, 32usize);
    let mut state = 12345u64;
    let data: Vec<f32> = (0..r * c)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * (1 + i / c) as f32
        })
        .collect();
    let g = Tensor::from_vec(data, (r, c), &test_device()).unwrap();
    for m in [g.clone(), g.t().unwrap().contiguous().unwrap()] {
        let o = newton_schulz(&m).unwrap();
        assert_eq!(o.dims(), m.dims());
        let small = if m.dims()[0] <= m.dims()[1] { o.matmul(&o.t().unwrap()) } else { o.t().unwrap().matmul(&o) };
        let gram = small.unwrap().to_vec2::<f32>().unwrap();
        for (i, row) in gram.iter().enumerate() {
            // Muon's quintic deliberately lands singular values in roughly [0.7, 1.2], not exactly 1.
            assert!((0.4..1.5).contains(&row[i]), "diagonal {i}: {}", row[i]);
            for (j, v) in row.iter().enumerate() {
                if i != j {
                    assert!(v.abs() < 0.35, "off-diagonal ({i}, {j}): {v}");
                }
            }
        }
    }
}
