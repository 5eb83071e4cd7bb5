//! Containment of an external run (the `codebase` environment's program, and the process handling of the
//! `command` environment's program).
//!
//! What is contained:
//! - **Lifetime.** The program leads its own process group. It gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies when
//!   the thread that started it dies, and a forked watcher (`GroupWatch`) kills the whole group when the
//!   executor process ends in any way (normal end, error, Ctrl-C, SIGKILL): the watcher blocks on a pipe whose
//!   only writer is the executor, and the kernel closes that pipe when the executor dies. Grandchildren that start
//!   a new process group or session of their own (`setsid`) escape the group kill; they still die with their
//!   parent only if they asked for it.
//! - **Resources** (rlimits, per process, inherited by children): address space (`RLIMIT_AS`), CPU seconds
//!   (`RLIMIT_CPU`, the kernel sends SIGXCPU then SIGKILL), and the largest file a process may write
//!   (`RLIMIT_FSIZE`, SIGXFSZ past it: this also caps the captured stdout and stderr). The wall-clock limit is
//!   enforced by the executor, which kills the group. `RLIMIT_AS` counts virtual memory: CUDA programs reserve
//!   far more than they use, so GPU codebases must turn it off (`memory_limit_mb = 0`).
//! - **Environment.** The child starts from an empty environment plus an allow-list (`PATH`, `HOME`, locale, the
//!   variables the config names): API keys and tokens of the trainer do not reach an idea's code.
//! - **Network.** When the executor runs as root, the child enters a new, empty network namespace
//!   (`unshare(CLONE_NEWNET)`: only a downed loopback, no route out). Without root there is no network isolation.
//!
//! What is *not* contained: the file system (the program runs as the executor's user and can read and write
//! whatever that user can; the codebase environment detects changes to protected files by hash afterwards, it does
//! not prevent them), other processes of the same user, and the GPU. For untrusted code on a shared machine, run
//! the whole executor in a container or a Slurm job with its own user.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Resource limits of a sandboxed program; `None` leaves the inherited limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Largest virtual address space, bytes (`RLIMIT_AS`).
    pub address_space_bytes: Option<u64>,
    /// CPU time, seconds (`RLIMIT_CPU`).
    pub cpu_seconds: Option<u64>,
    /// Largest file the program may write, bytes (`RLIMIT_FSIZE`).
    pub file_size_bytes: Option<u64>,
}

/// The variables a sandboxed program always inherits (when the executor has them).
pub(crate) const BASE_ENV: [&str; 8] =
    ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "CUDA_VISIBLE_DEVICES"];

/// How one program is contained.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub limits: Limits,
    /// Put the program in a new network namespace when running as root.
    pub isolate_network: bool,
    /// Variables passed through from the executor's environment besides `BASE_ENV`.
    pub pass_env: Vec<String>,
    /// Variables set for the program (after the pass-through ones).
    pub set_env: BTreeMap<String, String>,
}

impl Policy {
    /// Whether this process can isolate the network (root: `unshare(CLONE_NEWNET)` needs `CAP_SYS_ADMIN`).
    pub fn network_isolation_available() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}

/// Configures `cmd` to run contained by `policy`: own process group, death with the starting thread, rlimits,
/// scrubbed environment, and a new network namespace when asked and possible.
pub(crate) fn contain(cmd: &mut Command, policy: &Policy) {
    cmd.env_clear();
    for name in BASE_ENV.iter().copied().chain(policy.pass_env.iter().map(String::as_str)) {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.envs(&policy.set_env);
    cmd.process_group(0);
    let limits = policy.limits;
    let isolate = policy.isolate_network && Policy::network_isolation_available();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only calls async-signal-safe functions (prctl, getppid,
    // setrlimit, unshare, _exit) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            die_with_parent_now(parent);
            set_limit(libc::RLIMIT_AS, limits.address_space_bytes)?;
            set_limit(libc::RLIMIT_CPU, limits.cpu_seconds)?;
            set_limit(libc::RLIMIT_FSIZE, limits.file_size_bytes)?;
            if isolate && libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes the program die (SIGKILL) with the thread that starts it, and not start at all when that thread is
/// already gone. Used by the `command` environment, whose program keeps its full environment.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl, getppid and _exit are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            die_with_parent_now(parent);
            Ok(())
        });
    }
}

