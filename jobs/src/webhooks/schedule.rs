//! When a failed delivery is tried again: Svix's schedule (immediately, then 5 s, 5 min, 30 min,
//! 2 h, 5 h, 10 h, and every 10 h up to about three days), each delay with ±20 % jitter, and a
//! receiver's `Retry-After` honoured when it asks for longer (up to a day).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// The delays after attempts 1, 2, ...: twelve attempts over about 68 hours.
pub fn default_schedule() -> Vec<Duration> {
    const M: u64 = 60;
    const H: u64 = 3600;
    [
        5,
        5 * M,
        30 * M,
        2 * H,
        5 * H,
        10 * H,
        10 * H,
        10 * H,
        10 * H,
        10 * H,
        10 * H,
    ]
    .into_iter()
    .map(Duration::from_secs)
    .collect()
}

/// The longest `Retry-After` obeyed; a receiver asking for more is tried again after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// When attempt `attempts + 1` is due after attempt `attempts` failed at `now`, or `None` when
/// the schedule is spent.
pub fn next_attempt(
    schedule: &[Duration],
    attempts: i32,
    retry_after: Option<Duration>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let base = *schedule.get(usize::try_from(attempts).ok()?.checked_sub(1)?)?;
    let jitter = rand::rng().random_range(0.8..1.2);
    let mut delay = base.mul_f64(jitter);
    if let Some(asked) = retry_after {
        delay = delay.max(asked.min(MAX_RETRY_AFTER));
    }
    Some(now + chrono::Duration::from_std(delay).ok()?)
}

/// A `Retry-After` header's wait: seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&Utc) - now).to_std().ok()
}

/// Parses `5s,5m,30m,2h` (`HERALD_WEBHOOK_RETRY_SCHEDULE`); also `ms`.
pub fn parse_schedule(spec: &str) -> Result<Vec<Duration>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (n, unit) = s.split_at(split);
            let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a span"))?;
            Ok(match unit {
                "ms" => Duration::from_millis(n),
                "s" | "" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                "d" => Duration::from_secs(n * 86_400),
                _ => return Err(format!("`{s}`: the unit is one of ms, s, m, h, d")),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_spends_about_three_days() {
        let total: Duration = default_schedule().iter().sum();
        let hours = total.as_secs_f64() / 3600.0;
        assert!((60.0..=72.0).contains(&hours), "{hours} h");
        let now = Utc::now();
        assert!(next_attempt(&default_schedule(), 12, None, now).is_none());
        let first = next_attempt(&default_schedule(), 1, None, now).unwrap() - now;
        assert!((4_000..=6_000).contains(&first.num_milliseconds()));
    }

    #[test]
    fn retry_after_is_honoured_when_longer() {
        let now = Utc::now();
        let at = next_attempt(&default_schedule(), 1, Some(Duration::from_secs(120)), now);
        assert_eq!((at.unwrap() - now).num_seconds(), 120);
        let http_date = (now + chrono::Duration::hours(1))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let wait = parse_retry_after(&http_date, now).unwrap();
        assert!((3599..=3600).contains(&wait.as_secs()), "{wait:?}");
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
    }

    #[test]
    fn schedules_parse_from_spans() {
        assert_eq!(
            parse_schedule("200ms, 1s,2m").unwrap(),
            vec![
                Duration::from_millis(200),
                Duration::from_secs(1),
                Duration::from_secs(120)
            ]
        );
        assert!(parse_schedule("5x").is_err());
    }
}
