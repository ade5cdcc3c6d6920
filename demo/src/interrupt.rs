//! Ctrl-C (and SIGTERM, SIGHUP) during `ferry-demo`. Dying at once would
//! leave namespaces, a cgroup and attached programs behind, so the handler
//! only raises a flag; the demo looks at it before every step and inside
//! every loop, and unwinds through its guards, which remove everything.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const NOTICE: &[u8] = b"\nferry-demo: interrupted; cleaning up (a few seconds at most)\n";

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap and write(2).
    if !INTERRUPTED.swap(true, Ordering::SeqCst) {
        // SAFETY: write(2) of a static buffer to stderr.
        unsafe {
            libc::write(libc::STDERR_FILENO, NOTICE.as_ptr().cast(), NOTICE.len());
        }
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP. SA_RESTART keeps
/// the system calls in flight (helper commands, sleeps, socket reads)
/// going; they are all bounded, and the flag is seen right after.
pub(crate) fn install() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is valid; the handler is an extern "C"
        // fn that only does async-signal-safe work.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once a signal has arrived, so `?` unwinds the demo.
pub(crate) fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted; everything the demo made was removed");
    }
    Ok(())
}
