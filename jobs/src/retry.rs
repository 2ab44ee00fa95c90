//! Herald's one retry schedule, whatever the queue backend: bounded attempts, exponential backoff
//! with jitter, and platform waits honoured within a cap. Backends never retry on their own: a
//! share that should run again is written back as `queued` with its `run_at`, then pushed as a
//! delayed job.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Used when a platform rate-limits without saying for how long.
    pub default_rate_limit_wait: Duration,
    /// The longest a rate limit may defer a job by.
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(30 * 60),
            default_rate_limit_wait: Duration::from_secs(60),
            max_rate_limit_wait: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The wait before the attempt that follows attempt `attempt` (1-based), or `None` when the
    /// budget is spent.
    pub(crate) fn delay_after(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_attempts as usize)
            .build()
            .nth(attempt.saturating_sub(1) as usize)
    }

    /// How long to defer after a rate limit.
    pub fn rate_limit_wait(&self, said: Option<Duration>) -> Duration {
        said.unwrap_or(self.default_rate_limit_wait)
            .clamp(Duration::from_secs(1), self.max_rate_limit_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_capped_and_end_with_the_budget() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
            ..Default::default()
        };
        let d: Vec<Duration> = (1..5).map(|a| p.delay_after(a).unwrap()).collect();
        // Jitter adds up to one more delay's worth.
        assert!(d[0] >= Duration::from_secs(1) && d[0] <= Duration::from_secs(2));
        assert!(d[1] >= Duration::from_secs(2) && d[1] <= Duration::from_secs(4));
        assert!(d[3] <= Duration::from_secs(8));
        assert_eq!(p.delay_after(5), None);
    }

    #[test]
    fn rate_limit_waits_are_clamped() {
        let p = RetryPolicy::default();
        assert_eq!(p.rate_limit_wait(None), Duration::from_secs(60));
        assert_eq!(
            p.rate_limit_wait(Some(Duration::ZERO)),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.rate_limit_wait(Some(Duration::from_secs(999_999))),
            Duration::from_secs(86_400)
        );
    }
}
