//! Ctrl-C (SIGINT) and SIGTERM as a stop flag: the first one asks the pipeline to stop cleanly (stop sampling,
//! cancel or wait for runs, checkpoint); a second one exits at once (the run store still allows a resume).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
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
