//! Printing for people (one line per record or event, values as JSON) or
//! for programs (`--json`: the REST API's JSON form, one object per line,
//! so a listing or a stream pipes into `jq`, `grep` or a line reader alike).

use stategate_client::{Event, State};

pub struct Printer {
    pub json: bool,
}

impl Printer {
    /// One JSON object on one line.
    pub fn json_value(&self, v: &serde_json::Value) {
        println!("{v}");
    }
}

pub fn print_state(p: &Printer, s: &State) {
    if p.json {
        p.json_value(&s.to_json());
    } else {
        println!("{}/{}/{} v{} {}", s.domain, s.r#type, s.key, s.version, s.values_json());
    }
}

pub fn print_event(p: &Printer, e: &Event) {
    if p.json {
        p.json_value(&e.to_json());
        return;
    }
    let (domain, ty, key) = e
        .state
        .as_ref()
        .map(|s| (s.domain.as_str(), s.r#type.as_str(), s.key.as_str()))
        .unwrap_or_default();
    let values = e.values_json();
    let values = if values.is_null() { String::new() } else { format!(" {values}") };
    println!(
        "{} {:<6} {domain}/{ty}/{key} v{} {}{values}",
        rfc3339(e.time),
        e.kind().as_str_name(),
        e.version,
        e.id
    );
}

/// Unix nanoseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let millis = nanos.rem_euclid(1_000_000_000) / 1_000_000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123_000_000), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::rfc3339(1_795_752_000_000_000_000), "2026-11-27T04:00:00.000Z");
    }
}
