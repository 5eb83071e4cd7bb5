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
    /// WSD only: share of all the steps (warm-up included) spent decaying, rounded to whole steps (at least one);
    /// the last step reaches the floor.
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

    /// Learning rate of update `step` (0-based) out of `total_steps`, for peak rate `peak`: `peak` times
    /// [`Schedule::multiplier`].
    pub fn lr(&self, peak: f64, step: u64, total_steps: u64) -> f64 {
        let shape = match self.kind {
            ScheduleKind::Constant => Shape::Constant,
            ScheduleKind::Linear => Shape::Linear,
            ScheduleKind::Cosine => Shape::Cosine,
            ScheduleKind::Wsd => Shape::Wsd { cooldown_frac: self.decay_fraction },
        };
        let schedule = Schedule { shape, total_steps, warmup_steps: self.warmup_steps, min_frac: self.min_lr_ratio };
        peak * schedule.multiplier(step)
    }
}

/// The learning rate's shape after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Constant,
    Cosine,
    Linear,
    /// Warm-up, stable, decay: constant until the last `cooldown_frac` of all the steps (warm-up included, rounded
    /// to whole steps, at least one), then linear to the minimum, which the last step reaches.
    Wsd {
        cooldown_frac: f64,
    },
}

/// A learning-rate schedule as a multiplier of the peak rate: the project's one implementation, used by the
/// trainer ([`ScheduleConfig::lr`]) and by the pretrain environment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub shape: Shape,
    pub total_steps: u64,
    pub warmup_steps: u64,
    /// The multiplier at the end of the decay, as a fraction of the peak.
    pub min_frac: f64,
}

impl Schedule {
    /// The multiplier of the peak learning rate at `step` (0-based), in [0, 1]: `(step + 1) / warmup_steps` during
    /// the warm-up, then with progress `p = (step - warmup_steps) / (total_steps - warmup_steps)` clamped to [0, 1]:
    /// linear `1 - (1 - min) p`; cosine `min + (1 - min) (1 + cos(pi p)) / 2` (Loshchilov & Hutter 2017, SGDR);
    /// WSD (Hu et al. 2024, MiniCPM) as [`Shape::Wsd`] says. The arithmetic is pinned: the pretrain environment's
    /// rewards depend on it bit for bit.
    pub fn multiplier(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / decay_steps).clamp(0.0, 1.0);
        let min = self.min_frac;
        match self.shape {
            Shape::Constant => 1.0,
            Shape::Cosine => min + (1.0 - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Shape::Linear => 1.0 - (1.0 - min) * progress,
            Shape::Wsd { cooldown_frac } => {
                let cooldown = (cooldown_frac * self.total_steps as f64).round().max(1.0);
                let start = self.total_steps as f64 - cooldown;
                if (step as f64) < start {
                    1.0
                } else {
                    1.0 - (1.0 - min) * ((step as f64 - start + 1.0) / cooldown).min(1.0)
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
        assert_eq!(wsd.lr(1.0, 74, 100), 1.0, "stable until the last quarter");
        assert!((wsd.lr(1.0, 87, 100) - (1.0 - 0.9 * 13.0 / 25.0)).abs() < 1e-12);
        assert!((wsd.lr(1.0, 99, 100) - 0.1).abs() < 1e-12, "the last update is at the floor");
    }

    fn sched(shape: Shape, warmup: u64) -> Schedule {
        Schedule { shape, total_steps: 100, warmup_steps: warmup, min_frac: 0.1 }
    }

    #[test]
    fn multiplier_warms_up_linearly_to_the_peak() {
        let s = sched(Shape::Cosine, 10);
        assert!((s.multiplier(0) - 0.1).abs() < 1e-12);
        assert!((s.multiplier(9) - 1.0).abs() < 1e-12);
        assert!((s.multiplier(10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn multiplier_decays_monotonically_to_the_minimum() {
        for shape in [Shape::Cosine, Shape::Linear, Shape::Wsd { cooldown_frac: 0.2 }] {
            let s = sched(shape, 0);
            let m: Vec<f64> = (0..100).map(|i| s.multiplier(i)).collect();
            assert!(m.windows(2).all(|w| w[1] <= w[0] + 1e-12), "{shape:?} is not monotone");
            assert!((m[99] - 0.1).abs() < 0.02, "{shape:?} ends at {}", m[99]);
        }
        let wsd = sched(Shape::Wsd { cooldown_frac: 0.2 }, 0);
        assert_eq!(wsd.multiplier(79), 1.0);
        assert!(wsd.multiplier(80) < 1.0);
        assert_eq!(sched(Shape::Constant, 0).multiplier(99), 1.0);
        let no_cooldown = sched(Shape::Wsd { cooldown_frac: 0.0 }, 0);
        assert_eq!(no_cooldown.multiplier(98), 1.0, "a zero cool-down still decays on the last step only");
        assert!((no_cooldown.multiplier(99) - 0.1).abs() < 1e-12);
    }
}
