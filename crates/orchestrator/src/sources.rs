//! Where time, ids and randomness come from: the system in production,
//! manual sources in tests (so that no test waits for a wall-clock window).

use std::sync::Arc;

use proxy_runner_domain::ports::{Clock, IdSource, Jitter, SystemClock, UuidV7};

/// Jitter from the thread-local random generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn sample(&self) -> f64 {
        rand::random::<f64>()
    }
}

#[derive(Clone)]
pub struct Sources {
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    pub jitter: Arc<dyn Jitter>,
}

impl Sources {
    pub fn system() -> Self {
        Sources {
            clock: Arc::new(SystemClock),
            ids: Arc::new(UuidV7),
            jitter: Arc::new(RandomJitter),
        }
    }

    /// The system's ids and jitter with another clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Sources {
            clock,
            ..Sources::system()
        }
    }
}

impl Default for Sources {
    fn default() -> Self {
        Sources::system()
    }
}
