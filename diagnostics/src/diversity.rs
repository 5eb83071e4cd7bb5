//! Diversity of a batch of ideas measured on their text: distinct-n, self-BLEU, gzip compression ratio and idea
//! length. Tokens come from [`crate::text::tokenize`].
//!
//! - **distinct-n**: unique n-grams / total n-grams, pooled over the batch (n-grams never span two ideas). 1 means
//!   no n-gram repeats anywhere in the batch; near 0 means the batch repeats itself.
//! - **self-BLEU**: every idea is scored as a hypothesis against all the *other* ideas as references, and the scores
//!   are averaged (Zhu et al. 2018, Texygen). Each score is sentence BLEU-4 exactly as NLTK's
//!   `sentence_bleu(refs, hyp, weights=(0.25,)*4, smoothing_function=SmoothingFunction().method1)` computes it:
//!   clipped n-gram precisions with the clip at the largest count in any single reference; a precision with no
//!   matches becomes 0.1 / (number of hypothesis n-grams, at least 1) (Chen & Cherry 2014, method 1); the score is 0
//!   when not even one unigram matches; brevity penalty exp(1 - r/c) against the closest reference length r (ties
//!   to the shorter), 1 when c > r, 0 for an empty hypothesis. Higher self-BLEU = less diverse.
//! - **compression ratio**: bytes of the ideas joined by newlines / bytes of their gzip (level 9) compression.
//!   Repetitive batches compress well, so higher = less diverse. The gzip header makes tiny batches look
//!   incompressible; compare batches of similar size.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use flate2::{write::GzEncoder, Compression};
use serde::{Deserialize, Serialize};

use crate::text::tokenize;

/// The highest n-gram order of BLEU-4.
const BLEU_ORDER: usize = 4;
/// Chen & Cherry method 1 (NLTK's default epsilon): the numerator given to an order with no matches.
const BLEU_EPSILON: f64 = 0.1;

/// Text diversity of one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextDiversity {
    /// distinct-1/2/3; `None` when the batch has no n-grams of that order (every idea shorter than n tokens).
    pub distinct_1: Option<f64>,
    pub distinct_2: Option<f64>,
    pub distinct_3: Option<f64>,
    /// Mean self-BLEU-4; `None` for a batch of fewer than two ideas (no references).
    pub self_bleu: Option<f64>,
    /// Raw bytes / gzip bytes of the joined batch.
    pub compression_ratio: f64,
    pub length: LengthStats,
}

/// Idea lengths in tokens (see [`crate::text`]) and characters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    pub mean_tokens: f64,
    /// Population standard deviation.
    pub std_tokens: f64,
    pub min_tokens: usize,
    pub max_tokens: usize,
    pub mean_chars: f64,
}

impl TextDiversity {
    /// All text metrics of a batch. An empty batch gives `None`s, a ratio of the gzip of nothing, and zero lengths.
    pub fn compute(texts: &[&str]) -> Self {
        let tokens: Vec<Vec<String>> = texts.iter().map(|t| tokenize(t)).collect();
        TextDiversity {
            distinct_1: distinct_n(&tokens, 1),
            distinct_2: distinct_n(&tokens, 2),
            distinct_3: distinct_n(&tokens, 3),
            self_bleu: self_bleu(&tokens),
            compression_ratio: compression_ratio(texts),
            length: length_stats(texts, &tokens),
        }
    }
}

/// Unique n-grams / total n-grams over the batch; `None` when there are no n-grams of this order.
pub(crate) fn distinct_n(tokens: &[Vec<String>], n: usize) -> Option<f64> {
    assert!(n > 0, "distinct-n needs n >= 1");
    let mut unique: HashSet<&[String]> = HashSet::new();
    let mut total = 0usize;
    for idea in tokens {
        for gram in idea.windows(n) {
            unique.insert(gram);
            total += 1;
        }
    }
    (total > 0).then(|| unique.len() as f64 / total as f64)
}

/// For every n-gram, the two largest counts any single idea has of it, and which idea has the largest. The
/// largest count among the *other* ideas is then `second` for the holder of `first` and `first` for everyone else,
/// which makes self-BLEU linear in the batch's size instead of quadratic.
#[derive(Clone, Copy)]
struct TopTwo {
    first: usize,
    holder: usize,
    second: usize,
}

impl TopTwo {
    fn offer(&mut self, idea: usize, count: usize) {
        if count > self.first {
            self.second = self.first;
            self.first = count;
            self.holder = idea;
        } else if count > self.second {
            self.second = count;
        }
    }

