//! Which checkpoints to keep: the last K, and the best by score.

use serde::{Deserialize, Serialize};

use crate::store::list;
use crate::{CheckpointError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicy {
    /// Newest checkpoints kept (at least 1).
    pub keep_last: usize,
    /// Also keep the checkpoint with the highest score.
    pub keep_best: bool,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy { keep_last: 3, keep_best: true }
    }
}

/// Deletes checkpoints the policy does not keep; returns the steps deleted.
pub fn prune(root: &std::path::Path, policy: &RetentionPolicy) -> Result<Vec<u64>> {
    let all = list(root)?;
    let keep_last = policy.keep_last.max(1);
    let best = if policy.keep_best {
        all.iter()
            .filter_map(|c| c.manifest.score.map(|s| (s, c.manifest.step)))
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, step)| step)
    } else {
        None
    };
    let cutoff = all.len().saturating_sub(keep_last);
    let mut deleted = Vec::new();
    for c in &all[..cutoff] {
        if Some(c.manifest.step) == best {
            continue;
        }
        std::fs::remove_dir_all(&c.path).map_err(|e| CheckpointError::io(&c.path, e))?;
        deleted.push(c.manifest.step);
    }
    Ok(deleted)
}
