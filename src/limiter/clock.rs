//! The limiter's clock: tokio's monotonic time (so tests can pause and advance it) anchored to
//! the wall clock once, because the upstream's per-minute window turns on wall-clock minutes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Monotonic time since an origin, with the wall-clock time of that origin.
#[derive(Clone, Copy, Debug)]
pub struct LimiterClock {
    origin: Instant,
    /// Wall-clock time at `origin`, since the Unix epoch.
    origin_wall: Duration,
}

impl LimiterClock {
    pub fn new() -> Self {
        let origin_wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self::starting_at(origin_wall)
    }

    /// A clock whose origin is this wall-clock time (tests use a known minute).
    pub fn starting_at(origin_wall: Duration) -> Self {
        Self {
            origin: Instant::now(),
            origin_wall,
        }
    }

    /// Time since the origin.
    pub fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }

    /// The tokio instant of a moment given as time since the origin.
    pub fn instant_at(&self, at: Duration) -> Instant {
        self.origin + at
    }

    /// The wall-clock time now, since the Unix epoch.
    pub fn wall_now(&self) -> Duration {
        self.origin_wall + self.elapsed()
    }

    /// The index of the wall-clock minute at `at` (time since the origin).
    pub fn minute_of(&self, at: Duration) -> u64 {
        (self.origin_wall + at).as_secs() / 60
    }

    /// How long from `at` until the wall-clock minute turns.
    pub fn until_next_minute(&self, at: Duration) -> Duration {
        let wall = self.origin_wall + at;
        let next = Duration::from_secs((wall.as_secs() / 60 + 1) * 60);
        next.saturating_sub(wall)
    }

    /// Time since the origin of a wall-clock moment (for HTTP dates in `Retry-After`).
    pub fn since_origin(&self, wall: SystemTime) -> Duration {
        wall.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(self.origin_wall)
    }
}

impl Default for LimiterClock {
    fn default() -> Self {
        Self::new()
    }
}

impl governor::clock::Clock for LimiterClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.elapsed()
    }
}
