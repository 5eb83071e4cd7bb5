//! The local backend with small shell programs standing in for `ideator exec`: slots, environment of each run,
//! time limits that kill a whole process group, cancellation, crashes, and re-attaching after a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ideator_envs::backend::local::GpuSelection;
use ideator_envs::backend::{Backend, Finished, LocalBackend, LocalConfig, Outcome, RunSpec};
use ideator_envs::FailureCause;

/// A run of `sh -c SCRIPT`.
fn sh(dir: &Path, key: &str, script: &str, limit: Option<f64>) -> RunSpec {
    RunSpec {
        key: key.into(),
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".into(), script.into()],
        env: vec![("EXTRA".into(), "x".into())],
        work_dir: dir.join(key),
        time_limit: limit.map(Duration::from_secs_f64),
    }
}

const OK_WITH_ENV: &str = r#"sleep 0.3; printf '{"status":"ok","reward":%s,"metrics":{},"cause":null,"message":"gpu=%s extra=%s","seconds":0.3}\n' "$IDEATOR_THREADS" "${CUDA_VISIBLE_DEVICES:-none}" "$EXTRA""#;

fn wait_all(b: &mut dyn Backend, n: usize, limit: Duration) -> Vec<Finished> {
    let t0 = Instant::now();
    let mut out = vec![];
    while out.len() < n {
        assert!(t0.elapsed() < limit, "only {} of {n} runs ended within {limit:?}", out.len());
        out.extend(b.poll());
        std::thread::sleep(Duration::from_millis(10));
    }
    out
}

fn result(f: &Finished) -> &ideator_envs::ExecResult {
    match &f.outcome {
        Outcome::Result(r) => r,
        Outcome::Infrastructure(m) => panic!("{}: infrastructure failure {m}", f.key),
    }
}

#[test]
fn slots_limit_concurrency_and_each_run_gets_its_threads_and_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LocalConfig {
        gpus: GpuSelection::Ids(vec![3, 5]),
        runs_per_gpu: 2,
        threads_per_run: Some(3),
        ..Default::default()
    };
    let mut b = LocalBackend::new(&cfg).unwrap();
    assert_eq!(b.slots(), 4);
    for i in 0..4 {
        b.submit(&sh(dir.path(), &format!("r{i}"), OK_WITH_ENV, None)).unwrap();
    }
    assert!(b.submit(&sh(dir.path(), "r4", OK_WITH_ENV, None)).is_err(), "no fifth slot");
    let done = wait_all(&mut b, 4, Duration::from_secs(20));
    let mut gpus: Vec<String> = done
        .iter()
        .map(|f| {
            let r = result(f);
            assert!(r.is_ok(), "{r:?}");
            assert_eq!(r.reward, 3.0, "IDEATOR_THREADS reaches the run");
            assert!(r.message.ends_with("extra=x"), "{}", r.message);
            r.message.split_whitespace().next().unwrap().to_string()
        })
        .collect();
    gpus.sort();
    assert_eq!(gpus, ["gpu=3", "gpu=3", "gpu=5", "gpu=5"]);
    // Slots are free again.
    b.submit(&sh(dir.path(), "again", OK_WITH_ENV, None)).unwrap();
    assert_eq!(wait_all(&mut b, 1, Duration::from_secs(20)).len(), 1);
}

#[test]
fn cpu_slots_share_the_cores_and_hide_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LocalBackend::new(&LocalConfig { slots: 2, ..Default::default() }).unwrap();
    assert!(b.threads_per_run() >= 1);
    b.submit(&sh(dir.path(), "a", OK_WITH_ENV, None)).unwrap();
    let f = wait_all(&mut b, 1, Duration::from_secs(20));
    assert!(result(&f[0]).message.starts_with("gpu=none"));
}

