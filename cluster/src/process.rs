//! Child processes that cannot outlive the sandbox (or the test) that started them.
//!
//! [`ChildGuard`] kills and reaps its child when dropped: an early return, a failed assertion,
//! Ctrl-C. A `kill -9` of the sandbox runs no destructor, so every child is also started with
//! `PR_SET_PDEATHSIG` = SIGKILL, which the kernel delivers when the child's parent goes away.
//!
//! "Parent" there is the *thread* that forked the child, not the process: a child forked by a
//! pooled thread (tokio's blocking pool retires idle threads after 10 s) would be killed when that
//! thread retires. So every child is forked by one spawner thread that lives as long as the
//! process ([`spawn`]): the signal then fires exactly when the process dies, whatever kills it.
//! (Envoy sets `PR_SET_PDEATHSIG` = SIGTERM itself at start-up, replacing ours; being forked by
//! the spawner keeps that tied to the process too.)
//!
//! The alternatives were worse: a wrapper process or a pipe each child watches needs a helper
//! in every child; a process group is not signalled when only the sandbox is killed; spawning
//! from the thread that happens to own a child (as pods once did) ties the child to that thread.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A command to fork on the spawner thread, and where to send the child back.
type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The spawner thread's inbox. The sender lives in a static and is never dropped, so the thread
/// (which loops until every sender is gone) lives until the process exits.
fn spawner() -> io::Result<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (requests, inbox) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("child-spawner".into())
                .spawn(move || {
                    for (mut command, reply) in inbox {
                        // The caller may have given up waiting; the child is then dropped (not
                        // killed: `Child` does not kill on drop) but still dies with the process.
                        let _ = reply.send(spawn_here(&mut command));
                    }
                })
                .map(|_| requests)
                .map_err(|e| format!("cannot start the child-spawner thread: {e}"))
        })
        .as_ref()
        .map_err(|message| io::Error::other(message.clone()))
}

/// Forks `command` on this thread, the child asking for SIGKILL when this thread exits.
fn spawn_here(command: &mut Command) -> io::Result<Child> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and calls only prctl and
        // getppid, which are async-signal-safe; it does not allocate (the error is a raw OS
        // error).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) == -1
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then no signal will come.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    command.spawn()
}

/// Starts `command` as a child that dies with this process (see the module docs); like
/// [`Command::spawn`] otherwise.
pub fn spawn(command: Command) -> io::Result<Child> {
    let (reply, child) = mpsc::channel();
    spawner()?
        .send((command, reply))
        .map_err(|_| io::Error::other("the child-spawner thread has stopped"))?;
    child
        .recv()
        .map_err(|_| io::Error::other("the child-spawner thread has stopped"))?
}

/// Runs `command` to completion as a child that dies with this process; like
/// [`Command::status`] otherwise.
pub fn status(command: Command) -> io::Result<ExitStatus> {
    spawn(command)?.wait()
}

/// Errors from starting or watching a child process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started (missing file, not executable, ...).
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        /// What the child is, for the message (e.g. `envoy`).
        name: String,
        /// The program path.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// Waiting for or signalling the child failed.
    #[error("cannot watch {name}: {source}")]
    Wait {
        /// What the child is.
        name: String,
        /// The OS error.
        source: io::Error,
    },
}

