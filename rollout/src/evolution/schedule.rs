//! The exploit/explore schedule: how many of an epoch's prompts exploit the ideas that beat the baseline, and
//! which kind each prompt is.

use ideator_envs::prompt::evolution::PromptKind;

/// The paper's exploit share of epoch `epoch`: `min(0.5 + 0.1 * floor(epoch / 2), 0.8)`.
pub(crate) fn exploit_share(epoch: u64) -> f64 {
    exploit_tenths(epoch) as f64 / 10.0
}

/// The share in tenths, in integers (so that the prompt counts are exact).
fn exploit_tenths(epoch: u64) -> usize {
    (5 + epoch / 2).min(8) as usize
}

/// Exploit prompts of an epoch of `prompts` prompts: none in epoch 0, else `floor(prompts * share)`.
pub(crate) fn exploit_prompts(epoch: u64, prompts: usize) -> usize {
    if epoch == 0 {
        0
    } else {
        prompts * exploit_tenths(epoch) / 10
    }
}

/// The kind of prompt `index` (0-based, in sampling order) of an epoch: the first exploit-share of the prompts
/// exploit (as in the paper's code), the rest explore; exploit prompts become explore prompts while no idea has
/// beaten the baseline.
pub(crate) fn prompt_kind(epoch: u64, prompts: usize, index: usize, has_winners: bool) -> PromptKind {
    if epoch == 0 {
        PromptKind::Fresh
    } else if index < exploit_prompts(epoch, prompts) && has_winners {
        PromptKind::Exploit
    } else {
        PromptKind::Explore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exploit_share_follows_the_paper_schedule() {
        let got: Vec<f64> = (0..12).map(exploit_share).collect();
        let want = [0.5, 0.5, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8];
        for (e, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-12, "epoch {e}: {g} != {w}");
        }
        // Prompt counts: floor(B * share); none in epoch 0.
        assert_eq!(exploit_prompts(0, 10), 0);
        assert_eq!(exploit_prompts(1, 10), 5);
        assert_eq!(exploit_prompts(2, 10), 6);
        assert_eq!(exploit_prompts(5, 7), 4); // 4.9 -> 4
        assert_eq!(exploit_prompts(9, 80), 64);
        assert_eq!(exploit_prompts(3, 1), 0);
    }

    #[test]
    fn prompt_kinds_put_exploit_first_and_fall_back_without_winners() {
        let kinds: Vec<PromptKind> = (0..10).map(|i| prompt_kind(2, 10, i, true)).collect();
        assert_eq!(kinds.iter().filter(|k| **k == PromptKind::Exploit).count(), 6);
        assert!(kinds[..6].iter().all(|k| *k == PromptKind::Exploit));
        assert!(kinds[6..].iter().all(|k| *k == PromptKind::Explore));
        assert!((0..10).all(|i| prompt_kind(2, 10, i, false) == PromptKind::Explore));
        assert!((0..10).all(|i| prompt_kind(0, 10, i, true) == PromptKind::Fresh));
    }
}
