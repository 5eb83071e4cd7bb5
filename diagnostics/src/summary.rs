//! One batch's diagnostics in one serialisable struct: what the trainer logs per step (or evolution epoch, or
//! evaluation) and what the report plots. Inputs are plain data, so the crate needs no run store.

use serde::{Deserialize, Serialize};

use crate::categories::{Category, CategoryStats};
use crate::diversity::TextDiversity;
use crate::embed::SentenceEmbedder;
use crate::error::{check_finite, DiagnosticsError, Result};
use crate::maxk::{self, MaxAtK};
use crate::vendi;

/// One idea of a batch as the diagnostics see it.
#[derive(Debug, Clone, Copy)]
pub struct ScoredIdea<'a> {
    pub text: &'a str,
    /// The reward the learner used: the environment's score, or what it assigns to a failure (0 in the paper).
    pub reward: f64,
    /// Whether the executor implemented and ran the idea.
    pub executed: bool,
    /// The knobs the idea changes; `None` when unknown (e.g. the idea could not be parsed).
    pub category: Option<&'a Category>,
}

/// Diversity of the batch's sentence embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingDiversity {
    /// Effective number of distinct ideas, between 1 and n; it grows with n, so compare batches of equal size.
    pub vendi_score: f64,
    /// `None` for a batch of one.
    pub mean_pairwise_cosine: Option<f64>,
}

/// Everything the diagnostics know about one batch of scored ideas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchDiagnostics {
    pub n_ideas: usize,
    pub mean_reward: f64,
    /// Population standard deviation.
    pub reward_std: f64,
    /// The batch's best reward (max@n); the best so far across steps is the running max of this.
    pub best_reward: f64,
    /// Share of ideas that were executed.
    pub execution_rate: f64,
    /// max@k for k = 1, 2, 4, ..., n.
    pub max_at_k: Vec<MaxAtK>,
    pub text: TextDiversity,
    /// `None` when no embedder was given.
    pub embedding: Option<EmbeddingDiversity>,
    pub categories: CategoryStats,
}

impl BatchDiagnostics {
    /// Computes every metric of a non-empty batch; embeddings only with an embedder.
    pub fn compute(ideas: &[ScoredIdea<'_>], embedder: Option<&dyn SentenceEmbedder>) -> Result<Self> {
        if ideas.is_empty() {
            return Err(DiagnosticsError::Invalid("empty batch: diagnostics need at least one idea".into()));
        }
        let rewards: Vec<f64> = ideas.iter().map(|i| i.reward).collect();
        check_finite("rewards", &rewards)?;
        let texts: Vec<&str> = ideas.iter().map(|i| i.text).collect();
        let embedding = match embedder {
            Some(embedder) => {
                let vectors = embedder.embed(&texts)?;
                if vectors.len() != texts.len() {
                    return Err(DiagnosticsError::Invalid(format!(
                        "the embedder returned {} vectors for {} texts",
                        vectors.len(),
                        texts.len()
                    )));
                }
                Some(EmbeddingDiversity {
                    vendi_score: vendi::vendi_score(&vectors)?,
                    mean_pairwise_cosine: vendi::mean_pairwise_cosine(&vectors)?,
                })
            }
            None => None,
        };
        let categories: Vec<Option<&Category>> = ideas.iter().map(|i| i.category).collect();
        Ok(BatchDiagnostics {
            n_ideas: ideas.len(),
            mean_reward: maxk::mean(&rewards)?,
            reward_std: maxk::std_dev(&rewards)?,
            best_reward: maxk::best(&rewards)?,
            execution_rate: ideas.iter().filter(|i| i.executed).count() as f64 / ideas.len() as f64,
            max_at_k: maxk::max_at_k_curve(&rewards)?,
            text: TextDiversity::compute(&texts),
            embedding,
            categories: CategoryStats::compute(&categories),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in embedder: one-hot by the first word, so equal first words mean identical ideas.
    struct FirstWord;

    impl SentenceEmbedder for FirstWord {
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            let words: Vec<&str> = texts.iter().map(|t| t.split_whitespace().next().unwrap_or("")).collect();
            let mut vocab: Vec<&str> = words.clone();
            vocab.sort_unstable();
            vocab.dedup();
            Ok(words
                .iter()
                .map(|w| (0..vocab.len()).map(|j| if vocab[j] == *w { 1.0 } else { 0.0 }).collect())
                .collect())
        }
    }

    #[test]
    fn summarises_a_batch() {
        let lr: Category = ["lr".to_string()].into();
        let opt: Category = ["optimizer".to_string()].into();
        let ideas = [
            ScoredIdea { text: "alpha one", reward: 0.5, executed: true, category: Some(&lr) },
            ScoredIdea { text: "alpha two", reward: 0.0, executed: false, category: None },
            ScoredIdea { text: "beta three", reward: 0.9, executed: true, category: Some(&opt) },
            ScoredIdea { text: "gamma four", reward: 0.2, executed: true, category: Some(&lr) },
        ];
        let d = BatchDiagnostics::compute(&ideas, Some(&FirstWord)).unwrap();
        assert_eq!(d.n_ideas, 4);
        assert!((d.mean_reward - 0.4).abs() < 1e-12);
        assert_eq!(d.best_reward, 0.9);
        assert_eq!(d.execution_rate, 0.75);
        let ks: Vec<usize> = d.max_at_k.iter().map(|p| p.k).collect();
        assert_eq!(ks, [1, 2, 4]);
        assert_eq!(d.max_at_k[2].value, 0.9);
        // Three distinct first words among four ideas, two of them identical.
        let e = d.embedding.as_ref().unwrap();
        let (p, q) = (0.5f64, 0.25f64);
        assert!((e.vendi_score - (-(p * p.ln()) - 2.0 * q * q.ln()).exp()).abs() < 1e-9);
        assert!((e.mean_pairwise_cosine.unwrap() - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(d.text.distinct_1, Some(1.0 - 1.0 / 8.0));
        assert_eq!((d.categories.n_categorised, d.categories.n_uncategorised), (3, 1));

        // Serialises for the log and reads back (serde_json's float parsing may differ in the last bit).
        let back: BatchDiagnostics = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(
            (back.n_ideas, back.max_at_k.len(), &back.categories),
            (d.n_ideas, d.max_at_k.len(), &d.categories)
        );
        assert!((back.embedding.unwrap().vendi_score - e.vendi_score).abs() < 1e-12);
        assert!(BatchDiagnostics::compute(&ideas, None).unwrap().embedding.is_none());
    }

    #[test]
    fn rejects_empty_batches_and_nan_rewards() {
        assert!(BatchDiagnostics::compute(&[], None).is_err());
        let idea = ScoredIdea { text: "x", reward: f64::NAN, executed: true, category: None };
        assert!(BatchDiagnostics::compute(&[idea], None).unwrap_err().to_string().contains("rewards[0]"));
    }
}