/// In the forked child: SIGKILL on the parent's death; exit at once when the parent died before the prctl.
fn die_with_parent_now(parent: libc::pid_t) {
    // SAFETY: async-signal-safe calls with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(137);
        }
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: Option<u64>) -> std::io::Result<()> {
    let Some(v) = value else { return Ok(()) };
    let lim = libc::rlimit { rlim_cur: v as libc::rlim_t, rlim_max: v as libc::rlim_t };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILL to a whole process group (a group that is already gone is ignored).
pub(crate) fn kill_group(pgid: u32) {
    if pgid > 0 {
        // SAFETY: killpg only signals; no memory is involved.
        unsafe {
            libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// A forked watcher that kills a process group when the executor process ends, however it ends.
///
/// The watcher blocks reading a pipe whose write end only the executor holds (close-on-exec, so the program does
/// not inherit it). When the executor dies, the kernel closes the write end, the read returns, and the watcher
/// kills the group. On the normal path, dropping the guard kills the group, then the watcher, and reaps it.
pub(crate) struct GroupWatch {
    pgid: u32,
    watcher: libc::pid_t,
    write_fd: libc::c_int,
}

impl GroupWatch {
    /// Starts watching process group `pgid`. Fails only when the pipe or the fork fails.
    pub(crate) fn start(pgid: u32) -> std::io::Result<GroupWatch> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds into a valid array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let [read_fd, write_fd] = fds;
        // SAFETY: the child only calls async-signal-safe functions (close, read, killpg, _exit) on plain integers.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: closing fds we own.
            unsafe {
                libc::close(read_fd);
                libc::close(write_fd);
            }
            return Err(err);
        }
        if pid == 0 {
            // SAFETY: see above; the child never returns into Rust code.
            unsafe {
                libc::close(write_fd);
                let mut byte = 0u8;
                loop {
                    let n = libc::read(read_fd, (&mut byte as *mut u8).cast(), 1);
                    if n < 0 && *libc::__errno_location() == libc::EINTR {
                        continue;
                    }
                    break;
                }
                libc::killpg(pgid as libc::pid_t, libc::SIGKILL);
                libc::_exit(0);
            }
        }
        // SAFETY: the parent keeps only the write end.
        unsafe {
            libc::close(read_fd);
        }
        Ok(GroupWatch { pgid, watcher: pid, write_fd })
    }
}

impl Drop for GroupWatch {
    fn drop(&mut self) {
        kill_group(self.pgid);
        // SAFETY: the watcher is our child; killing and reaping it, then closing our fd, touches nothing else.
        unsafe {
            libc::kill(self.watcher, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.watcher, &mut status, 0);
            libc::close(self.write_fd);
        }
    }
}

/// How a contained program ended.
#[derive(Debug)]
pub(crate) struct Ran {
    pub status: ExitStatus,
    /// The wall-clock limit was reached and the group killed.
    pub timed_out: bool,
    pub seconds: f64,
}

const POLL: Duration = Duration::from_millis(20);

/// Runs `program` with `args` in `cwd`, contained by `policy`, for at most `limit` of wall-clock time, with stdout
/// and stderr written to the two files. The whole process group is killed when the program ends, when the limit
/// is reached, and (through [`GroupWatch`]) when this process dies.
///
/// Errors: the log files cannot be created, the program cannot start, or waiting for it fails.
pub(crate) fn run(
    program: &Path,
    args: &[String],
    cwd: &Path,
    policy: &Policy,
    limit: Duration,
    stdout_path: &Path,
    stderr_path: &Path,
) -> std::io::Result<Ran> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(File::create(stdout_path)?)
        .stderr(File::create(stderr_path)?);
    contain(&mut cmd, policy);
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let watch = GroupWatch::start(child.id())
        .map_err(|e| tracing::warn!("cannot start the watcher of process group {}: {e}", child.id()))
        .ok();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() >= limit {
            timed_out = true;
            kill_group(child.id());
            break child.wait()?;
        }
        std::thread::sleep(POLL);
    };
    // Whatever the program left behind in its group goes too (the guard kills the group on drop).
    drop(watch);
    kill_group(child.id());
    Ok(Ran { status, timed_out, seconds: start.elapsed().as_secs_f64() })
}