/// A running child process, killed (SIGKILL) and reaped when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `command` with [`spawn`] (so it dies with this process too); `name` identifies
    /// the child in errors and logs.
    pub fn spawn(name: impl Into<String>, command: Command) -> Result<Self, ProcessError> {
        let name = name.into();
        let program = command.get_program().to_string_lossy().into_owned();
        let child = spawn(command).map_err(|source| ProcessError::Spawn {
            name: name.clone(),
            program,
            source,
        })?;
        Ok(Self {
            name,
            child,
            exited: None,
        })
    }

    /// Wraps a child that was spawned elsewhere (it is killed on drop, but does not die with this
    /// process unless it was started by [`spawn`]).
    pub fn from_child(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
            exited: None,
        }
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited, without blocking.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().map_err(|source| ProcessError::Wait {
                name: self.name.clone(),
                source,
            })?;
        }
        Ok(self.exited)
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits up to `timeout` for the child to exit on its own; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, ProcessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the child to stop (SIGTERM), as a kubelet does before the grace period ends; does
    /// not wait. Nothing happens if it has already exited.
    pub fn terminate(&mut self) {
        if self.is_running() {
            // SAFETY: kill(2) on the pid of a child this guard has not reaped (it is running),
            // so the pid cannot have been reused.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// Kills the child (if still running) and reaps it; returns its exit status.
    pub fn kill(&mut self) -> Result<ExitStatus, ProcessError> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        // An error here means the child exited between the check and the signal; `wait` below
        // reaps it either way.
        let _ = self.child.kill();
        let status = self.child.wait().map_err(|source| ProcessError::Wait {
            name: self.name.clone(),
            source,
        })?;
        self.exited = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Nothing useful can be done with an error while dropping; the child is gone or unkillable.
        let _ = self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_guard_kills_and_reaps_the_child() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let guard = ChildGuard::spawn("sleep", command).unwrap();
        let pid = guard.id();
        drop(guard);
        // A reaped process no longer has a /proc entry (a zombie would).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_missing_program_is_named_in_the_error() {
        let command = Command::new("/nonexistent/surge-test-binary");
        let err = ChildGuard::spawn("helper", command).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("helper"), "{message}");
        assert!(
            message.contains("/nonexistent/surge-test-binary"),
            "{message}"
        );
    }

    /// True while `pid` exists and is not a zombie (a killed child of a parent that is gone
    /// waits as a zombie until its new parent reaps it).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, after_name) = stat.rsplit_once(')')?;
                after_name
                    .split_whitespace()
                    .next()
                    .map(|state| state != "Z")
            })
            .unwrap_or(false)
    }

    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let guard = std::thread::spawn(|| {
            let mut command = Command::new("sleep");
            command.arg("30");
            ChildGuard::spawn("sleep", command).unwrap()
        })
        .join()
        .unwrap();
        // PR_SET_PDEATHSIG would have fired at once had the thread above forked the child.
        std::thread::sleep(Duration::from_millis(300));
        assert!(alive(guard.id()), "the child died with the thread");
    }

    const PARENT_ENV: &str = "SURGE_TEST_PDEATHSIG_PARENT";

    /// Run by the test below as a separate process: starts a sleeper, prints its pid, waits to
    /// be killed (30 s at most). Does nothing when run on its own.
    #[test]
    #[ignore = "a helper process of a_child_dies_when_the_process_that_started_it_is_killed"]
    fn helper_parent_of_a_sleeper() {
        if std::env::var_os(PARENT_ENV).is_none() {
            return;
        }
        let mut command = Command::new("sleep");
        command.arg("60");
        let child = ChildGuard::from_child("sleeper", spawn(command).unwrap());
        println!("sleeper-pid={}", child.id());
        std::thread::sleep(Duration::from_secs(30));
    }

    #[test]
    fn a_child_dies_when_the_process_that_started_it_is_killed() {
        use std::io::BufRead;
        let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "process::tests::helper_parent_of_a_sleeper",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(PARENT_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = parent.stdout.take().unwrap();
        let mut parent = ChildGuard::from_child("test parent", parent);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints the test's name on the same line.
                if let Some((_, pid)) = line.rsplit_once("sleeper-pid=") {
                    let _ = tx.send(pid.trim().parse::<u32>().unwrap());
                    break;
                }
            }
        });
        let sleeper = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the helper printed no sleeper pid");
        assert!(alive(sleeper));
        parent.kill().unwrap(); // SIGKILL: no destructor runs in the parent
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(sleeper) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let survived = alive(sleeper);
        if survived {
            let _ = Command::new("kill")
                .args(["-KILL", &sleeper.to_string()])
                .status();
        }
        assert!(
            !survived,
            "the sleeper {sleeper} outlived its killed parent"
        );
    }

    #[test]
    fn exit_status_of_a_finished_child_is_reported() {
        let command = Command::new("true");
        let mut guard = ChildGuard::spawn("true", command).unwrap();
        let status = guard.wait_timeout(Duration::from_secs(5)).unwrap();
        assert!(status.is_some_and(|s| s.success()));
        assert!(!guard.is_running());
    }
}