fn alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn a_run_past_its_time_limit_is_killed_with_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LocalBackend::new(&LocalConfig { slots: 1, ..Default::default() }).unwrap();
    // The run starts a grandchild (sleep) and waits: the group kill must take the grandchild too.
    let spec = sh(dir.path(), "slow", "sleep 60 & echo $! > grandchild.pid; wait", Some(0.5));
    b.submit(&spec).unwrap();
    let t0 = Instant::now();
    let f = wait_all(&mut b, 1, Duration::from_secs(20));
    assert!(t0.elapsed() < Duration::from_secs(10));
    let r = result(&f[0]);
    assert_eq!(r.cause, Some(FailureCause::TimeLimit), "{r:?}");
    let pid: i32 = std::fs::read_to_string(spec.work_dir.join("grandchild.pid")).unwrap().trim().parse().unwrap();
    let t0 = Instant::now();
    while alive(pid) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "the grandchild {pid} survived the kill");
}

#[test]
fn crashes_are_idea_failures_with_the_reason_and_cancelled_runs_are_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = LocalBackend::new(&LocalConfig { slots: 2, ..Default::default() }).unwrap();
    b.submit(&sh(dir.path(), "crash", "echo 'error: something broke' >&2; exit 3", None)).unwrap();
    b.submit(&sh(dir.path(), "cancelled", "sleep 60", None)).unwrap();
    b.cancel("cancelled");
    let f = wait_all(&mut b, 1, Duration::from_secs(20));
    assert_eq!(f[0].key, "crash");
    let r = result(&f[0]);
    assert_eq!(r.cause, Some(FailureCause::RuntimeError));
    assert!(r.message.contains("code 3") && r.message.contains("something broke"), "{}", r.message);
    std::thread::sleep(Duration::from_millis(200));
    assert!(b.poll().is_empty(), "a cancelled run is not reported");
    assert_eq!(b.running(), 0);
}

#[test]
fn reattach_reuses_a_finished_result_and_reports_a_lost_run() {
    let dir = tempfile::tempdir().unwrap();
    let finished = sh(dir.path(), "finished", OK_WITH_ENV, None);
    {
        let mut first = LocalBackend::new(&LocalConfig { slots: 1, ..Default::default() }).unwrap();
        first.submit(&finished).unwrap();
        wait_all(&mut first, 1, Duration::from_secs(20));
    }
    let lost = sh(dir.path(), "lost", OK_WITH_ENV, None);
    std::fs::create_dir_all(&lost.work_dir).unwrap();
    std::fs::write(lost.stdout_path(), "{\"status\":\"o").unwrap(); // died while printing
    let mut b = LocalBackend::new(&LocalConfig { slots: 1, ..Default::default() }).unwrap();
    assert!(b.reattach(&finished, Some("pid:1")).unwrap());
    assert!(!b.reattach(&lost, None).unwrap());
    let f = b.poll();
    assert_eq!(f.len(), 1);
    assert!(result(&f[0]).is_ok());
}

#[test]
fn bad_configs_are_refused() {
    assert!(LocalBackend::new(&LocalConfig { slots: 0, ..Default::default() }).is_err());
    assert!(LocalBackend::new(&LocalConfig { gpus: GpuSelection::Ids(vec![]), ..Default::default() }).is_err());
    assert!(
        LocalBackend::new(&LocalConfig { gpus: GpuSelection::Named("all".into()), ..Default::default() }).is_err()
    );
    let cfg: LocalConfig = toml::from_str("slots = 3\ngpus = [0, 1]\nruns_per_gpu = 2").unwrap();
    assert_eq!(cfg.slot_gpus().unwrap(), vec![Some(0), Some(0), Some(1), Some(1)]);
    let cfg: LocalConfig = toml::from_str("slots = 3").unwrap();
    assert_eq!(cfg.slot_gpus().unwrap(), vec![None, None, None]);
    assert!(toml::from_str::<LocalConfig>("slot = 3").is_err(), "unknown keys are refused");
}
