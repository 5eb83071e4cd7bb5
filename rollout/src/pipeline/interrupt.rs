//! Ctrl-C (SIGINT) and SIGTERM as a stop flag: the first one asks the pipeline to stop cleanly (stop sampling,
//! cancel or wait for runs, checkpoint); a second one exits at once (the run store still allows a resume). Either
//! way the process ends with the shells' code for the signal, 128 + its number (130 for SIGINT, 143 for SIGTERM),
//! so that `ideator train ... && next` never mistakes an interrupted run for a finished one.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
/// The first signal received (0: none).
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    let _ = FIRST_SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + signal) };
    }
    if let Some(f) = FLAG.get() {
        f.store(true, Ordering::SeqCst);
    }
    const MSG: &[u8] = b"\ninterrupted: stopping cleanly (press Ctrl-C again to quit at once)\n";
    // SAFETY: write is async-signal-safe.
    unsafe { libc::write(2, MSG.as_ptr().cast(), MSG.len()) };
}

/// Installs the handlers (once per process) and returns the flag they set.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false))).clone();
    // SAFETY: the handler only touches atomics and calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    flag
}

/// The exit code an interrupted process should end with: 128 + the first signal received (130 for SIGINT, 143 for
/// SIGTERM), or `None` when no signal arrived.
pub fn exit_code() -> Option<u8> {
    match FIRST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => u8::try_from(128 + s).ok(),
    }
}
