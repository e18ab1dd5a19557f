//! Text as a person is shown it: a record's name, or a message that quotes
//! one, with whatever would steer a terminal or reorder a line written out
//! as Rust escapes (`\u{1b}`, `\u{202e}`).
//!
//! Whoever may write a record chooses its domain, type and key, and names
//! accept everything but white space. A key holding an escape sequence would
//! drive the terminal of whoever sees it (clear it, retitle it, print fake
//! lines), and a right-to-left override would make `invoice\u{202e}fdp.exe`
//! read `invoiceexe.pdf`. The gateway's error messages (`api::status`), its
//! log lines (`telemetry::logs`) and the CLI's output pass through here;
//! requests and stored data never do, so the real names still round-trip.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with what would steer a terminal written out as Rust escapes
/// (`\u{1b}`, `\n`, `\u{0}`): the control characters, and the bidirectional
/// formatting characters that reorder what a line shows. Everything else,
/// other scripts and emoji among it, is kept as it is.
pub fn printable(text: &str) -> Cow<'_, str> {
    replaced(text, steers, |c, out| out.extend(c.escape_default()))
}

/// [`printable`] for a message of several lines (an error with its
/// causes, a guest's diagnostics): its line breaks and tabs stay.
pub fn printable_message(text: &str) -> Cow<'_, str> {
    replaced(text, |c| c != '\n' && c != '\t' && steers(c), |c, out| out.extend(c.escape_default()))
}

/// JSON text (a value, a log line) with what serde writes raw and would
/// steer a terminal (DEL, the C1 controls, the bidirectional formatting
/// characters) as JSON escapes (`\u009b`): it still parses to the same
/// values. They can only be inside strings, since JSON's own punctuation
/// is ASCII; serde escapes the C0 controls inside strings itself, so a raw
/// line break or tab is white space between tokens, and stays.
pub fn printable_json_text(text: &str) -> Cow<'_, str> {
    replaced(text, |c| !matches!(c, '\n' | '\r' | '\t') && steers(c), |c, out| {
        let _ = write!(out, "\\u{:04x}", u32::from(c));
    })
}

/// `text` through one of the functions above, owned: `text` itself, not a
/// copy, when nothing needed escaping (the usual case).
pub fn owned(text: String, escape: impl for<'t> Fn(&'t str) -> Cow<'t, str>) -> String {
    match escape(&text) {
        Cow::Owned(escaped) => escaped,
        Cow::Borrowed(_) => text,
    }
}

/// Whether `c` would steer a terminal: a control character, or a
/// bidirectional formatting character, which reorders what follows it.
pub fn steers(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with each character that `escape` picks written by `write`
/// instead; borrowed when there is none (the usual case).
fn replaced(text: &str, escape: impl Fn(char) -> bool, write: impl Fn(char, &mut String)) -> Cow<'_, str> {
    if !text.chars().any(&escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escape(c) {
            write(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::{printable, printable_message};

    #[test]
    fn printable_escapes_what_steers_a_terminal_only() {
        assert!(matches!(printable("alice-ünïcödé-✓"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("k\u{1b}[2J\u{7}"), "k\\u{1b}[2J\\u{7}");
        assert_eq!(printable("a\u{0}b\tc\nd\u{7f}"), "a\\u{0}b\\tc\\nd\\u{7f}");
        assert_eq!(printable("x\u{202e}y\u{2066}z"), "x\\u{202e}y\\u{2066}z");
        let message = "state d/t/k\u{1b}[2J not found\n\tcaused by: x\u{7}";
        assert_eq!(printable_message(message), "state d/t/k\\u{1b}[2J not found\n\tcaused by: x\\u{7}");
    }

    #[test]
    fn json_text_escapes_what_serde_leaves_raw_and_keeps_its_white_space() {
        let text = "{\"a\": \"x\u{9b}2J\u{7f}\u{202e}\"}\n";
        assert_eq!(super::printable_json_text(text), "{\"a\": \"x\\u009b2J\\u007f\\u202e\"}\n");
    }

    #[test]
    fn escaping_twice_changes_nothing_more() {
        let once = printable_message("version conflict on d/t/a\u{202e}b\u{1b}: \"q\\\"\"");
        assert_eq!(printable_message(&once), once);
    }
}
