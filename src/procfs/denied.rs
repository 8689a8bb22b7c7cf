//! What a task whose fd table was denied to us is: a task of the node in the
//! middle of `exit`, which can never read the key, or a process whose fds
//! cannot be read, which must fail the delivery closed. Pure decisions: the
//! scan ([`super::Scan`]) reads `/proc` and sleeps, these say what it means.
//!
//! Why a task of the node is denied at all (issue 20 item 5, split trust:
//! root without `CAP_SYS_PTRACE` reads the node's entries with the node's
//! fsuid): the owner of `/proc/<pid>/task/<tid>/fd` is recomputed from the
//! task at every lookup (`task_dump_owner`), and a task without an mm is
//! given to root. A thread in `do_exit` drops its mm (`exit_mm`) before it
//! drops its fd table (`exit_files`); in that window the directory is root's
//! and mode 0500, so the node's ids get EACCES, and root's get it too (the
//! `ptrace_may_access` check of each fd's link: root is not the task's uid
//! and lacks `CAP_SYS_PTRACE`). The task is neither a zombie nor dead yet
//! (the state changes in `exit_notify`, later), so the scan's dead-task rule
//! did not cover it. A node whose runtime starts and ends threads all the
//! time is in that window often enough to fail about one delivery in 70.
//!
//! The rule: a denied task is skipped when, read after the denial, it is
//! gone, a zombie or dead (its fd table is released), or **exiting**:
//! `PF_EXITING` in the flags of its `stat` (field 9, shown whatever our
//! access). The kernel sets that flag first thing in `do_exit`
//! (`exit_signals`), nothing clears it, and a task in `do_exit` never returns
//! to user space: whatever its table holds is closed by `exit_files` unread.
//! Read after the denial, the flag speaks for the task that was denied: a
//! tid is reused only once the task is gone, and then the denied one holds
//! nothing either. Anything else gets a few bounded re-reads (a denial that
//! goes away is decided by what the read then shows, like any other task),
//! and is uninspectable after them: a non-dumpable process, one of another
//! uid with the node's among its ids, any task whose credentials or mm keep
//! it closed to us, still fails the scan closed.
//!
//! Rejected: "a denied task whose thread-group leader is inspectable is
//! transient". Credentials are per thread: a process started from a set-id
//! binary can leave one thread with the node's ids alone (inspectable) and
//! another with the binary's (closed to the node and to root), holding the
//! FIFO in an fd table of its own (`unshare(CLONE_FILES)`). The leader says
//! nothing about that thread; its own `PF_EXITING` does.

use std::time::Duration;

/// `PF_EXITING` (include/linux/sched.h): the task is in `do_exit`.
const PF_EXITING: u64 = 0x4;

/// How many times a denied task that is alive and not exiting is read again
/// before it counts as uninspectable.
pub(crate) const REREADS: u32 = 3;

/// What `/proc/<pid>/task/<tid>/stat` says of a task, read after its fd
/// table was denied to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// No such task (its stat is gone, or unreadable).
    Gone,
    /// Zombie (`Z`) or dead (`X`): its fd table is released.
    Dead,
    /// Alive but in `do_exit` (`PF_EXITING`).
    Exiting,
    /// Alive, and not exiting.
    Live,
}

/// Why a denied task holds nothing that matters (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Harmless {
    /// It is gone, a zombie or dead.
    Exited,
    /// It is in `do_exit`.
    Exiting,
}

impl Harmless {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Harmless::Exited => "exited",
            Harmless::Exiting => "exiting",
        }
    }
}

/// What to do with a task whose fd table was denied to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It can never read what its table holds: skip it.
    Skip(Harmless),
    /// Read its fd table again after this pause.
    ReadAgain(Duration),
    /// An fd table we may not read, of a task that can still run: the
    /// scan fails closed.
    Uninspectable,
}

/// The verdict on a denied task in `state`, after `rereads` re-reads of its
/// fd table were denied as well.
pub(crate) fn classify(state: TaskState, rereads: u32) -> Verdict {
    match state {
        TaskState::Gone | TaskState::Dead => Verdict::Skip(Harmless::Exited),
        TaskState::Exiting => Verdict::Skip(Harmless::Exiting),
        // 0.5, 1, 2 ms: an exec's change of credentials or mm is over long
        // before; an uninspectable process costs the scan 3.5 ms.
        TaskState::Live if rereads < REREADS => {
            Verdict::ReadAgain(Duration::from_micros(500 << rereads))
        }
        TaskState::Live => Verdict::Uninspectable,
    }
}

