use super::*;

fn idea(text: &str, n: usize) -> NewIdea {
    NewIdea {
        text: text.into(),
        token_ids: (0..n as u32).map(|i| i * 7 + 1).collect(),
        logprobs: (0..n).map(|i| -0.1 - i as f32 / 3.0).collect(),
        finish_reason: "stop".into(),
        seed: 42,
        reference: false,
    }
}

fn ok(reward: f64) -> ExecResult {
    ExecResult::ok(reward, BTreeMap::from([("val_loss".to_string(), 1.0 / reward)]), "fine")
}

fn setup() -> (tempfile::TempDir, Store, i64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let run = store.open_run("r", RunKind::Rl, "toy", "tiny", 3).unwrap().id;
    let prompt = store.intern_prompt(run, "p", &[1, 2, 3]).unwrap();
    (dir, store, run, prompt)
}

#[test]
fn migrations_apply_once_and_reopening_keeps_data() {
    let (dir, store, run, prompt) = setup();
    assert_eq!(store.schema_version().unwrap() as usize, MIGRATIONS.len());
    store
        .insert_group(
            run,
            &NewGroup {
                seq: 0,
                prompt_id: prompt,
                policy_version: 0,
                sample_seconds: 0.5,
                temperature: 1.0,
                ideas: vec![idea("a", 3)],
            },
        )
        .unwrap();
    drop(store);
    let again = Store::open_in(dir.path()).unwrap();
    assert_eq!(again.schema_version().unwrap() as usize, MIGRATIONS.len());
    assert_eq!(again.ideas(run).unwrap().len(), 1);
    assert_eq!(again.intern_prompt(run, "p", &[1, 2, 3]).unwrap(), prompt, "same prompt, same row");
    assert_ne!(again.intern_prompt(run, "q", &[1, 2]).unwrap(), prompt);
}

#[test]
fn processes_opening_a_fresh_store_at_once_all_succeed() {
    // A trainer creating its store while a reader polls the folder: both run the migrations' check at once.
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let opened: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| Store::open(&path).map(|_| ()))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in opened {
            r.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        assert_eq!(Store::open(&path).unwrap().schema_version().unwrap() as usize, MIGRATIONS.len());
    }
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    drop(Store::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&format!("PRAGMA user_version = {}", MIGRATIONS.len() + 1)).unwrap();
    drop(conn);
    let err = Store::open(&path).err().expect("refused").to_string();
    assert!(err.contains("newer"), "{err}");
}

#[test]
fn runs_are_matched_by_name_and_must_agree() {
    let (_dir, store, run, _) = setup();
    assert_eq!(store.open_run("r", RunKind::Rl, "toy", "tiny", 3).unwrap().id, run);
    assert!(store.open_run("r", RunKind::Rl, "toy", "tiny", 4).is_err(), "different seed");
    let other = store.open_run("eval-1", RunKind::Eval, "toy", "tiny", 3).unwrap();
    assert_ne!(other.id, run);
    assert_eq!(store.runs().unwrap().len(), 2);
}

#[test]
fn token_ids_and_logprobs_round_trip_bit_exactly() {
    let (_dir, store, run, prompt) = setup();
    let new = idea("x", 50);
    let g = store
        .insert_group(
            run,
            &NewGroup {
                seq: 0,
                prompt_id: prompt,
                policy_version: 2,
                sample_seconds: 0.1,
                temperature: 1.0,
                ideas: vec![new.clone()],
            },
        )
        .unwrap();
    let row = &g.ideas[0];
    assert_eq!(row.token_ids, new.token_ids);
    assert_eq!(
        row.logprobs.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        new.logprobs.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(row.key, "g000000-i0");
    assert_eq!(row.status, IdeaStatus::Pending);
    assert_eq!(g.policy_version, 2);
    assert_eq!(store.prompt_ids(g.prompt_id).unwrap(), vec![1, 2, 3]);
}

#[test]
fn lifecycle_results_are_recorded_once_and_complete_the_group() {
    let (_dir, store, run, prompt) = setup();
    let g = store
        .insert_group(
            run,
            &NewGroup {
                seq: 0,
                prompt_id: prompt,
                policy_version: 0,
                sample_seconds: 0.1,
                temperature: 1.0,
                ideas: vec![idea("a", 2), idea("b", 2)],
            },
        )
        .unwrap();
    let (a, b) = (g.ideas[0].id, g.ideas[1].id);
    let wd = std::path::Path::new("/tmp/w");
    store.mark_launching(a, 1, "local", wd, &wd.join("log")).unwrap();
    store.set_job_id(a, 1, "pid:12").unwrap();
    store.end_attempt(a, 1, "infrastructure", "node lost").unwrap();
    store.mark_pending(a).unwrap();
    store.mark_launching(a, 2, "local", wd, &wd.join("log")).unwrap();
    assert!(store.finish_idea(a, 2, &ok(0.5)).unwrap());
    assert!(!store.finish_idea(a, 2, &ok(0.9)).unwrap(), "a second result is ignored");
    assert_eq!(store.idea(a).unwrap().result.unwrap().reward, 0.5);
    assert_eq!(store.group(g.id).unwrap().status, GroupStatus::Executing);
    store.mark_launching(b, 1, "local", wd, &wd.join("log")).unwrap();
    let failed = ExecResult::failed(FailureCause::TimeLimit, "too slow");
    assert!(store.finish_idea(b, 1, &failed).unwrap());
    assert_eq!(store.group(g.id).unwrap().status, GroupStatus::Complete);
    let attempts = store.attempts(a).unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].outcome.as_deref(), Some("infrastructure"));
    assert_eq!(attempts[0].job_id.as_deref(), Some("pid:12"));
    assert_eq!(attempts[1].outcome.as_deref(), Some("result"));
    let counts = store.outcome_counts(run).unwrap();
    assert_eq!(counts.get("ok"), Some(&1));
    assert_eq!(counts.get("time_limit"), Some(&1));
    let b_row = store.idea(b).unwrap();
    assert_eq!(b_row.result.unwrap().cause, Some(FailureCause::TimeLimit));
}

