//! Times on the command line (`--since`, `--until`, `--from-time`), as a
//! person writes them: a duration means that long before now (`1h`, `30m`,
//! `2d`, `1h30m`), an RFC 3339 time a moment (`2026-05-01T12:00:00Z`, any
//! offset), and a bare integer Unix nanoseconds, the API's own unit (so
//! scripts written for it keep working; `1` is the beginning of history).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a time argument may be, for the error of one that is none of them.
const FORMS: &str = "expected a duration before now (1h, 30m, 2d), an RFC 3339 time (2026-05-01T12:00:00Z) or Unix nanoseconds";

/// A clap value parser: the time `text` names, in Unix nanoseconds.
pub fn unix_nanos(text: &str) -> Result<i64, String> {
    unix_nanos_at(text, SystemTime::now())
}

/// As [`unix_nanos`], durations counted back from `now`.
pub fn unix_nanos_at(text: &str, now: SystemTime) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return if n < 0 { Err(format!("{FORMS}; Unix nanoseconds cannot be negative")) } else { Ok(n) };
    }
    if let Ok(t) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos())
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("{text} is outside the times the API holds (1970 to 2262)"));
    }
    let ago = humantime::parse_duration(text).map_err(|_| FORMS.to_owned())?;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    // A duration reaching before 1970 means "everything": the beginning.
    let at = since_epoch.saturating_sub(ago).as_nanos().max(1);
    i64::try_from(at).map_err(|_| format!("{text} is outside the times the API holds (1970 to 2262)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_SECS: u64 = 1_800_000_000;

    fn at(text: &str) -> Result<i64, String> {
        unix_nanos_at(text, UNIX_EPOCH + Duration::from_secs(NOW_SECS))
    }

    #[test]
    fn durations_count_back_from_now() {
        let now = NOW_SECS as i64 * 1_000_000_000;
        assert_eq!(at("1h").unwrap(), now - 3_600_000_000_000);
        assert_eq!(at("30m").unwrap(), now - 1_800_000_000_000);
        assert_eq!(at("1h30m").unwrap(), now - 5_400_000_000_000);
        assert_eq!(at("2d").unwrap(), now - 2 * 86_400_000_000_000);
        assert_eq!(at("100years").unwrap(), 1, "before 1970 is the beginning");
    }

    #[test]
    fn rfc3339_with_any_offset_and_unix_nanoseconds() {
        assert_eq!(at("2026-05-01T12:00:00Z").unwrap(), 1_777_636_800_000_000_000);
        assert_eq!(at("2026-05-01T14:00:00.5+02:00").unwrap(), 1_777_636_800_500_000_000);
        assert_eq!(at("1").unwrap(), 1);
        assert_eq!(at("1777636800000000000").unwrap(), 1_777_636_800_000_000_000);
    }

    #[test]
    fn anything_else_names_the_accepted_forms() {
        for bad in ["yesterday", "1x", "", "2026-13-01T00:00:00Z", "-5"] {
            let e = at(bad).unwrap_err();
            assert!(e.contains("RFC 3339") && e.contains("1h"), "{bad}: {e}");
        }
        assert!(at("1900-01-01T00:00:00Z").unwrap_err().contains("1970 to 2262"));
    }
}
