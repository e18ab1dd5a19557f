//! Printing for people (one line per record or event, values as JSON) or
//! for programs (`--json`: the REST API's JSON form, one object per line,
//! so a listing or a stream pipes into `jq`, `grep` or a line reader alike).
//!
//! Names, ids and the gateway's messages reach a terminal through
//! [`printable`] (`model::printable`): whoever may write a record chooses
//! its key, and a key holding an escape sequence would otherwise drive the
//! terminal of whoever lists it (clear it, retitle it, print fake lines).
//! The gateway escapes its own messages already; a gateway of another
//! version might not, so the CLI escapes them again (a no-op then). Values are
//! JSON through [`printable_json`]: serde escapes the C0 controls, and the
//! rest that would steer a terminal are written as JSON escapes too.

pub use crate::model::printable::{printable, printable_message};
use crate::model::printable::{owned, printable_json_text};
use stategate_client::{CatalogEntry, Event, State};

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
        let (domain, ty, key) = (printable(&s.domain), printable(&s.r#type), printable(&s.key));
        println!("{domain}/{ty}/{key} v{} {}", s.version, printable_json(&s.values_json()));
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
        .map(|s| (printable(&s.domain), printable(&s.r#type), printable(&s.key)))
        .unwrap_or_default();
    let values = e.values_json();
    let values = if values.is_null() { String::new() } else { format!(" {}", printable_json(&values)) };
    println!(
        "{} {:<6} {domain}/{ty}/{key} v{} {}{values}",
        rfc3339(e.time),
        e.kind().as_str_name(),
        e.version,
        printable(&e.id)
    );
}

/// One domain and type of the catalog: in the REST form (counts as
/// strings, as proto3 JSON writes 64-bit integers), or a line for people.
pub fn print_catalog_entry(p: &Printer, e: &CatalogEntry) {
    if p.json {
        p.json_value(&serde_json::json!({
            "domain": e.domain,
            "type": e.r#type,
            "records": e.records.to_string(),
            "events": e.events.to_string(),
            "lastEventTime": e.last_event_time.to_string(),
        }));
    } else {
        println!(
            "{}/{} {} record(s) {} event(s), last {}",
            printable(&e.domain),
            printable(&e.r#type),
            e.records,
            e.events,
            rfc3339(e.last_event_time)
        );
    }
}

/// Values as one line of JSON for a terminal: DEL, the C1 controls
/// (U+009B is CSI, which some terminals obey in UTF-8 too) and the
/// bidirectional formatting characters as JSON escapes (`\u009b`), so the
/// line still parses to the same values (`model::printable`).
pub fn printable_json(values: &serde_json::Value) -> String {
    owned(values.to_string(), printable_json_text)
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
    fn printable_json_escapes_what_serde_leaves_raw_and_parses_back() {
        let values = serde_json::json!({"a": "\u{1b}[2J", "b": "x\u{9b}2J\u{7f}", "c": ["\u{202e}fdp", "ünï ✓"]});
        let text = super::printable_json(&values);
        assert_eq!(text, r#"{"a":"\u001b[2J","b":"x\u009b2J\u007f","c":["\u202efdp","ünï ✓"]}"#);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), values);
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123_000_000), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::rfc3339(1_795_752_000_000_000_000), "2026-11-27T04:00:00.000Z");
    }
}