#[test]
fn steps_rewind_without_losing_executions() {
    let (_dir, store, run, prompt) = setup();
    let mut groups = vec![];
    for seq in 0..3 {
        let g = store
            .insert_group(
                run,
                &NewGroup {
                    seq,
                    prompt_id: prompt,
                    policy_version: seq,
                    sample_seconds: 0.1,
                    temperature: 1.0,
                    ideas: vec![idea("a", 2)],
                },
            )
            .unwrap();
        store.mark_launching(g.ideas[0].id, 1, "local", Path::new("/w"), Path::new("/w/l")).unwrap();
        store.finish_idea(g.ideas[0].id, 1, &ok(0.1 + seq as f64)).unwrap();
        groups.push(g.id);
    }
    for (step, &g) in groups.iter().enumerate() {
        let record = StepRecord {
            step: step as u64,
            rewards: crate::pipeline::record::RewardStats::of(&[step as f64]),
            ..Default::default()
        };
        store.record_step(run, step as u64, &[(g, 1)], &record).unwrap();
    }
    let steps = store.steps(run).unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[2].record.rewards.reward_mean, Some(2.0), "the typed record reads back");
    assert_eq!(store.ideas_of_step(run, 1).unwrap().len(), 1);
    assert_eq!(store.staleness_histogram(run).unwrap(), BTreeMap::from([(1, 3)]));
    assert_eq!(store.policy_versions(run).unwrap(), vec![1, 2, 3]);
    store.rewind_to(run, 1).unwrap();
    assert_eq!(store.steps(run).unwrap().len(), 1);
    assert_eq!(store.policy_versions(run).unwrap(), vec![1]);
    let complete = store.groups_with_status(run, &[GroupStatus::Complete]).unwrap();
    assert_eq!(complete.iter().map(|g| g.id).collect::<Vec<_>>(), groups[1..].to_vec());
    assert!(complete.iter().all(|g| g.ideas[0].status == IdeaStatus::Done), "results are kept");
    assert_eq!(store.group_status_counts(run).unwrap().get("trained"), Some(&1));
}

#[test]
fn cancel_marks_unfinished_ideas_and_groups() {
    let (_dir, store, run, prompt) = setup();
    let g = store
        .insert_group(
            run,
            &NewGroup {
                seq: 0,
                prompt_id: prompt,
                policy_version: 0,
                sample_seconds: 0.1,
                temperature: 1.0,
                ideas: vec![idea("a", 1), idea("b", 1)],
            },
        )
        .unwrap();
    store.mark_launching(g.ideas[0].id, 1, "local", Path::new("/w"), Path::new("/w/l")).unwrap();
    assert_eq!(store.cancel_unfinished(run).unwrap(), 2);
    assert_eq!(store.idea_status_counts(run).unwrap().get("cancelled"), Some(&2));
    assert_eq!(store.group(g.id).unwrap().status, GroupStatus::Cancelled);
    assert_eq!(store.attempts(g.ideas[0].id).unwrap()[0].outcome.as_deref(), Some("cancelled"));
}

#[test]
fn two_connections_write_concurrently() {
    let (dir, store, run, prompt) = setup();
    let path = dir.path().join(STORE_FILE);
    let writer = std::thread::spawn(move || {
        let s = Store::open(&path).unwrap();
        for i in 0..50 {
            s.add_config(run, &format!("c{i}")).unwrap();
        }
    });
    for seq in 0..50 {
        store
            .insert_group(
                run,
                &NewGroup {
                    seq,
                    prompt_id: prompt,
                    policy_version: 0,
                    sample_seconds: 0.0,
                    temperature: 1.0,
                    ideas: vec![idea("a", 1)],
                },
            )
            .unwrap();
    }
    writer.join().unwrap();
    assert_eq!(store.configs(run).unwrap().len(), 50);
    assert_eq!(store.next_group_seq(run).unwrap(), 50);
}

