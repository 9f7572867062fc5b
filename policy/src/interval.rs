//! `sync_interval` values: `5s`, `500ms`, `2m`, `1h`, or a whole number of seconds.

use std::time::Duration;

use crate::error::{ErrorKind, Problem};

/// Shortest namespace-sync interval accepted, in milliseconds: each sync merges a client journal into
/// the MDS, so a shorter interval would spend the MDS on merges instead of requests.
pub const SYNC_INTERVAL_MIN_MS: u64 = 100;

/// Longest namespace-sync interval accepted, in seconds (one day); longer is better said by not
/// setting one and merging at job end.
pub const SYNC_INTERVAL_MAX_SECONDS: u64 = 24 * 60 * 60;

/// Units accepted after the number, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("min", 60_000), ("h", 3_600_000)];

/// Parses a duration written as a whole number followed by `ms`, `s`, `m`/`min` or `h` (any case,
/// optional space), or a bare whole number of seconds.
pub(crate) fn parse_interval(text: &str) -> Result<Duration, Problem> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let unit = unit.trim_start().to_ascii_lowercase();
    let malformed = || {
        Problem::new(
            ErrorKind::OutOfRange,
            format!("`{text}` is not a duration; write a whole number with a unit, e.g. `5s`, `500ms`, `2m`, `1h`"),
        )
    };
    if digits.is_empty() {
        return Err(malformed());
    }
    if unit.starts_with('.') {
        return Err(Problem::new(
            ErrorKind::OutOfRange,
            format!("`{text}` has a fraction; write a whole number in a smaller unit, e.g. `1500ms`"),
        ));
    }
    let unit_ms = if unit.is_empty() {
        1_000
    } else {
        UNITS.iter().find(|(name, _)| *name == unit).map(|(_, unit_ms)| *unit_ms).ok_or_else(malformed)?
    };
    let too_long = || {
        Problem::new(
            ErrorKind::OutOfRange,
            format!("`{text}` is longer than the longest interval, {SYNC_INTERVAL_MAX_SECONDS}s (one day)"),
        )
    };
    let count: u64 = digits.parse().map_err(|_| too_long())?;
    let total_ms = count.checked_mul(unit_ms).ok_or_else(too_long)?;
    check_bounds(total_ms, text)
}

/// The interval of a bare YAML integer, in seconds.
pub(crate) fn interval_from_seconds(seconds: u64) -> Result<Duration, Problem> {
    let text = format!("{seconds}");
    let total_ms = seconds.checked_mul(1_000).ok_or_else(|| {
        Problem::new(ErrorKind::OutOfRange, format!("{text} seconds is longer than {SYNC_INTERVAL_MAX_SECONDS}s"))
    })?;
    check_bounds(total_ms, &format!("{text} (seconds)"))
}

fn check_bounds(total_ms: u64, text: &str) -> Result<Duration, Problem> {
    if total_ms < SYNC_INTERVAL_MIN_MS {
        return Err(Problem::new(
            ErrorKind::OutOfRange,
            format!(
                "`{text}` is shorter than the shortest interval, {SYNC_INTERVAL_MIN_MS}ms; remove the key to merge only on request, recouple or unmount"
            ),
        ));
    }
    if total_ms > SYNC_INTERVAL_MAX_SECONDS * 1_000 {
        return Err(Problem::new(
            ErrorKind::OutOfRange,
            format!("`{text}` is longer than the longest interval, {SYNC_INTERVAL_MAX_SECONDS}s (one day)"),
        ));
    }
    Ok(Duration::from_millis(total_ms))
}

/// The canonical text of an interval: whole seconds as `5s`, anything else in milliseconds.
pub(crate) fn format_interval(interval: Duration) -> String {
    if interval.subsec_millis() == 0 {
        format!("{}s", interval.as_secs())
    } else {
        format!("{}ms", interval.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        // Proves every documented spelling of an interval and its value.
        let cases = [
            ("5s", 5_000),
            ("500ms", 500),
            ("500 ms", 500),
            ("2m", 120_000),
            ("2min", 120_000),
            ("1h", 3_600_000),
            ("10", 10_000),
            ("5S", 5_000),
            (" 24h ", 86_400_000),
        ];
        for (text, expected_ms) in cases {
            assert_eq!(parse_interval(text).unwrap(), Duration::from_millis(expected_ms), "{text}");
        }
        assert_eq!(interval_from_seconds(5).unwrap(), Duration::from_secs(5));
    }

    #[test]
    fn rejected_forms_say_why() {
        // Proves malformed and out-of-bound intervals are refused with a reason.
        let cases = [
            ("", "not a duration"),
            ("s", "not a duration"),
            ("5 parsecs", "not a duration"),
            ("1.5s", "has a fraction"),
            ("-5s", "not a duration"),
            ("0s", "shorter than the shortest interval"),
            ("99ms", "shorter than the shortest interval"),
            ("25h", "longer than the longest interval"),
            ("99999999999999999999s", "longer than the longest interval"),
            ("18446744073709551615h", "longer than the longest interval"),
        ];
        for (text, expected) in cases {
            let problem = parse_interval(text).unwrap_err();
            assert!(problem.message.contains(expected), "{text}: {}", problem.message);
        }
        assert!(interval_from_seconds(0).is_err());
        assert!(interval_from_seconds(u64::MAX).is_err());
    }

    #[test]
    fn canonical_text_parses_back() {
        // Proves format_interval output is accepted and exact.
        for ms in [100, 500, 1_000, 1_500, 60_000, 86_400_000] {
            let interval = Duration::from_millis(ms);
            assert_eq!(parse_interval(&format_interval(interval)).unwrap(), interval);
        }
        assert_eq!(format_interval(Duration::from_secs(5)), "5s");
        assert_eq!(format_interval(Duration::from_millis(1_500)), "1500ms");
    }
}
