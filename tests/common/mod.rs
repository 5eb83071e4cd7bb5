//! What the CLI tests share: the `ideator` binary as a command that finds the assets and runs single-threaded (so
//! that runs are reproducible and tests running side by side do not oversubscribe the cores).

// Each test binary compiles this module and uses a subset of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The binary under test, with `IDEATOR_ASSETS` (the repository's `assets/` unless already set) and one thread.
pub fn ideator() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ideator"));
    if std::env::var_os("IDEATOR_ASSETS").is_none() {
        cmd.env("IDEATOR_ASSETS", Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"));
    }
    cmd.env("IDEATOR_THREADS", "1");
    // The kernel choice is the built-in one whatever this machine has calibrated (a test sets its own cache).
    cmd.env("IDEATOR_KERNEL_CACHE", "off");
    cmd
}

/// Runs the binary with `args`: (success, stdout, stderr).
pub fn run_ideator(args: &[&str]) -> (bool, String, String) {
    let out = ideator().args(args).output().expect("run ideator");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}
