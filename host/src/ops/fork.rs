//! The first serving process of a supervisor (`--processes`), forked
//! without `exec`.
//!
//! Why: a cold start is the time to the first answer, and the first serving
//! process gives it. Started with `exec`, it first waited for the
//! supervisor's own start and then paid a second program start (loading and
//! relocating this 40 MiB binary); forked, it starts serving from the
//! supervisor's parsed command line at once, while the supervisor sets
//! itself up alongside (BENCHMARKS.md step 24). Restarts and the other
//! serving processes are still started with `exec`: a fresh program, with
//! nothing of the supervisor's state.
//!
//! A forked child of a multi-threaded process may only call
//! async-signal-safe functions, so [`fork_first`] runs while the process
//! has one thread: before logging and the async runtime start.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions, kill_process, pidfd_open, waitpid};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

/// The supervisor's side of the forked first serving process: the
/// process, and its stdin and stdout, which the supervisor links to as to
/// any serving process's.
pub struct Forked {
    child: ForkedChild,
    stdin: OwnedFd,
    stdout: OwnedFd,
}

/// Which side of [`fork_first`] this is.
pub enum Side {
    Supervisor(Forked),
    /// The first serving process: its stdin and stdout are now its pipes
    /// to the supervisor.
    ServingProcess,
}

/// Forks the first serving process, with its stdin and stdout piped to the
/// supervisor as `tokio::process` would pipe them.
///
/// # Safety
/// The process must have one thread: the child goes on to run anything.
pub unsafe fn fork_first() -> io::Result<Side> {
    // Close-on-exec, so the serving processes started later with `exec`
    // do not hold these ends open (and keep one another's stdin open
    // after the supervisor is gone).
    let (stdin_read, stdin_write) = pipe_with(PipeFlags::CLOEXEC)?;
    let (stdout_read, stdout_write) = pipe_with(PipeFlags::CLOEXEC)?;
    // SAFETY: one thread, as the caller promises.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            rustix::stdio::dup2_stdin(&stdin_read)?;
            rustix::stdio::dup2_stdout(&stdout_write)?;
            // The supervisor's ends close here, so the serving process sees
            // its stdin end when the supervisor is gone.
            Ok(Side::ServingProcess)
        }
        pid => {
            let pid = Pid::from_raw(pid).expect("fork returns a positive pid");
            let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
                Ok(pidfd) => pidfd,
                Err(err) => {
                    let _ = kill_process(pid, Signal::KILL);
                    let _ = waitpid(Some(pid), WaitOptions::empty());
                    return Err(err.into());
                }
            };
            Ok(Side::Supervisor(Forked {
                child: ForkedChild {
                    pid,
                    pidfd,
                    exited: None,
                },
                stdin: stdin_write,
                stdout: stdout_read,
            }))
        }
    }
}

impl Forked {
    /// Hands the pipes over to the async runtime (it must be running).
    pub fn into_parts(self) -> io::Result<(ForkedChild, pipe::Sender, pipe::Receiver)> {
        let stdin = pipe::Sender::from_owned_fd(self.stdin)?;
        let stdout = pipe::Receiver::from_owned_fd(self.stdout)?;
        Ok((self.child, stdin, stdout))
    }
}

/// The forked serving process, as `tokio::process::Child` is a spawned
/// one: awaited through its pidfd, and killed when dropped before it was
/// seen to exit.
pub struct ForkedChild {
    pid: Pid,
    pidfd: OwnedFd,
    exited: Option<ExitStatus>,
}

impl ForkedChild {
    /// Its pid, until it has been waited for (then the pid may be another
    /// process's).
    pub fn id(&self) -> Option<Pid> {
        self.exited.is_none().then_some(self.pid)
    }

    /// Waits for it to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        // Registered for this wait only: the supervisor waits again only
        // after a SIGHUP passed on, or to stop it.
        // SAFETY: the pidfd is this child's own and outlives the borrow.
        let exit =
            unsafe { AsyncFd::register_with_interest(self.pidfd.as_fd(), Interest::READABLE) }?;
        loop {
            let mut ready = exit.readable().await?;
            if let Some((_, status)) = waitpid(Some(self.pid), WaitOptions::NOHANG)? {
                let status = ExitStatus::from_raw(status.as_raw());
                drop(ready);
                drop(exit);
                self.exited = Some(status);
                return Ok(status);
            }
            ready.clear_ready();
        }
    }

    /// Sends SIGKILL unless it has been waited for.
    pub fn start_kill(&mut self) {
        if let Some(pid) = self.id() {
            let _ = kill_process(pid, Signal::KILL);
        }
    }

    /// Kills it and waits for it to exit.
    pub async fn kill(&mut self) -> io::Result<()> {
        self.start_kill();
        self.wait().await.map(drop)
    }
}

impl Drop for ForkedChild {
    /// As `kill_on_drop`: a supervisor that fails after the fork leaves no
    /// serving process behind. SIGKILL ends it at once, so waiting for it
    /// here is brief, and its stderr (the supervisor's) is closed before
    /// the supervisor's own `error:` line ends the run.
    fn drop(&mut self) {
        if let Some(pid) = self.id() {
            let _ = kill_process(pid, Signal::KILL);
            let _ = waitpid(Some(pid), WaitOptions::empty());
        }
    }
}
