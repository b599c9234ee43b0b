//! The scaler's monotonic clock in milliseconds. The pure parts take its readings as
//! arguments; only the glue reads it.
//!
//! Readings start at [`ORIGIN_MS`] rather than 0: the first report after a start covers an
//! interval that began before the process did, and windows subtract such intervals from `now`.

use std::time::Instant;

use crate::decision::Millis;

/// The reading at process start (one hour), so `now - interval` never underflows.
pub const ORIGIN_MS: Millis = 3_600_000;

/// A monotonic millisecond clock; cheap to clone (all clones share the origin).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock {
    /// Milliseconds since the origin, plus [`ORIGIN_MS`].
    pub fn now(&self) -> Millis {
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX / 2)
            .saturating_add(ORIGIN_MS)
    }
}