    fn best_excluding(&self, idea: usize) -> usize {
        if self.holder == idea {
            self.second
        } else {
            self.first
        }
    }
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// Mean sentence BLEU-4 of each idea against all others (see the module documentation for the exact variant);
/// `None` for fewer than two ideas.
pub fn self_bleu(tokens: &[Vec<String>]) -> Option<f64> {
    let n_ideas = tokens.len();
    if n_ideas < 2 {
        return None;
    }
    // counts[order][idea]: the idea's n-gram counts; top[order]: the batch-wide top two per n-gram.
    let counts: Vec<Vec<HashMap<&[String], usize>>> =
        (1..=BLEU_ORDER).map(|n| tokens.iter().map(|t| ngram_counts(t, n)).collect()).collect();
    let top: Vec<HashMap<&[String], TopTwo>> = counts
        .iter()
        .map(|per_idea| {
            let mut top: HashMap<&[String], TopTwo> = HashMap::new();
            for (idea, idea_counts) in per_idea.iter().enumerate() {
                for (&gram, &count) in idea_counts {
                    top.entry(gram).or_insert(TopTwo { first: 0, holder: usize::MAX, second: 0 }).offer(idea, count);
                }
            }
            top
        })
        .collect();
    let mut lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
    lengths.sort_unstable();

    let total: f64 = (0..n_ideas)
        .map(|idea| {
            let mut log_precision_sum = 0.0;
            for order in 0..BLEU_ORDER {
                let hyp = &counts[order][idea];
                let hyp_total: usize = hyp.values().sum();
                let matched: usize =
                    hyp.iter().map(|(gram, &count)| count.min(top[order][gram].best_excluding(idea))).sum();
                if order == 0 && matched == 0 {
                    return 0.0; // NLTK: no unigram in common, BLEU is 0 whatever the smoothing.
                }
                let numerator = if matched == 0 { BLEU_EPSILON } else { matched as f64 };
                log_precision_sum += (numerator / hyp_total.max(1) as f64).ln() / BLEU_ORDER as f64;
            }
            let hyp_len = tokens[idea].len();
            brevity_penalty(closest_other_length(&lengths, hyp_len), hyp_len) * log_precision_sum.exp()
        })
        .sum();
    Some(total / n_ideas as f64)
}

/// The reference length closest to `hyp_len` among all ideas but one with length `hyp_len` (the hypothesis
/// itself), ties going to the shorter length. `sorted_lengths` holds every idea's length, ascending.
fn closest_other_length(sorted_lengths: &[usize], hyp_len: usize) -> usize {
    let mut skipped_self = false;
    let mut best: Option<usize> = None;
    for &len in sorted_lengths {
        if len == hyp_len && !skipped_self {
            skipped_self = true;
            continue;
        }
        // Ascending order: a later length only wins when strictly closer, so ties keep the shorter one.
        if best.is_none_or(|b| len.abs_diff(hyp_len) < b.abs_diff(hyp_len)) {
            best = Some(len);
        }
    }
    best.expect("self-BLEU is only computed with at least two ideas")
}

fn brevity_penalty(reference_len: usize, hyp_len: usize) -> f64 {
    if hyp_len > reference_len {
        1.0
    } else if hyp_len == 0 {
        0.0
    } else {
        (1.0 - reference_len as f64 / hyp_len as f64).exp()
    }
}

/// Raw bytes / gzip (level 9) bytes of the ideas joined by newlines.
pub(crate) fn compression_ratio(texts: &[&str]) -> f64 {
    let joined = texts.join("\n");
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    // Writing into a Vec cannot fail.
    encoder.write_all(joined.as_bytes()).expect("gzip into memory");
    let compressed = encoder.finish().expect("gzip into memory");
    joined.len() as f64 / compressed.len() as f64
}

fn length_stats(texts: &[&str], tokens: &[Vec<String>]) -> LengthStats {
    let n = texts.len().max(1) as f64;
    let lens: Vec<usize> = tokens.iter().map(Vec::len).collect();
    let mean_tokens = lens.iter().sum::<usize>() as f64 / n;
    let var = lens.iter().map(|&l| (l as f64 - mean_tokens).powi(2)).sum::<f64>() / n;
    LengthStats {
        mean_tokens,
        std_tokens: var.sqrt(),
        min_tokens: lens.iter().copied().min().unwrap_or(0),
        max_tokens: lens.iter().copied().max().unwrap_or(0),
        mean_chars: texts.iter().map(|t| t.chars().count()).sum::<usize>() as f64 / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(texts: &[&str]) -> Vec<Vec<String>> {
        texts.iter().map(|t| tokenize(t)).collect()
    }

    #[test]
    fn distinct_n_counts_unique_over_total() {
        // "a b a b" + "a b c": unigrams a,b,a,b,a,b,c -> 3 unique / 7; bigrams ab,ba,ab,ab,bc -> 3 / 5.
        let t = toks(&["a b a b", "a b c"]);
        assert_eq!(distinct_n(&t, 1), Some(3.0 / 7.0));
        assert_eq!(distinct_n(&t, 2), Some(3.0 / 5.0));
        // Trigrams: aba, bab, abc -> all unique; bigrams never cross ideas (no "b a" from "b" + "a").
        assert_eq!(distinct_n(&t, 3), Some(1.0));
        assert_eq!(distinct_n(&toks(&["one", "two"]), 2), None);
    }

    #[test]
    fn identical_ideas_have_self_bleu_one() {
        let idea = "Switch the optimiser to Lion with a lower learning rate and cosine decay.";
        let t = toks(&[idea, idea, idea]);
        assert!((self_bleu(&t).unwrap() - 1.0).abs() < 1e-12);
        let disjoint = toks(&["alpha beta gamma delta", "epsilon zeta eta theta"]);
        assert_eq!(self_bleu(&disjoint), Some(0.0));
        assert_eq!(self_bleu(&toks(&["alone"])), None);
    }

    /// The top-two shortcut must equal the direct definition: clip by the max count over each other reference.
    #[test]
    fn top_two_clipping_matches_direct_clipping() {
        let texts = ["a a a b", "a a b b b", "a b", "c a a a a", "b b b b a"];
        let t = toks(&texts);
        for order in 1..=2 {
            let counts: Vec<_> = t.iter().map(|x| ngram_counts(x, order)).collect();
            let mut top: HashMap<&[String], TopTwo> = HashMap::new();
            for (i, c) in counts.iter().enumerate() {
                for (&g, &k) in c {
                    top.entry(g).or_insert(TopTwo { first: 0, holder: usize::MAX, second: 0 }).offer(i, k);
                }
            }
            for (i, c) in counts.iter().enumerate() {
                for &g in c.keys() {
                    let direct = (0..t.len())
                        .filter(|&j| j != i)
                        .map(|j| counts[j].get(g).copied().unwrap_or(0))
                        .max()
                        .unwrap();
                    assert_eq!(top[g].best_excluding(i), direct, "idea {i} gram {g:?}");
                }
            }
        }
    }

    #[test]
    fn closest_reference_length_skips_self_and_prefers_shorter() {
        // Lengths 3, 5, 7: for the idea of length 5, refs 3 and 7 tie -> 3.
        assert_eq!(closest_other_length(&[3, 5, 7], 5), 3);
        // Two ideas of length 5: the other one is an exact match.
        assert_eq!(closest_other_length(&[3, 5, 5], 5), 5);
        assert_eq!(closest_other_length(&[2, 9], 9), 2);
    }

    #[test]
    fn repetitive_batches_compress_better() {
        let repeated: Vec<&str> = vec!["Use Lion with lr 1e-4 and cosine decay."; 40];
        let varied = [
            "Replace GELU by SwiGLU in every block.",
            "Tie the input and output embeddings.",
            "Use a WSD schedule with 10% cooldown.",
            "Add QK-norm before attention logits.",
            "Soft-cap logits at 30 with tanh.",
            "Increase RoPE base to 50000.",
            "Keep an EMA of weights for evaluation.",
            "Apply z-loss with weight 1e-4.",
        ];
        assert!(compression_ratio(&repeated) > 2.0 * compression_ratio(&varied));
    }

    #[test]
    fn length_stats_in_tokens_and_chars() {
        let s = TextDiversity::compute(&["a b c", "d e f g h", ""]).length;
        assert_eq!((s.min_tokens, s.max_tokens), (0, 5));
        assert!((s.mean_tokens - 8.0 / 3.0).abs() < 1e-12);
        let var = ((3.0f64 - 8.0 / 3.0).powi(2) + (5.0f64 - 8.0 / 3.0).powi(2) + (8.0f64 / 3.0).powi(2)) / 3.0;
        assert!((s.std_tokens - var.sqrt()).abs() < 1e-12);
        assert!((s.mean_chars - 14.0 / 3.0).abs() < 1e-12);
    }
}
