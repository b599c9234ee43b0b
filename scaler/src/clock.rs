//! The scaler's monotonic clock, in milliseconds since the process started. The pure parts
//! take its readings as arguments; only the glue reads it.

use std::time::Instant;

use crate::decision::Millis;

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
    /// Milliseconds since the origin.
    pub fn now(&self) -> Millis {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
