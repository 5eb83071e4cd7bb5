//! Diagnostics of code ideas (the `codebase` environment): the execution rate split into "applied" (the diff
//! applied) and "ran" (the program then produced a result), as the seed paper reports it, the diff size, the
//! implementer's repair attempts, and categories from the code units each diff touched. Inputs are the metrics
//! the environment records with each result (`applied`, `ran`, `diff_lines_added`, `diff_lines_removed`,
//! `repair_attempts`) and the result's touched code units (`train.py:fit`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::categories::{Category, CategoryStats};

/// One executed idea as the code-idea statistics read it: its result's metrics and the code units its diff
/// touched (empty when the diff did not apply).
#[derive(Debug, Clone, Copy)]
pub struct CodeIdea<'a> {
    pub metrics: &'a BTreeMap<String, f64>,
    pub changed: &'a [String],
}

/// Code-idea statistics of one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeIdeaStats {
    /// Ideas whose result says whether their diff applied (the others are not code ideas, or never ran).
    pub n_ideas: usize,
    /// Share of those ideas whose diff applied.
    pub applied_rate: f64,
    /// Share of those ideas that applied and then ran to a result.
    pub ran_rate: f64,
    /// Mean changed lines (added + removed) over the ideas whose diff applied; `None` when none applied.
    pub mean_diff_lines: Option<f64>,
    /// Mean repair attempts of the implementer per idea; `None` without an implementer.
    pub mean_repair_attempts: Option<f64>,
    /// Categories of the ideas whose diff applied: the set of code units it touched (`train.py:HIDDEN`); ideas
    /// whose diff did not apply are uncategorised.
    #[serde(default = "no_categories")]
    pub categories: CategoryStats,
}

fn no_categories() -> CategoryStats {
    CategoryStats::compute(&[])
}

impl CodeIdeaStats {
    /// Computes the statistics from each idea's result; `None` when no result carries `applied`.
    pub fn compute<'a>(ideas: impl IntoIterator<Item = CodeIdea<'a>>) -> Option<CodeIdeaStats> {
        let code: Vec<CodeIdea> = ideas.into_iter().filter(|i| i.metrics.contains_key("applied")).collect();
        if code.is_empty() {
            return None;
        }
        let n = code.len() as f64;
        let flag = |i: &CodeIdea, k: &str| i.metrics.get(k).is_some_and(|v| *v >= 0.5);
        let applied: Vec<&CodeIdea> = code.iter().filter(|i| flag(i, "applied")).collect();
        let ran = code.iter().filter(|i| flag(i, "applied") && flag(i, "ran")).count();
        let lines = |i: &CodeIdea| {
            let m = i.metrics;
            m.get("diff_lines_added").copied().unwrap_or(0.0) + m.get("diff_lines_removed").copied().unwrap_or(0.0)
        };
        let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        let categories: Vec<Option<Category>> =
            code.iter().map(|i| flag(i, "applied").then(|| i.changed.iter().cloned().collect())).collect();
        Some(CodeIdeaStats {
            n_ideas: code.len(),
            applied_rate: applied.len() as f64 / n,
            ran_rate: ran as f64 / n,
            mean_diff_lines: mean(applied.iter().map(|i| lines(i)).collect()),
            mean_repair_attempts: mean(
                code.iter().filter_map(|i| i.metrics.get("repair_attempts").copied()).collect(),
            ),
            categories: CategoryStats::compute(&categories.iter().map(Option::as_ref).collect::<Vec<_>>()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn ideas<'a>(batch: &'a [(BTreeMap<String, f64>, Vec<String>)]) -> impl Iterator<Item = CodeIdea<'a>> {
        batch.iter().map(|(m, c)| CodeIdea { metrics: m, changed: c })
    }

    fn units(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn splits_the_execution_rate_into_applied_and_ran() {
        let batch = [
            (
                metrics(&[("applied", 1.0), ("ran", 1.0), ("diff_lines_added", 2.0), ("diff_lines_removed", 1.0)]),
                units(&["train.py:HIDDEN"]),
            ),
            (
                metrics(&[("applied", 1.0), ("ran", 0.0), ("diff_lines_added", 5.0), ("diff_lines_removed", 0.0)]),
                units(&["train.py:fit", "train.py:LR"]),
            ),
            (metrics(&[("applied", 0.0)]), vec![]),
            (metrics(&[("applied", 0.0)]), vec![]),
            (metrics(&[("val_loss", 3.0)]), units(&["lr"])),
        ];
        let s = CodeIdeaStats::compute(ideas(&batch)).unwrap();
        assert_eq!(s.n_ideas, 4);
        assert_eq!(s.applied_rate, 0.5);
        assert_eq!(s.ran_rate, 0.25);
        assert_eq!(s.mean_diff_lines, Some(4.0));
        assert_eq!(s.mean_repair_attempts, None);
        // Categories: the two applied diffs by their touched units; the two that did not apply are uncategorised.
        assert_eq!((s.categories.n_categorised, s.categories.n_uncategorised), (2, 2));
        let labels: Vec<&str> = s.categories.shares.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["train.py:HIDDEN", "train.py:LR+train.py:fit"]);
        let repaired = [
            (metrics(&[("applied", 1.0), ("ran", 1.0), ("repair_attempts", 3.0)]), units(&["train.py:fit"])),
            (metrics(&[("applied", 0.0), ("repair_attempts", 10.0)]), vec![]),
        ];
        assert_eq!(CodeIdeaStats::compute(ideas(&repaired)).unwrap().mean_repair_attempts, Some(6.5));
        assert_eq!(CodeIdeaStats::compute(ideas(&[(metrics(&[("val_loss", 3.0)]), vec![])])), None);
    }
}
