//! The collapse alarm: fires when a diversity measure falls below a configured fraction of its value in the first
//! batch (step 0 or epoch 0), or when one category takes more than a configured share of a batch.
//!
//! Only measures where higher means more diverse can be watched (Vendi score, distinct-n, normalised category
//! entropy); a measure missing from either batch (no embedder, too-short ideas) or zero at the start is skipped,
//! since a fraction of it means nothing. The Vendi score grows with batch size: watch it with equal batches.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::categories::CategoryShare;
use crate::error::{DiagnosticsError, Result};
use crate::summary::BatchDiagnostics;

/// A diversity measure the alarm can watch (higher = more diverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiversityMetric {
    #[serde(rename = "vendi")]
    Vendi,
    #[serde(rename = "distinct_1")]
    Distinct1,
    #[serde(rename = "distinct_2")]
    Distinct2,
    #[serde(rename = "distinct_3")]
    Distinct3,
    #[serde(rename = "category_entropy")]
    CategoryEntropy,
}

impl DiversityMetric {
    /// The measure's value in a batch, if it has one.
    pub fn value(self, d: &BatchDiagnostics) -> Option<f64> {
        match self {
            DiversityMetric::Vendi => d.embedding.as_ref().map(|e| e.vendi_score),
            DiversityMetric::Distinct1 => d.text.distinct_1,
            DiversityMetric::Distinct2 => d.text.distinct_2,
            DiversityMetric::Distinct3 => d.text.distinct_3,
            DiversityMetric::CategoryEntropy => d.categories.normalized_entropy,
        }
    }
}

impl fmt::Display for DiversityMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiversityMetric::Vendi => "Vendi score",
            DiversityMetric::Distinct1 => "distinct-1",
            DiversityMetric::Distinct2 => "distinct-2",
            DiversityMetric::Distinct3 => "distinct-3",
            DiversityMetric::CategoryEntropy => "normalised category entropy",
        })
    }
}

/// Alarm thresholds (e.g. a `[diagnostics.alarm]` table in a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmConfig {
    /// Measures to watch.
    pub watch: Vec<DiversityMetric>,
    /// Fire when a watched measure is below this fraction of its first-batch value (0 < f <= 1).
    pub min_fraction_of_initial: f64,
    /// Fire when one category holds more than this share of the categorised ideas (0 < s <= 1; 1 disables).
    pub max_category_share: f64,
    /// The category alarm needs at least this many categorised ideas (a batch of two is not a collapse).
    pub min_categorised_ideas: usize,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            watch: vec![DiversityMetric::Vendi, DiversityMetric::Distinct2],
            min_fraction_of_initial: 0.5,
            max_category_share: 0.5,
            min_categorised_ideas: 8,
        }
    }
}

impl AlarmConfig {
    pub fn validate(&self) -> Result<()> {
        let f = self.min_fraction_of_initial;
        if !(f > 0.0 && f <= 1.0) {
            return Err(DiagnosticsError::Config(format!("min_fraction_of_initial = {f}: must be in (0, 1]")));
        }
        let s = self.max_category_share;
        if !(s > 0.0 && s <= 1.0) {
            return Err(DiagnosticsError::Config(format!("max_category_share = {s}: must be in (0, 1]")));
        }
        Ok(())
    }
}

/// What fired, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlarmKind {
    DiversityDrop { metric: DiversityMetric, initial: f64, current: f64, threshold: f64 },
    CategoryDominance { category: String, share: f64, count: usize, n_categorised: usize, threshold: f64 },
}

/// One alarm that fired: its data and a line for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub kind: AlarmKind,
    pub message: String,
}

