//! The scheduling class of the server's threads (`[server] realtime_priority`).
//!
//! Why: when the core the server runs on also runs CPU-bound work (a compiler, another
//! service), a thread woken by a datagram waits for the kernel to take the core back from it.
//! Linux's fair scheduler (EEVDF, with RUN_TO_PARITY) lets the running task finish its slice,
//! checked at the scheduler tick, so the wait reaches a tick: 4 ms at HZ=250. A lamp's whole
//! fan-out waits with it (README "Performance", "Calls and lamps": every early NOTIFY slower
//! than 1 ms traced to the runtime thread waiting behind another process). Nice values do not
//! help across sessions (autogroups weigh each session alike); the real-time class does: a
//! woken real-time thread preempts time-shared ones at once. The kernel still keeps 5 % of
//! each second for time-shared tasks (`sched_rt_runtime_us`), so a busy server cannot lock
//! the machine.

use std::io;

/// Puts the calling thread in the round-robin real-time class at `priority` (1–99). Threads
/// it starts afterwards inherit the class (glibc creates threads with PTHREAD_INHERIT_SCHED):
/// called before the runtime and the store's writer are started, it covers all of them.
/// (Not SCHED_RESET_ON_FORK: the kernel applies it to new threads too, not only to
/// processes; the server starts no processes.)
pub fn set_realtime(priority: u8) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param {
            sched_priority: i32::from(priority),
        };
        // SAFETY: `param` is an initialized sched_param that outlives the call, which only
        // reads it; pid 0 is the calling thread.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = priority;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "real-time scheduling is only supported on Linux",
        ))
    }
}

/// Applies `[server] realtime_priority` (0: leave the normal class) to the calling thread and
/// the threads it starts later. Not permitted (no CAP_SYS_NICE nor a large enough
/// `RLIMIT_RTPRIO`, or a seccomp filter): a warning naming the key and the fix, and the server
/// runs in the normal class (the setting is latency tuning, not correctness). True if set.
pub fn apply_realtime_priority(priority: u8) -> bool {
    if priority == 0 {
        return false;
    }
    match set_realtime(priority) {
        Ok(()) => {
            tracing::info!(priority, "server threads in the real-time class (SCHED_RR)");
            true
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                priority,
                "server.realtime_priority not applied, running in the normal class: give the \
                 service CAP_SYS_NICE or LimitRTPRIO={priority} (systemd: also \
                 RestrictRealtime=no and SystemCallFilter=sched_setscheduler), or set it to 0"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's real-time priority, `None` in a time-shared class: read from
    /// `/proc/thread-self/stat` (fields 40 `rt_priority` and 41 `policy`, counted after the
    /// command name, which may hold spaces and parentheses).
    fn current_realtime_priority() -> io::Result<Option<u8>> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
        let after_comm = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // after_comm starts at field 3 (state).
        let field = |n: usize| -> io::Result<i64> {
            fields
                .get(n - 3)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short stat line"))
        };
        let policy = field(41)? as i32;
        if policy != libc::SCHED_RR && policy != libc::SCHED_FIFO {
            return Ok(None);
        }
        Ok(u8::try_from(field(40)?).ok())
    }

    /// Runs in its own thread so the test harness keeps its class. Where the test may not
    /// (an unprivileged user without RLIMIT_RTPRIO), the refusal is an error, not a panic, and
    /// the thread is left as it was.
    #[test]
    fn realtime_class_is_set_and_inherited_by_threads_started_after() {
        std::thread::spawn(|| {
            assert_eq!(current_realtime_priority().unwrap(), None);
            match set_realtime(3) {
                Ok(()) => {
                    assert_eq!(current_realtime_priority().unwrap(), Some(3));
                    let child = std::thread::spawn(current_realtime_priority)
                        .join()
                        .unwrap()
                        .unwrap();
                    assert_eq!(child, Some(3), "a thread started afterwards inherits it");
                }
                Err(e) => {
                    assert!(
                        matches!(
                            e.kind(),
                            io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported
                        ),
                        "{e}"
                    );
                    assert_eq!(current_realtime_priority().unwrap(), None);
                }
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn priority_zero_leaves_the_normal_class() {
        std::thread::spawn(|| {
            assert!(!apply_realtime_priority(0));
            assert_eq!(current_realtime_priority().unwrap(), None);
        })
        .join()
        .unwrap();
    }
}
