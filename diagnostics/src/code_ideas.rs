//! Diagnostics of code ideas (the `codebase` environment): the execution rate split into "applied" (the diff
//! applied) and "ran" (the program then produced a result), as the seed paper reports it, the diff size, and the
//! implementer's repair attempts. Inputs are the metrics the environment records with each result (`applied`,
//! `ran`, `diff_lines_added`, `diff_lines_removed`, `repair_attempts`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
}

impl CodeIdeaStats {
    /// Computes the statistics from each idea's result metrics; `None` when no result carries `applied`.
    pub fn compute<'a>(metrics: impl IntoIterator<Item = &'a BTreeMap<String, f64>>) -> Option<CodeIdeaStats> {
        let code: Vec<&BTreeMap<String, f64>> = metrics.into_iter().filter(|m| m.contains_key("applied")).collect();
        if code.is_empty() {
            return None;
        }
        let n = code.len() as f64;
        let flag = |m: &BTreeMap<String, f64>, k: &str| m.get(k).is_some_and(|v| *v >= 0.5);
        let applied: Vec<&&BTreeMap<String, f64>> = code.iter().filter(|m| flag(m, "applied")).collect();
        let ran = code.iter().filter(|m| flag(m, "applied") && flag(m, "ran")).count();
        let lines = |m: &BTreeMap<String, f64>| {
            m.get("diff_lines_added").copied().unwrap_or(0.0) + m.get("diff_lines_removed").copied().unwrap_or(0.0)
        };
        let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
        Some(CodeIdeaStats {
            n_ideas: code.len(),
            applied_rate: applied.len() as f64 / n,
            ran_rate: ran as f64 / n,
            mean_diff_lines: mean(applied.iter().map(|m| lines(m)).collect()),
            mean_repair_attempts: mean(code.iter().filter_map(|m| m.get("repair_attempts").copied()).collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn splits_the_execution_rate_into_applied_and_ran() {
        let ideas = [
            metrics(&[("applied", 1.0), ("ran", 1.0), ("diff_lines_added", 2.0), ("diff_lines_removed", 1.0)]),
            metrics(&[("applied", 1.0), ("ran", 0.0), ("diff_lines_added", 5.0), ("diff_lines_removed", 0.0)]),
            metrics(&[("applied", 0.0)]),
            metrics(&[("applied", 0.0)]),
            metrics(&[("val_loss", 3.0)]),
        ];
        let s = CodeIdeaStats::compute(&ideas).unwrap();
        assert_eq!(s.n_ideas, 4);
        assert_eq!(s.applied_rate, 0.5);
        assert_eq!(s.ran_rate, 0.25);
        assert_eq!(s.mean_diff_lines, Some(4.0));
        assert_eq!(s.mean_repair_attempts, None);
        let repaired = [
            metrics(&[("applied", 1.0), ("ran", 1.0), ("repair_attempts", 3.0)]),
            metrics(&[("applied", 0.0), ("repair_attempts", 10.0)]),
        ];
        assert_eq!(CodeIdeaStats::compute(&repaired).unwrap().mean_repair_attempts, Some(6.5));
        assert_eq!(CodeIdeaStats::compute(&[metrics(&[("val_loss", 3.0)])]), None);
    }
}
