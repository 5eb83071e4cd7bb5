//! A scale of a knob environment: what every scale declares (its name and one-line doc, the fewest steps that make
//! a training run, the baseline's values) around the environment's own budget and guards (`B`), and the lookup by
//! name. `pretrain` and `posttrain` differ only in `B`.

use crate::environment::{EnvError, ScaleInfo};
use crate::knobs::KnobValue;

/// One scale of an environment whose budget and guards are `B`.
#[derive(Debug, Clone)]
pub struct Scale<B> {
    pub name: &'static str,
    /// One line: the model, the budget, and where it is meant to run.
    pub doc: &'static str,
    /// Fewer steps than this is not a training run: the recipe is out of budget.
    pub min_steps: usize,
    /// Baseline values that differ from the schema's defaults (which are the first scale's baseline).
    pub baseline: Vec<(&'static str, KnobValue)>,
    pub budget: B,
}

impl<B> Scale<B> {
    /// The name and doc that `ideator env list` shows.
    pub fn info(&self) -> ScaleInfo {
        ScaleInfo { name: self.name.into(), doc: self.doc.into() }
    }
}

/// The scale called `name` among `env`'s `scales`.
///
/// # Errors
/// [`EnvError::UnknownScale`], listing the known scales, when none is called `name`.
pub fn find<B>(env: &str, scales: Vec<Scale<B>>, name: &str) -> Result<Scale<B>, EnvError> {
    let known: Vec<&'static str> = scales.iter().map(|s| s.name).collect();
    scales.into_iter().find(|s| s.name == name).ok_or_else(|| EnvError::UnknownScale {
        env: env.into(),
        scale: name.into(),
        known: known.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_returns_the_named_scale_or_lists_the_known_ones() {
        let scale = |name| Scale { name, doc: "", min_steps: 1, baseline: vec![], budget: name.len() };
        let found = find("env", vec![scale("tiny"), scale("small")], "small").unwrap();
        assert_eq!((found.name, found.budget), ("small", 5));
        let err = find("env", vec![scale("tiny"), scale("small")], "huge").unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("tiny, small"), "{err}");
    }
}
