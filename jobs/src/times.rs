//! The range of times Herald accepts from callers. Every time inside it prints as RFC 3339 (a
//! four-digit year) and fits both engines' timestamp types, with room left for what Herald adds
//! to it (a share's lateness limit, a retry's delay).

use chrono::{DateTime, TimeZone, Utc};

/// 0001-01-01T00:00:00Z.
pub fn earliest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap()
}

/// 9999-01-01T00:00:00Z: a year short of five-digit years, so that a lateness limit or a retry
/// delay added to an accepted time still prints as RFC 3339.
pub fn latest() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 1, 1, 0, 0, 0).unwrap()
}

/// The last time Herald ever returns: 9999-12-31T23:59:59Z.
pub fn last_printable() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
}

pub fn in_range(t: DateTime<Utc>) -> bool {
    (earliest()..=latest()).contains(&t)
}

/// `t + d`, saturating at the last time Herald returns instead of overflowing.
pub fn add_capped(t: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    t.checked_add_signed(d)
        .map_or_else(last_printable, |v| v.min(last_printable()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_ends_before_five_digit_years() {
        assert!(in_range(Utc::now()));
        assert!(!in_range(latest() + chrono::Duration::seconds(1)));
        assert!(!in_range(earliest() - chrono::Duration::seconds(1)));
        assert_eq!(
            add_capped(latest(), chrono::Duration::days(1_000_000)).to_rfc3339(),
            "9999-12-31T23:59:59+00:00"
        );
    }
}
