//! The pretrain environment at scale `tiny`: bit-identical reruns (on one thread or two), and responses a
//! researcher expects.
//! Each run takes about 15 s on one core; the file runs seven.

use ideator_envs::executor::{execute, run_recipe};
use ideator_envs::pretrain::Pretrain;
use ideator_envs::{Environment, ExecResult, FailureCause, RunContext, Status};
use std::sync::Once;
use std::time::Duration;

/// One thread per run: tests run side by side, and candle's spinning barriers collapse when cores are
/// oversubscribed. Must happen before the first tensor op of the process.
fn single_threaded() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                std::env::set_var(var, "1");
            }
        }
    });
}

fn run(changes: &str, seed: u64) -> ExecResult {
    run_on_threads(changes, seed, 1)
}

/// A run whose micro-batches go to `threads` threads (each running single-threaded tensor ops).
fn run_on_threads(changes: &str, seed: u64, threads: usize) -> ExecResult {
    single_threaded();
    let env = Pretrain::new();
    let ctx = RunContext::new("tiny", seed, std::env::temp_dir()).with_threads(threads);
    let r = if changes.is_empty() {
        run_recipe(&env, &env.baseline("tiny").unwrap(), &ctx)
    } else {
        execute(&env, &format!("[Experiment]\ntest\n[Code Changes]\n{changes}\n[End]"), &ctx)
    };
    eprintln!("{changes:?} seed {seed}: {:?} reward {:.4} ({:.1} s) {}", r.cause, r.reward, r.seconds, r.message);
    r
}

#[test]
fn same_seed_same_result_bit_for_bit_on_any_thread_count() {
    let a = run("", 0);
    // Micro-batches computed on two threads are summed in the same order: the thread count changes nothing.
    let b = run_on_threads("", 0, 2);
    assert_eq!(a.status, Status::Ok, "{}", a.message);
    assert_eq!(a.reward.to_bits(), b.reward.to_bits());
    for key in ["val_loss", "train_loss", "steps", "flops"] {
        assert_eq!(a.metrics[key].to_bits(), b.metrics[key].to_bits(), "{key}");
    }
    let other = run("", 1);
    assert_ne!(a.reward, other.reward, "another seed must give another run");
    // The baseline learns: far below uniform guessing (ln 256 = 5.55 nats per byte).
    assert!(a.metrics["val_loss"] < 3.2, "baseline val_loss {}", a.metrics["val_loss"]);
    assert!(a.metrics["steps"] >= 80.0);
}

#[test]
fn learning_rate_ten_times_too_high_is_worse_and_a_warmup_with_ema_is_not() {
    let baseline = run("", 0);
    let too_high = run("lr = 1e-2", 0);
    let warmup_ema = run("warmup_frac = 0.05\nema_decay = 0.9", 0);
    assert!(too_high.is_ok() && warmup_ema.is_ok());
    assert!(too_high.reward < baseline.reward, "lr 1e-2: {} vs baseline {}", too_high.reward, baseline.reward);
    assert!(
        warmup_ema.reward >= baseline.reward * 0.995,
        "warm-up + EMA: {} vs baseline {}",
        warmup_ema.reward,
        baseline.reward
    );
}

#[test]
fn divergence_and_time_limits_are_recorded_causes() {
    let diverged = run("optimizer = \"sgd\"\nlr = 1.0\nmomentum = 0.99\ngrad_clip = 0.0\ninit_std = 1.0", 0);
    assert_eq!(diverged.cause, Some(FailureCause::NonFiniteLoss), "{}", diverged.message);
    assert_eq!(diverged.reward, 0.0);

    single_threaded();
    let env = Pretrain::new();
    let ctx = RunContext::new("tiny", 0, std::env::temp_dir()).with_time_limit(Duration::from_millis(1500));
    let r = run_recipe(&env, &env.baseline("tiny").unwrap(), &ctx);
    assert_eq!(r.cause, Some(FailureCause::TimeLimit), "{}", r.message);
    assert!(r.seconds < 10.0, "stopped after {} s", r.seconds);
    assert!(r.metrics["steps_completed"] < r.metrics["steps"]);
    assert!(r.metrics["tokens_per_second"] > 0.0);
}
