//! Idea categories: an idea's category is the set of knobs it changes (given by the caller, who parsed the idea).
//! Over a batch we report each category's share, the Shannon entropy of the shares, and the top share — the
//! collapse the paper counted by hand (119 of 128 ideas being two ideas) as numbers.
//!
//! Entropy is in nats. The normalised entropy divides it by ln(n) for n categorised ideas: the most a batch of n
//! can reach (every idea its own category). It is 0 when all ideas share one category and 1 when none do; unlike
//! dividing by ln(number of categories seen), a batch collapsed onto two equally common categories scores low.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The knobs one idea changes. The empty set is the idea that changes nothing.
pub type Category = BTreeSet<String>;

/// A category's label: its knobs in order joined by `+`, or `(none)` for the empty set.
pub(crate) fn category_label(category: &Category) -> String {
    if category.is_empty() {
        "(none)".to_string()
    } else {
        category.iter().map(String::as_str).collect::<Vec<_>>().join("+")
    }
}

/// One category's place in a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryShare {
    pub knobs: Vec<String>,
    pub label: String,
    pub count: usize,
    pub share: f64,
}

/// Category statistics of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryStats {
    /// Ideas with a known category (the others, e.g. ideas that could not be parsed, are left out).
    pub n_categorised: usize,
    /// Ideas without a category.
    pub n_uncategorised: usize,
    /// Most common first; ties by label.
    pub shares: Vec<CategoryShare>,
    pub entropy_nats: f64,
    /// entropy / ln(n_categorised); `None` for fewer than two categorised ideas.
    pub normalized_entropy: Option<f64>,
    /// Share of the most common category; 0 when nothing is categorised.
    pub top_share: f64,
}

impl CategoryStats {
    /// Statistics over the given categories; `None` entries are counted as uncategorised.
    pub fn compute(categories: &[Option<&Category>]) -> Self {
        let mut counts: BTreeMap<&Category, usize> = BTreeMap::new();
        for category in categories.iter().flatten() {
            *counts.entry(category).or_insert(0) += 1;
        }
        let n = counts.values().sum::<usize>();
        let mut shares: Vec<CategoryShare> = counts
            .into_iter()
            .map(|(knobs, count)| CategoryShare {
                knobs: knobs.iter().cloned().collect(),
                label: category_label(knobs),
                count,
                share: count as f64 / n as f64,
            })
            .collect();
        shares.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.label.cmp(&b.label)));
        let entropy_nats: f64 = shares.iter().map(|s| -s.share * s.share.ln()).sum();
        CategoryStats {
            n_categorised: n,
            n_uncategorised: categories.len() - n,
            normalized_entropy: (n >= 2).then(|| entropy_nats / (n as f64).ln()),
            top_share: shares.first().map_or(0.0, |s| s.share),
            entropy_nats,
            shares,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(knobs: &[&str]) -> Category {
        knobs.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn shares_entropy_and_top_share() {
        let lr = cat(&["lr"]);
        let opt_lr = cat(&["optimizer", "lr"]);
        let none = cat(&[]);
        let batch = [Some(&lr), Some(&opt_lr), Some(&lr), None, Some(&none), Some(&lr)];
        let s = CategoryStats::compute(&batch);
        assert_eq!((s.n_categorised, s.n_uncategorised), (5, 1));
        let labels: Vec<(&str, usize)> = s.shares.iter().map(|c| (c.label.as_str(), c.count)).collect();
        assert_eq!(labels, [("lr", 3), ("(none)", 1), ("lr+optimizer", 1)]);
        let h = -(0.6f64 * 0.6f64.ln()) - 2.0 * (0.2f64 * 0.2f64.ln());
        assert!((s.entropy_nats - h).abs() < 1e-12);
        assert!((s.normalized_entropy.unwrap() - h / 5f64.ln()).abs() < 1e-12);
        assert!((s.top_share - 0.6).abs() < 1e-12);
        // The order of knobs in an idea does not make a new category.
        assert_eq!(s.shares[2].knobs, ["lr", "optimizer"]);
    }

    #[test]
    fn extremes() {
        let a = cat(&["a"]);
        let collapsed = CategoryStats::compute(&[Some(&a); 8]);
        assert_eq!(collapsed.entropy_nats, 0.0);
        assert_eq!(collapsed.normalized_entropy, Some(0.0));
        assert_eq!(collapsed.top_share, 1.0);
        let all: Vec<Category> = (0..8).map(|i| cat(&[&format!("k{i}")])).collect();
        let spread = CategoryStats::compute(&all.iter().map(Some).collect::<Vec<_>>());
        assert!((spread.normalized_entropy.unwrap() - 1.0).abs() < 1e-12);
        assert!((spread.entropy_nats - 8f64.ln()).abs() < 1e-12);
        let empty = CategoryStats::compute(&[None, None]);
        assert_eq!((empty.n_categorised, empty.top_share, empty.normalized_entropy), (0, 0.0, None));
        assert!(empty.shares.is_empty());
    }
}
