//! A guard over a child process that kills and reaps it when dropped, so that no Envoy, scaler
//! or other helper outlives the sandbox or the test that started it, even on an early return or
//! a failed assertion.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

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
    /// Spawns `command`; `name` identifies the child in errors and logs.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Result<Self, ProcessError> {
        let name = name.into();
        let child = command.spawn().map_err(|source| ProcessError::Spawn {
            name: name.clone(),
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        Ok(Self {
            name,
            child,
            exited: None,
        })
    }

    /// Wraps a child that was spawned elsewhere.
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
        let guard = ChildGuard::spawn("sleep", &mut command).unwrap();
        let pid = guard.id();
        drop(guard);
        // A reaped process no longer has a /proc entry (a zombie would).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_missing_program_is_named_in_the_error() {
        let mut command = Command::new("/nonexistent/surge-test-binary");
        let err = ChildGuard::spawn("helper", &mut command).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("helper"), "{message}");
        assert!(
            message.contains("/nonexistent/surge-test-binary"),
            "{message}"
        );
    }

    #[test]
    fn exit_status_of_a_finished_child_is_reported() {
        let mut command = Command::new("true");
        let mut guard = ChildGuard::spawn("true", &mut command).unwrap();
        let status = guard.wait_timeout(Duration::from_secs(5)).unwrap();
        assert!(status.is_some_and(|s| s.success()));
        assert!(!guard.is_running());
    }
}
