//! The Slurm backend against a real one-node cluster (scripts/slurm-test-cluster.sh starts one; CI does so in
//! scripts/test.sh). Without a cluster the test says so loudly and passes, unless IDEATOR_REQUIRE_SLURM=1 (set by
//! CI), where a missing cluster fails it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ideator_envs::backend::{Backend, Finished, Outcome, RunSpec, SlurmBackend, SlurmConfig};
use ideator_envs::FailureCause;

fn cluster() -> bool {
    match SlurmBackend::available() {
        Ok(()) => true,
        Err(e) => {
            let msg = format!(
                "\n\n!!!! SLURM TEST NOT RUN: no Slurm cluster is reachable ({e}).\n!!!! Start one with \
                 `scripts/slurm-test-cluster.sh start` (needs root and Debian's slurm-wlm + munge).\n\n"
            );
            if std::env::var("IDEATOR_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
                panic!("{msg}");
            }
            eprintln!("{msg}");
            false
        }
    }
}

fn sh(dir: &Path, key: &str, script: &str, limit: Option<f64>) -> RunSpec {
    RunSpec {
        key: key.into(),
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        work_dir: dir.join(key),
        time_limit: limit.map(Duration::from_secs_f64),
    }
}

fn ok_after(secs: f64, reward: f64) -> String {
    format!(
        r#"sleep {secs}; printf '{{"status":"ok","reward":{reward},"metrics":{{"threads":%s}},"cause":null,"message":"done","seconds":{secs}}}\n' "$IDEATOR_THREADS""#
    )
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn job_state(id: &str) -> String {
    let out = Command::new("squeue").args(["-h", "--states=all", "-o", "%i|%T"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.split_once('|').filter(|(i, _)| *i == id).map(|(_, s)| s.to_string()))
        .unwrap_or_default()
}

fn wait_for(b: &mut dyn Backend, n: usize, limit: Duration) -> Vec<Finished> {
    let t0 = Instant::now();
    let mut out = vec![];
    while out.len() < n {
        assert!(t0.elapsed() < limit, "only {} of {n} jobs ended within {limit:?}: {:?}", out.len(), out);
        out.extend(b.poll());
        std::thread::sleep(Duration::from_millis(100));
    }
    out
}

#[test]
fn a_batch_with_a_timeout_a_crash_and_cancellations_goes_through_slurm() {
    if !cluster() {
        return;
    }
    // A folder every node can read: the test node is this machine.
    let dir = tempfile::tempdir().unwrap();
    let cfg = SlurmConfig { max_jobs: 8, cpus_per_run: 1, poll_interval_s: 0.2, ..Default::default() };
    let mut b = SlurmBackend::new(&cfg).unwrap();
    let tag = unique("ideator-test");
    let mut keys = vec![];
    for i in 0..4 {
        let key = format!("{tag}-ok{i}");
        b.submit(&sh(dir.path(), &key, &ok_after(0.5 + 0.3 * i as f64, i as f64 / 10.0), Some(60.0))).unwrap();
        keys.push(key);
    }
    let slow = format!("{tag}-slow");
    b.submit(&sh(dir.path(), &slow, "sleep 120", Some(3.0))).unwrap();
    let crash = format!("{tag}-crash");
    b.submit(&sh(dir.path(), &crash, "echo 'error: bad things' >&2; exit 4", Some(60.0))).unwrap();
    let outside = format!("{tag}-outside");
    let outside_id = b.submit(&sh(dir.path(), &outside, "sleep 120", Some(60.0))).unwrap();
    let ours = format!("{tag}-ours");
    let ours_id = b.submit(&sh(dir.path(), &ours, "sleep 120", Some(60.0))).unwrap();
    assert_eq!(b.running(), 8);
    assert!(b.submit(&sh(dir.path(), "one-too-many", "true", None)).is_err(), "max_jobs is respected");

    // Someone else cancels one job (an infrastructure failure: retried by the pipeline); we cancel another (not
    // reported).
    std::thread::sleep(Duration::from_secs(1));
    assert!(Command::new("scancel").arg(&outside_id).status().unwrap().success());
    b.cancel(&ours);

    let done = wait_for(&mut b, 7, Duration::from_secs(90));
    let get = |k: &str| done.iter().find(|f| f.key == k).unwrap_or_else(|| panic!("{k} not reported: {done:?}"));
    for (i, k) in keys.iter().enumerate() {
        match &get(k).outcome {
            Outcome::Result(r) => {
                assert!(r.is_ok(), "{r:?}");
                assert_eq!(r.reward, i as f64 / 10.0);
                assert_eq!(r.metrics["threads"], 1.0, "IDEATOR_THREADS = cpus_per_run");
            }
            o => panic!("{k}: {o:?}"),
        }
    }
    match &get(&slow).outcome {
        Outcome::Result(r) => assert_eq!(r.cause, Some(FailureCause::TimeLimit), "{r:?}"),
        o => panic!("{o:?}"),
    }
    match &get(&crash).outcome {
        Outcome::Result(r) => {
            assert_eq!(r.cause, Some(FailureCause::RuntimeError));
            assert!(r.message.contains("bad things"), "{}", r.message);
        }
        o => panic!("{o:?}"),
    }
    assert!(
        matches!(&get(&outside).outcome, Outcome::Infrastructure(m) if m.contains("CANCELLED")),
        "{:?}",
        get(&outside)
    );
    assert!(!done.iter().any(|f| f.key == ours));
    assert_eq!(job_state(&ours_id), "CANCELLED");
    assert_eq!(b.running(), 0);
}

#[test]
fn a_restarted_trainer_reattaches_by_job_id_or_by_name() {
    if !cluster() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = SlurmConfig { max_jobs: 4, poll_interval_s: 0.2, ..Default::default() };
    let tag = unique("ideator-reattach");
    let (by_id, by_name) = (
        sh(dir.path(), &format!("{tag}-a"), &ok_after(1.5, 0.25), Some(60.0)),
        sh(dir.path(), &format!("{tag}-b"), &ok_after(1.5, 0.5), Some(60.0)),
    );
    let id = {
        // The first trainer submits and "dies" (drops its backend without cancelling).
        let mut first = SlurmBackend::new(&cfg).unwrap();
        let id = first.submit(&by_id).unwrap();
        first.submit(&by_name).unwrap();
        std::mem::forget(first);
        id
    };
    let mut b = SlurmBackend::new(&cfg).unwrap();
    assert!(b.reattach(&by_id, Some(&id)).unwrap());
    assert!(b.reattach(&by_name, None).unwrap(), "found by its unique job name");
    let never = sh(dir.path(), &format!("{tag}-never"), "true", None);
    assert!(!b.reattach(&never, None).unwrap(), "a job that was never submitted is lost");
    let done = wait_for(&mut b, 2, Duration::from_secs(60));
    let mut rewards: Vec<f64> = done
        .iter()
        .map(|f| match &f.outcome {
            Outcome::Result(r) => r.reward,
            o => panic!("{o:?}"),
        })
        .collect();
    rewards.sort_by(f64::total_cmp);
    assert_eq!(rewards, [0.25, 0.5]);
}
