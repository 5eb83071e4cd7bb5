//! The MiniLM embedder against sentence-transformers (`fixtures/minilm_reference.json`, made by
//! `scripts/make_embedding_fixture.py`), and the diagnostics that use real embeddings: Vendi score of the
//! reference batch and the collapse alarm. Needs the fetched assets (scripts/fetch-assets.sh).

use std::collections::BTreeSet;
use std::sync::OnceLock;

use candle_core::Device;
use ideator_diagnostics::embed::{MiniLmEmbedder, SentenceEmbedder};
use ideator_diagnostics::{
    check_collapse, AlarmConfig, AlarmKind, BatchDiagnostics, Category, DiversityMetric, ScoredIdea,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    sentences: Vec<String>,
    word_pieces_untruncated: Vec<usize>,
    first_dims: Vec<Vec<f32>>,
    cosine: Vec<Vec<f64>>,
    vendi: f64,
}

fn reference() -> Reference {
    serde_json::from_str(include_str!("fixtures/minilm_reference.json")).expect("embedding fixture parses")
}

/// One embedder for the whole file: loading takes a moment and the tests only read it.
fn embedder() -> &'static MiniLmEmbedder {
    static EMBEDDER: OnceLock<MiniLmEmbedder> = OnceLock::new();
    EMBEDDER
        .get_or_init(|| MiniLmEmbedder::load_default(&Device::Cpu).expect("MiniLM assets load").with_batch_size(3))
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

#[test]
fn embeddings_match_sentence_transformers() {
    let reference = reference();
    let emb = embedder();
    assert_eq!(emb.max_seq_length(), reference.max_seq_length);
    // The fixture must exercise truncation: one text above 256 word pieces and one between 128 and 256.
    assert!(reference.word_pieces_untruncated.iter().any(|&n| n > 256));
    assert!(reference.word_pieces_untruncated.iter().any(|&n| n > 128 && n <= 256));

    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let got = emb.embed(&texts).unwrap();
    assert_eq!(got.len(), texts.len());
    for (i, row) in got.iter().enumerate() {
        assert_eq!(row.len(), emb.dim());
        assert!((dot(row, row) - 1.0).abs() < 1e-5, "embedding {i} is not unit length");
        // Cosine between our vector and the reference, on the dimensions the fixture keeps (a unit vector's first
        // 8 coordinates already pin its direction there), plus the coordinates themselves.
        let want = &reference.first_dims[i];
        let cos = dot(&row[..8], want) / (dot(&row[..8], &row[..8]).sqrt() * dot(want, want).sqrt());
        assert!(cos > 0.999, "sentence {i}: cosine {cos} on the first 8 dims");
        for (a, b) in row[..8].iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "sentence {i}: {a} vs {b}");
        }
    }
    // The full-vector cosine matrix: every pair, so each sentence is checked against all reference directions.
    for i in 0..got.len() {
        for j in 0..got.len() {
            let c = dot(&got[i], &got[j]);
            assert!((c - reference.cosine[i][j]).abs() < 1e-3, "cos[{i}][{j}] = {c} vs {}", reference.cosine[i][j]);
        }
    }
    let vendi = ideator_diagnostics::vendi::vendi_score(&got).unwrap();
    assert!(
        (vendi - reference.vendi).abs() < 1e-3,
        "Vendi {vendi} vs numpy on sentence-transformers {}",
        reference.vendi
    );
}

#[test]
fn batching_and_order_do_not_change_embeddings() {
    let reference = reference();
    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let batched = embedder().embed(&texts).unwrap();
    for (i, text) in texts.iter().enumerate().take(4) {
        let alone = embedder().embed(&[text]).unwrap();
        assert!(dot(&alone[0], &batched[i]) > 0.99999, "sentence {i} changes with its batch");
    }
}