/// The alarms that fire for `current`, given the first batch's diagnostics (`initial`; pass the same batch at
/// step 0, where only the category alarm can fire).
pub fn check_collapse(config: &AlarmConfig, initial: &BatchDiagnostics, current: &BatchDiagnostics) -> Vec<Alarm> {
    let mut alarms = Vec::new();
    for &metric in &config.watch {
        let (Some(start), Some(now)) = (metric.value(initial), metric.value(current)) else { continue };
        if start <= 0.0 {
            continue;
        }
        let threshold = config.min_fraction_of_initial * start;
        if now < threshold {
            alarms.push(Alarm {
                message: format!(
                    "diversity collapse: {metric} is {now:.3}, {:.0}% of its initial {start:.3} (alarm below {:.0}%)",
                    100.0 * now / start,
                    100.0 * config.min_fraction_of_initial
                ),
                kind: AlarmKind::DiversityDrop { metric, initial: start, current: now, threshold },
            });
        }
    }
    let stats = &current.categories;
    if let Some(CategoryShare { label, share, count, .. }) = stats.shares.first() {
        if stats.n_categorised >= config.min_categorised_ideas && *share > config.max_category_share {
            alarms.push(Alarm {
                message: format!(
                    "category collapse: {label} holds {count} of {} categorised ideas ({:.0}%, alarm above {:.0}%)",
                    stats.n_categorised,
                    100.0 * share,
                    100.0 * config.max_category_share
                ),
                kind: AlarmKind::CategoryDominance {
                    category: label.clone(),
                    share: *share,
                    count: *count,
                    n_categorised: stats.n_categorised,
                    threshold: config.max_category_share,
                },
            });
        }
    }
    alarms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::categories::Category;
    use crate::summary::ScoredIdea;

    fn diagnostics(texts: &[&str], categories: &[&Category]) -> BatchDiagnostics {
        let ideas: Vec<ScoredIdea> = texts
            .iter()
            .zip(categories)
            .map(|(text, c)| ScoredIdea { text, reward: 0.0, executed: true, category: Some(c) })
            .collect();
        BatchDiagnostics::compute(&ideas, None).unwrap()
    }

    #[test]
    fn text_and_category_alarms() {
        let cats: Vec<Category> = (0..8).map(|i| [format!("knob{i}")].into()).collect();
        let diverse_texts = [
            "use lion with a smaller step",
            "swiglu in each block",
            "tie the embeddings",
            "qk norm before softmax",
            "cosine decay to zero",
            "ema of weights for eval",
            "larger rope base",
            "deeper and narrower model",
        ];
        let start = diagnostics(&diverse_texts, &cats.iter().collect::<Vec<_>>());
        let collapsed = diagnostics(&["raise the learning rate"; 8], &[&cats[0]; 8]);
        let config = AlarmConfig::default();
        assert!(check_collapse(&config, &start, &start).is_empty());
        let alarms = check_collapse(&config, &start, &collapsed);
        // No embedder: the Vendi watch is skipped, distinct-2 and the category alarm fire.
        assert_eq!(alarms.len(), 2, "{alarms:#?}");
        assert!(matches!(alarms[0].kind, AlarmKind::DiversityDrop { metric: DiversityMetric::Distinct2, .. }));
        assert!(matches!(alarms[1].kind, AlarmKind::CategoryDominance { count: 8, n_categorised: 8, .. }));
        assert!(alarms[1].message.contains("knob0 holds 8 of 8"), "{}", alarms[1].message);

        // Below the minimum batch the category alarm waits; at share 1 it can never fire.
        let strict = AlarmConfig { min_categorised_ideas: 9, ..AlarmConfig::default() };
        assert_eq!(check_collapse(&strict, &start, &collapsed).len(), 1);
        let off = AlarmConfig { max_category_share: 1.0, watch: vec![], ..AlarmConfig::default() };
        assert!(check_collapse(&off, &start, &collapsed).is_empty());
    }

    #[test]
    fn config_defaults_names_and_validation() {
        let config: AlarmConfig = serde_json::from_str(r#"{"watch": ["distinct_3", "category_entropy"]}"#).unwrap();
        assert_eq!(config.watch, [DiversityMetric::Distinct3, DiversityMetric::CategoryEntropy]);
        assert_eq!(config.min_fraction_of_initial, AlarmConfig::default().min_fraction_of_initial);
        let config: AlarmConfig = toml::from_str("max_category_share = 0.8").unwrap();
        assert_eq!(config.max_category_share, 0.8);
        config.validate().unwrap();
        let err = toml::from_str::<AlarmConfig>("max_share = 0.8").unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        assert!(toml::from_str::<AlarmConfig>("watch = [\"entropy\"]").is_err());
        let bad = AlarmConfig { min_fraction_of_initial: 0.0, ..AlarmConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("min_fraction_of_initial"));
        let bad = AlarmConfig { max_category_share: 1.5, ..AlarmConfig::default() };
        assert!(bad.validate().is_err());
    }
}
