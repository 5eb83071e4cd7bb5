//! One writer per run folder: `train`, `evolve`, `sft` and `eval` hold an exclusive OS file lock (`flock`) on
//! `RUN/ideator.lock` for as long as they run. Two writers on one folder used to interleave their store writes
//! and die minutes later on a UNIQUE constraint; now the second is refused (after a 3 s grace period), with the pid and command of
//! the first (written into the lock file). The kernel releases a `flock` when its holder dies, SIGKILL included,
//! so a crash never leaves a stale lock behind: the file may stay, the lock does not.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock file's name inside a run folder.
pub(crate) const LOCK_FILE: &str = "ideator.lock";

/// Held while a command writes a run folder; dropping it (or the process dying) releases the lock.
pub(crate) struct RunLock {
    // Rust opens files close-on-exec, so `ideator exec` children never inherit (and never keep) the lock.
    _file: File,
}

/// Creates `dir` if needed and locks it for `command` (e.g. "train").
///
/// Errors: the folder cannot be created or the lock file opened; or another process holds the lock (the error
/// names its pid and command, read from the lock file, and says what to do).
pub(crate) fn lock_run_folder(dir: &Path, command: &str) -> anyhow::Result<RunLock> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create run folder {}: {e}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the run folder's lock file {}: {e}; a writing command needs a writable run folder (a \
                 read-only one can still be read by compare and report, or evaluated with --run-dir elsewhere)",
                path.display()
            )
        })?;
    if let Err(err) = lock_with_grace(&file) {
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(held_elsewhere(dir, &path, &mut file));
        }
        anyhow::bail!("cannot lock {}: {err}", path.display());
    }
    let holder = format!("pid {} (ideator {command})\n", std::process::id());
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(holder.as_bytes()))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(RunLock { _file: file })
}

/// How long a held lock is retried before the folder counts as in use.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Takes the exclusive lock, retrying for [`LOCK_GRACE`] while another holder has it.
///
/// Why a grace period: a resume started the moment an aborted `train` was reaped was once refused here
/// (1 run of the crash-resume test in 4 full-suite runs on 2 cores): the lock outlived the process for a moment.
/// The likely holder (not verified): an execution's child forked just before the abort and not yet through its
/// `pre_exec` check, which exits when the parent is gone; until it runs, it shares the lock's open file
/// description. A run that is really in use still gets the error, 3 s later.
fn lock_with_grace(file: &File) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        // SAFETY: flock on a file descriptor we own; LOCK_NB makes it return at once instead of waiting.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) || start.elapsed() >= LOCK_GRACE {
            return Err(err);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The refusal when another process holds the lock, naming it from what it wrote into the file.
fn held_elsewhere(dir: &Path, path: &Path, file: &mut File) -> anyhow::Error {
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    let holder = holder.trim();
    let who = if holder.is_empty() { "another process".to_string() } else { format!("another process, {holder}") };
    anyhow::anyhow!(
        "run folder {} is in use by {who} (lock {}); wait for it to finish or stop it, or choose another --run-dir",
        dir.display(),
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_run_folder(dir.path(), "train").unwrap();
        // flock locks belong to the open file description: a second open in this process conflicts too.
        let err = lock_run_folder(dir.path(), "eval").err().expect("refused").to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(err.contains("ideator train"), "{err}");
        drop(first);
        let again = lock_run_folder(dir.path(), "eval").unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("pid {} (ideator eval)\n", std::process::id()));
        drop(again);
    }

    #[test]
    fn a_missing_folder_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        let _lock = lock_run_folder(&nested, "sft").unwrap();
        assert!(nested.join(LOCK_FILE).is_file());
    }
}
