//! A scale of a knob environment: what every scale declares (its name and one-line doc, the fewest steps that make
//! a training run, the baseline's values) around the environment's own budget and guards (`B`), and the lookup by
//! name. `pretrain` and `posttrain` differ only in `B`.

use crate::environment::{EnvError, Environment, ScaleInfo};
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

/// The scale called `name` among `scales`, the full specs of `env`'s scales.
///
/// # Errors
/// [`Environment::check_scale`]'s [`EnvError::UnknownScale`], listing the known scales, when none is called
/// `name`.
pub fn find<B>(env: &dyn Environment, scales: Vec<Scale<B>>, name: &str) -> Result<Scale<B>, EnvError> {
    env.check_scale(name)?;
    Ok(scales.into_iter().find(|s| s.name == name).expect("check_scale found it among the same scales"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_returns_the_named_scale_or_lists_the_known_ones() {
        let env = crate::posttrain::Posttrain::new();
        let found = find(&env, crate::posttrain::scales(), "small").unwrap();
        assert_eq!(found.name, "small");
        let err = find(&env, crate::posttrain::scales(), "huge").unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("tiny, small"), "{err}");
    }
}
