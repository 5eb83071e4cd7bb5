//! Learning-rate schedules: a multiplier of the peak rate at each step (linear warm-up, then the shape).
//!
//! Separate from the trainer's `ScheduleConfig` (trainer/src/schedule.rs): these are knobs of the environment with
//! their own meaning (WSD's cooldown counted in steps of the whole run) and pinned rewards; see `optim.rs`.

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    Constant,
    Cosine,
    Linear,
    /// Warm-up, stable, decay: constant until the last `cooldown_frac` of the run, then linear to the minimum.
    Wsd {
        cooldown_frac: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub shape: Shape,
    pub total_steps: usize,
    pub warmup_steps: usize,
    /// The multiplier at the end of the decay, as a fraction of the peak.
    pub min_frac: f64,
}

impl Schedule {
    /// The multiplier of the peak learning rate at `step` (0-based).
    pub(crate) fn multiplier(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = (self.total_steps - self.warmup_steps).max(1) as f64;
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

    fn sched(shape: Shape, warmup: usize) -> Schedule {
        Schedule { shape, total_steps: 100, warmup_steps: warmup, min_frac: 0.1 }
    }

    #[test]
    fn warmup_rises_linearly_to_the_peak() {
        let s = sched(Shape::Cosine, 10);
        assert!((s.multiplier(0) - 0.1).abs() < 1e-12);
        assert!((s.multiplier(9) - 1.0).abs() < 1e-12);
        assert!((s.multiplier(10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn shapes_decay_to_the_minimum() {
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
    }
}
