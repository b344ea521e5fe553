//! Ties a child's lifetime to the spawning thread with `PR_SET_PDEATHSIG`.
//!
//! The workspace denies `unsafe_code`; this module is the one exception, because
//! `CommandExt::pre_exec` is `unsafe` and a pre-exec hook is the only way to make
//! the kernel kill qemu when the test process dies without running destructors
//! (SIGKILL, timeout of the test runner, abort). Without it stray qemu processes
//! keep eating the machine's two cores and hold image files open.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Arranges for the child to get SIGKILL when the thread that spawns it exits.
///
/// The kernel ties the "parent death" signal to the spawning *thread*, so the
/// `Command` must be spawned (and the child owned) by a thread that outlives it.
pub(super) fn kill_child_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec, so it must only make
    // async-signal-safe calls: prctl and getppid are plain syscalls, and the
    // error values are built without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then no signal
            // will ever come, so refuse to exec.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}