/// The fields of a `stat` text after the command name: state, ppid, pgrp,
/// session, tty_nr, tpgid, flags, … The command name may hold spaces and
/// parentheses, so they are counted from the last `)` (`None` without one).
pub(crate) fn fields_after_comm(stat: &[u8]) -> Option<std::str::SplitAsciiWhitespace<'_>> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    Some(
        std::str::from_utf8(&stat[close + 1..])
            .unwrap_or("")
            .split_ascii_whitespace(),
    )
}

/// The state in a task's `stat` text (`None`: it is gone).
pub(crate) fn state_from_stat(stat: Option<&[u8]>) -> TaskState {
    let Some(s) = stat else {
        return TaskState::Gone;
    };
    let Some(mut fields) = fields_after_comm(s) else {
        // Not a stat we understand: nothing proves it harmless.
        return TaskState::Live;
    };
    match fields.next() {
        Some("Z" | "X" | "x") => return TaskState::Dead,
        Some(_) => {}
        None => return TaskState::Live,
    }
    match fields.nth(5).and_then(|f| f.parse::<u64>().ok()) {
        Some(flags) if flags & PF_EXITING != 0 => TaskState::Exiting,
        _ => TaskState::Live,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(comm: &str, state: &str, flags: u64) -> Vec<u8> {
        format!(
            "4242 ({comm}) {state} 1 4242 4242 0 -1 {flags} 120 0 0 0 3 1 0 0 20 0 101 0 9461 0"
        )
        .into_bytes()
    }

    #[test]
    fn reads_the_state_and_the_exiting_flag_after_the_last_parenthesis() {
        // 0x400040: PF_FORKNOEXEC | PF_RANDOMIZE, a live thread.
        assert_eq!(
            state_from_stat(Some(&stat("noded", "S", 0x400040))),
            TaskState::Live
        );
        assert_eq!(
            state_from_stat(Some(&stat("noded", "R", 0x400044))),
            TaskState::Exiting
        );
        for z in ["Z", "X"] {
            assert_eq!(
                state_from_stat(Some(&stat("noded", z, 0x40044))),
                TaskState::Dead
            );
        }
        // A name made to look like other fields changes nothing.
        assert_eq!(
            state_from_stat(Some(&stat("a) Z 1 1 1 0 -1 4 (b", "S", 0x40))),
            TaskState::Live
        );
        assert_eq!(
            state_from_stat(Some(&stat("x) R 1 1 1 0 -1 0 (y", "D", 0x4))),
            TaskState::Exiting
        );
        assert_eq!(state_from_stat(None), TaskState::Gone);
    }

    /// What cannot be read as a stat proves nothing: the task stays live.
    #[test]
    fn an_unreadable_stat_is_a_live_task() {
        for bad in [
            &b""[..],
            b"4242 (noded",
            b"4242 (noded) S 1 2",
            b"4242 (noded) S 1 2 3 4 5 zz",
        ] {
            assert_eq!(state_from_stat(Some(bad)), TaskState::Live, "{bad:?}");
        }
    }

    #[test]
    fn an_exiting_or_exited_task_is_skipped_at_once() {
        for rereads in [0, REREADS, REREADS + 5] {
            assert_eq!(
                classify(TaskState::Exiting, rereads),
                Verdict::Skip(Harmless::Exiting)
            );
            for s in [TaskState::Gone, TaskState::Dead] {
                assert_eq!(classify(s, rereads), Verdict::Skip(Harmless::Exited));
            }
        }
    }

    /// A live task is read again a bounded number of times, then fails the
    /// scan closed: a process whose fds we may not read stays uninspectable.
    #[test]
    fn a_live_task_is_read_again_then_uninspectable() {
        let mut pauses = Vec::new();
        let mut rereads = 0;
        loop {
            match classify(TaskState::Live, rereads) {
                Verdict::ReadAgain(d) => pauses.push(d),
                Verdict::Uninspectable => break,
                v => panic!("{v:?}"),
            }
            rereads += 1;
        }
        assert_eq!(rereads, REREADS);
        assert_eq!(
            pauses,
            [500, 1000, 2000].map(Duration::from_micros).to_vec()
        );
    }
}
