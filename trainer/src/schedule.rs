//! Learning-rate schedules: constant, linear decay, cosine, warm-up-stable-decay, each with linear warm-up.

use serde::{Deserialize, Serialize};

use crate::{Result, TrainerError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
    /// Warm-up, stable at the peak, then a linear decay over the last `decay_fraction` of the steps.
    Wsd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    /// Floor of the decay as a fraction of the peak learning rate.
    pub min_lr_ratio: f64,
    /// WSD only: share of the steps spent decaying.
    pub decay_fraction: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig { kind: ScheduleKind::Constant, warmup_steps: 0, min_lr_ratio: 0.0, decay_fraction: 0.2 }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.min_lr_ratio) || !(0.0..=1.0).contains(&self.decay_fraction) {
            return Err(TrainerError::Config(
                "optim.schedule.min_lr_ratio and decay_fraction must be in [0, 1]".into(),
            ));
        }
        Ok(())
    }

    /// Learning rate of update `step` (0-based) out of `total_steps`, for peak rate `peak`.
    pub fn lr(&self, peak: f64, step: u64, total_steps: u64) -> f64 {
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let floor = peak * self.min_lr_ratio;
        let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        match self.kind {
            ScheduleKind::Constant => peak,
            ScheduleKind::Linear => floor + (peak - floor) * (1.0 - progress),
            ScheduleKind::Cosine => floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            ScheduleKind::Wsd => {
                let decay_start = 1.0 - self.decay_fraction;
                if progress <= decay_start || self.decay_fraction == 0.0 {
                    peak
                } else {
                    let d = (progress - decay_start) / self.decay_fraction;
                    floor + (peak - floor) * (1.0 - d)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: ScheduleKind, warmup: u64) -> ScheduleConfig {
        ScheduleConfig { kind, warmup_steps: warmup, min_lr_ratio: 0.1, decay_fraction: 0.25 }
    }

    #[test]
    fn warmup_is_linear_to_the_peak() {
        let c = cfg(ScheduleKind::Constant, 4);
        let lrs: Vec<f64> = (0..6).map(|s| c.lr(1.0, s, 100)).collect();
        assert_eq!(lrs, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn decays_reach_the_floor_at_the_end() {
        for kind in [ScheduleKind::Linear, ScheduleKind::Cosine, ScheduleKind::Wsd] {
            let c = cfg(kind, 10);
            assert!((c.lr(2.0, 10, 110) - 2.0).abs() < 1e-12, "{kind:?} starts at the peak");
            assert!((c.lr(2.0, 110, 110) - 0.2).abs() < 1e-12, "{kind:?} ends at the floor");
        }
        let cos = cfg(ScheduleKind::Cosine, 0);
        assert!((cos.lr(1.0, 50, 100) - 0.55).abs() < 1e-12, "cosine midpoint is halfway to the floor");
        let wsd = cfg(ScheduleKind::Wsd, 0);
        assert_eq!(wsd.lr(1.0, 75, 100), 1.0, "stable until the last quarter");
        assert!((wsd.lr(1.0, 87, 100) - (0.1 + 0.9 * (1.0 - 12.0 / 25.0))).abs() < 1e-12);
    }
}