#[test]
fn missing_assets_say_how_to_fetch_them() {
    let dir = std::env::temp_dir().join("ideator-diagnostics-no-assets");
    let err = MiniLmEmbedder::load(&dir, &Device::Cpu).err().expect("loading from an empty folder fails").to_string();
    assert!(err.contains("scripts/fetch-assets.sh"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
}

fn category(knobs: &[&str]) -> Category {
    knobs.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>()
}

const DIVERSE: [(&str, &[&str]); 8] = [
    ("Switch the optimiser to Lion with a three times smaller learning rate.", &["optimizer", "lr"]),
    ("Replace GELU with SwiGLU in every feed-forward block.", &["activation"]),
    ("Add QK-norm before the attention softmax to bound the logits.", &["qk_norm"]),
    ("Use a warmup-stable-decay schedule with a ten percent cooldown.", &["schedule"]),
    ("Tie the input embedding and the output projection.", &["tied_embeddings"]),
    ("Keep an exponential moving average of the weights for evaluation.", &["ema"]),
    ("Raise the rotary position base from ten thousand to one hundred thousand.", &["rope_base"]),
    ("Make the model deeper and narrower at the same parameter count.", &["depth", "width"]),
];

const DIVERSE_LATER: [(&str, &[&str]); 8] = [
    ("Clip the global gradient norm at 0.5 instead of 1.0.", &["grad_clip"]),
    ("Add a z-loss term on the logits with weight one in ten thousand.", &["z_loss"]),
    ("Soft-cap the output logits with a tanh at thirty.", &["logit_softcap"]),
    ("Train with Muon on the hidden matrices and AdamW elsewhere.", &["optimizer"]),
    ("Double the batch size and scale the learning rate by the square root.", &["batch", "lr"]),
    ("Move layer normalisation after the residual addition.", &["norm_placement"]),
    ("Initialise output projections with a smaller scale.", &["init_scale"]),
    ("Drop weight decay on the embedding table only.", &["weight_decay"]),
];

const COLLAPSED: [&str; 8] = [
    "Increase the learning rate to 3e-3.",
    "Increase the learning rate to 3e-3.",
    "Increase the learning rate to 2e-3.",
    "Increase the learning rate to 3e-3 .",
    "Increase the learning rate to 4e-3.",
    "Increase the learning rate to 3e-3.",
    "Increase the learning rate to 3e-3!",
    "increase the learning rate to 3e-3.",
];

#[test]
fn alarm_fires_on_collapse_and_stays_quiet_on_diversity() {
    let lr = category(&["lr"]);
    let diverse_cats: Vec<Category> = DIVERSE.iter().map(|(_, k)| category(k)).collect();
    let diverse: Vec<ScoredIdea> = DIVERSE
        .iter()
        .zip(&diverse_cats)
        .enumerate()
        .map(|(i, ((text, _), cat))| ScoredIdea { text, reward: 0.1 * i as f64, executed: true, category: Some(cat) })
        .collect();
    let collapsed: Vec<ScoredIdea> =
        COLLAPSED.iter().map(|text| ScoredIdea { text, reward: 0.3, executed: true, category: Some(&lr) }).collect();

    let start = BatchDiagnostics::compute(&diverse, Some(embedder())).unwrap();
    let late = BatchDiagnostics::compute(&collapsed, Some(embedder())).unwrap();
    let (v0, v1) = (start.embedding.as_ref().unwrap().vendi_score, late.embedding.as_ref().unwrap().vendi_score);
    assert!(v0 > 4.0 && v1 < 1.5, "Vendi: diverse {v0}, collapsed {v1}");

    let config = AlarmConfig::default();
    assert!(check_collapse(&config, &start, &start).is_empty(), "a diverse first batch must not alarm");
    let alarms = check_collapse(&config, &start, &late);
    let fired: Vec<String> = alarms
        .iter()
        .map(|a| match &a.kind {
            AlarmKind::DiversityDrop { metric, .. } => format!("{metric:?}"),
            AlarmKind::CategoryDominance { category, .. } => category.clone(),
        })
        .collect();
    assert_eq!(fired, ["Vendi", "Distinct2", "lr"], "{alarms:#?}");
    assert!(alarms[0].message.contains("Vendi score"), "{}", alarms[0].message);

    // A later batch of other, still diverse ideas: no alarm.
    let later_cats: Vec<Category> = DIVERSE_LATER.iter().map(|(_, k)| category(k)).collect();
    let later: Vec<ScoredIdea> = DIVERSE_LATER
        .iter()
        .zip(&later_cats)
        .map(|((text, _), cat)| ScoredIdea { text, reward: 0.2, executed: true, category: Some(cat) })
        .collect();
    let again = BatchDiagnostics::compute(&later, Some(embedder())).unwrap();
    assert!(check_collapse(&config, &start, &again).is_empty(), "{:#?}", check_collapse(&config, &start, &again));
    let only_vendi = AlarmConfig { watch: vec![DiversityMetric::Vendi], ..AlarmConfig::default() };
    assert_eq!(check_collapse(&only_vendi, &start, &late).len(), 2);
}