fn set_read_only(dir: &Path, read_only: bool) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(if read_only { 0o444 } else { 0o644 })).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(if read_only { 0o555 } else { 0o755 })).unwrap();
}

#[test]
fn a_read_only_open_reads_without_writing_even_from_read_only_storage() {
    let (dir, store, run, prompt) = setup();
    let group = NewGroup {
        seq: 0,
        prompt_id: prompt,
        policy_version: 0,
        sample_seconds: 0.5,
        temperature: 1.0,
        ideas: vec![idea("a", 3)],
    };
    store.insert_group(run, &group).unwrap();
    // While the writer is open (its WAL holds the rows), a reader sees them and cannot write.
    let reader = Store::open_read_only(&dir.path().join(STORE_FILE)).unwrap();
    assert_eq!(reader.ideas(run).unwrap().len(), 1);
    let err = reader.set_run_status(run, RunStatus::Done).expect_err("a read-only store refuses writes").to_string();
    assert!(err.contains("readonly") || err.contains("read-only"), "{err}");
    drop((reader, store));
    // Archived: the folder and its files are read-only (the -shm file cannot be created).
    let files_before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    set_read_only(dir.path(), true);
    let reader = Store::open_read_only(&dir.path().join(STORE_FILE));
    let read = reader.and_then(|r| Ok((r.ideas(run)?.len(), r.run_info(run)?.name)));
    let files_after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    set_read_only(dir.path(), false);
    assert_eq!(read.unwrap(), (1, "r".to_string()));
    assert_eq!(files_before, files_after, "a read-only open creates no file (no -wal, no -shm)");
    // A missing store is an error naming it, and nothing is created.
    let missing = dir.path().join("nope").join(STORE_FILE);
    let err = Store::open_read_only(&missing).err().expect("missing").to_string();
    assert!(err.contains("nope"), "{err}");
    assert!(!missing.parent().unwrap().exists());
}

#[test]
fn the_immutable_fallback_reads_a_store_at_a_path_with_uri_characters() {
    // Root ignores permissions, so the fallback is exercised directly; the folder name needs percent-encoding.
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("a?b#c%d");
    std::fs::create_dir(&folder).unwrap();
    let run = {
        let store = Store::open_in(&folder).unwrap();
        store.open_run("r", RunKind::Rl, "toy", "tiny", 3).unwrap().id
    };
    let path = folder.join(STORE_FILE);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    for immutable in [false, true] {
        let store = Store::open_with(&path, &sqlite_uri(&path, immutable), flags).unwrap();
        assert_eq!(store.run_info(run).unwrap().env, "toy");
        assert!(store.set_run_status(run, RunStatus::Done).is_err(), "immutable={immutable}: read-only");
    }
}

#[test]
fn a_store_of_an_older_schema_is_read_through_an_upgraded_copy_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch("PRAGMA user_version = 1").unwrap();
        conn.execute(
            "INSERT INTO runs (name, kind, env, scale, seed, created_at, status) VALUES ('old', 'rl', 'toy', 'tiny', 1, 0, 'done')",
            [],
        )
        .unwrap();
    }
    let reader = Store::open_read_only(&path).unwrap();
    let run = reader.find_run("old").unwrap().expect("the old run");
    assert_eq!((run.status, run.error), (RunStatus::Done, None));
    assert_eq!(reader.schema_version().unwrap() as usize, MIGRATIONS.len(), "upgraded in the copy");
    drop(reader);
    let on_disk: i64 = Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(on_disk, 1, "the file is not upgraded by a reader");
}

#[test]
fn a_failed_run_keeps_its_error_until_it_runs_again() {
    let (_dir, store, run, _) = setup();
    store.fail_run(run, "loading the model: no such file").unwrap();
    let info = store.run_info(run).unwrap();
    assert_eq!((info.status, info.error.as_deref()), (RunStatus::Failed, Some("loading the model: no such file")));
    store.set_run_status(run, RunStatus::Running).unwrap();
    assert_eq!(store.run_info(run).unwrap().error, None);
}

#[test]
fn checkpoint_paths_are_stored_relative_to_the_run_folder() {
    let (dir, store, run, _) = setup();
    store.record_checkpoint(run, 1, &dir.path().join("checkpoints/step-00000001"), None).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    store.record_checkpoint(run, 2, &elsewhere.path().join("step-2"), Some(0.5)).unwrap();
    let paths: Vec<String> = store.checkpoints(run).unwrap().into_iter().map(|c| c.path).collect();
    assert_eq!(paths[0], "checkpoints/step-00000001");
    assert_eq!(paths[1], elsewhere.path().join("step-2").display().to_string(), "outside the folder: absolute");
}
