//! Self-BLEU and Vendi score against independent reference values (NLTK and numpy), made by
//! `scripts/make_metrics_fixture.py` into `fixtures/metrics_reference.json`.

use ideator_diagnostics::diversity::self_bleu;
use ideator_diagnostics::text::tokenize;
use ideator_diagnostics::vendi::vendi_score;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    self_bleu: Vec<BleuCase>,
    vendi: Vec<VendiCase>,
}

#[derive(Deserialize)]
struct BleuCase {
    texts: Vec<String>,
    self_bleu: f64,
}

#[derive(Deserialize)]
struct VendiCase {
    vectors: Vec<Vec<f32>>,
    vendi: f64,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/metrics_reference.json")).expect("metrics fixture parses")
}

#[test]
fn self_bleu_matches_nltk() {
    for case in fixture().self_bleu {
        let tokens: Vec<Vec<String>> = case.texts.iter().map(|t| tokenize(t)).collect();
        let got = self_bleu(&tokens).unwrap();
        assert!((got - case.self_bleu).abs() < 1e-12, "{got} vs NLTK {} for {:?}", case.self_bleu, case.texts);
    }
}

#[test]
fn vendi_matches_numpy() {
    for case in fixture().vendi {
        let got = vendi_score(&case.vectors).unwrap();
        assert!((got - case.vendi).abs() < 1e-9, "{got} vs numpy {}", case.vendi);
    }
}
