//! The log subscriber: readable text on a terminal, JSON lines otherwise,
//! with what would steer a terminal written out in either.
//!
//! Log lines quote names that clients chose (a record's key, a topic, a
//! consumer group), and an operator reads them on a terminal, live or with
//! `cat` and `less`. tracing-subscriber escapes ESC and the C1 controls in
//! a text line's message only, not in its fields, and JSON escapes the C0
//! controls only, so a key holding an escape sequence or a right-to-left
//! override would reach the terminal raw. Here every text field goes
//! through `model::printable` (Rust escapes, as the CLI writes names), and
//! every JSON line through `printable_json_text` (JSON escapes, so the line
//! still parses to the same values).

use crate::model::printable::{printable, printable_json_text};
use std::fmt;
use std::io;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};

/// Installs the log subscriber. `format` is `json`, `text`, or `auto`
/// (the default): text when stderr is a terminal (a person is reading),
/// JSON otherwise (a collector is). Text has ANSI colours only on a
/// terminal, so a redirected log holds no escape codes.
pub fn init_logging(debug: bool, format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STATEGATE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if debug { "debug,h2=info,hyper=info,tower=info" } else { "info" })
    });
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        "json" => true,
        "text" => false,
        _ => !terminal,
    };
    // `try_init`, not `set_global_default`: it also routes the `log` crate's
    // records (wasmtime, cranelift and other dependencies log through it)
    // into this subscriber.
    let _ = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber(json, terminal, filter, std::io::stderr));
}

/// The subscriber, writing to what `make_writer` makes (stderr; a buffer
/// in tests).
fn subscriber<W>(
    json: bool,
    ansi: bool,
    filter: tracing_subscriber::EnvFilter,
    make_writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        Box::new(builder.with_writer(JsonLines(make_writer)).json().flatten_event(true).with_current_span(false).finish())
    } else {
        Box::new(builder.with_writer(make_writer).with_ansi(ansi).fmt_fields(TextFields).finish())
    }
}

/// The fields of a text line: `name=value`, or the message alone, one
/// space apart, each value escaped where it would steer a terminal (line
/// breaks too: one event is one line). The `log.*` fields of a record from
/// the `log` crate are left out, as tracing-subscriber's own formatter
/// leaves them out (the line already shows its target).
struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = TextVisitor { writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visit for TextVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let space = if std::mem::replace(&mut self.first, false) { "" } else { " " };
        let text = format!("{value:?}");
        let text = printable(&text);
        self.result = match name {
            "message" => write!(self.writer, "{space}{text}"),
            name => write!(self.writer, "{space}{}={text}", name.strip_prefix("r#").unwrap_or(name)),
        };
    }
}

/// Makes the writers of JSON log lines: each escapes what serde writes
/// raw (DEL, the C1 controls, the bidirectional formatting characters)
/// before the line reaches the inner writer.
struct JsonLines<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for JsonLines<M> {
    type Writer = EscapedJson<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapedJson(self.0.make_writer())
    }
}

/// tracing-subscriber writes each event with one `write_all` of its whole
/// line, so a call here holds whole characters; anything that is not UTF-8
/// passes unchanged.
struct EscapedJson<W>(W);

impl<W: io::Write> io::Write for EscapedJson<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(printable_json_text(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A buffer the subscriber writes to and the test reads.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(json: bool) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = super::subscriber(json, false, tracing_subscriber::EnvFilter::new("info"), move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            let key = "inv\u{202e}fdp.exe\u{1b}[2J\u{9b}\r";
            tracing::warn!(record = %key, topic = ?key, n = 3, "could not fill a gap of {key}");
            // As a record of the `log` crate arrives through tracing-log.
            tracing::warn!(log.target = "dep", log.line = 7, "from the log crate");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    /// Whether a line holds what would steer a terminal, beyond the line
    /// breaks that end its events.
    fn steers(text: &str) -> bool {
        text.chars().any(|c| c != '\n' && crate::model::printable::steers(c))
    }

    #[test]
    fn text_lines_write_out_what_would_steer_a_terminal() {
        let line = logged(false);
        assert!(!steers(&line), "{line:?}");
        assert!(line.contains("could not fill a gap of inv\\u{202e}fdp.exe\\u{1b}[2J\\u{9b}\\r"), "{line}");
        assert!(line.contains("record=inv\\u{202e}fdp.exe"), "{line}");
        assert!(line.contains(" n=3\n"), "{line}");
        assert!(line.contains("from the log crate\n") && !line.contains("log."), "log.* fields are left out: {line}");
    }

    #[test]
    fn json_lines_write_it_out_and_still_parse_to_the_same_values() {
        let line = logged(true);
        assert!(!steers(&line), "{line:?}");
        let first = line.lines().next().unwrap();
        let v: serde_json::Value = serde_json::from_str(first).unwrap();
        let key = "inv\u{202e}fdp.exe\u{1b}[2J\u{9b}\r";
        assert_eq!(v["record"], key);
        assert_eq!(v["message"], format!("could not fill a gap of {key}"));
        assert_eq!(v["n"], 3);
    }
}
