//! The protobuf encodings of recently answered JSON texts, so that a record
//! read again and again is transcoded once.
//!
//! A `Get` answers with the values as the store keeps them, JSON text, which
//! `transcode::struct_body` turns into a `Struct`'s encoding: 7.8k of the
//! 102.5k instructions of a `Get` for 300 B of nested values (callgrind,
//! `scripts/call-costs`), the largest piece of its cost beyond the
//! transport's. Reads go mostly to the records read a moment ago, so the
//! encoding is kept and answered again while the memo holds it.
//!
//! **Keyed by the text itself**, not by record and version: the encoding
//! is a function of the text alone, so an answer from the memo is exactly
//! what transcoding would give, whatever the provider, whoever wrote the
//! record and however (a store edited behind the gateway's back included).
//! A lookup hashes the text and compares it with the kept one (a few
//! hundred instructions for 300 B); a miss transcodes as before and keeps
//! the text it was handed, without copying it.
//!
//! **Bounded by bytes** (`BUDGET`, texts and encodings together, least
//! recently used out first); a text over `MAX_TEXT` is transcoded every
//! time rather than push out a hundred small ones. The metrics
//! `get_value_encodings_total{source}` and `get_memo_bytes` say how often
//! the memo answers and what it holds.

use super::transcode::{self, Malformed};
use crate::telemetry::Metrics;
use bytes::Bytes;
use lru::LruCache;
use prometheus::{IntCounter, IntGauge};
use std::sync::Mutex;

/// Bytes of texts, encodings and bookkeeping the memo holds at most.
pub const BUDGET: usize = 8 << 20;
/// Longest text kept.
pub const MAX_TEXT: usize = BUDGET / 128;
/// Bookkeeping per entry: the list node, the table slot, two headers.
const ENTRY_OVERHEAD: usize = 128;

pub struct BodyMemo {
    inner: Mutex<Inner>,
    /// The metrics' handles, resolved once: a labelled lookup per call
    /// would hash its labels every time.
    from_memo: IntCounter,
    transcoded: IntCounter,
    held: IntGauge,
}

struct Inner {
    entries: LruCache<String, Bytes>,
    bytes: usize,
}

impl BodyMemo {
    pub fn new(metrics: &Metrics) -> BodyMemo {
        let source = |s: &str| metrics.get_value_encodings.with_label_values(&[s]);
        BodyMemo {
            inner: Mutex::new(Inner { entries: LruCache::unbounded(), bytes: 0 }),
            from_memo: source("memo"),
            transcoded: source("transcoded"),
            held: metrics.get_memo_bytes.clone(),
        }
    }

    /// `transcode::struct_body(text)`, from the memo when it holds `text`.
    pub fn struct_body(&self, text: String) -> Result<Bytes, Malformed> {
        if let Some(body) = self.lock().entries.get(text.as_str()) {
            self.from_memo.inc();
            return Ok(body.clone());
        }
        let body = Bytes::from(transcode::struct_body(&text)?);
        self.transcoded.inc();
        if text.len() <= MAX_TEXT {
            let mut inner = self.lock();
            inner.keep(text, body.clone());
            self.held.set(inner.bytes as i64);
        }
        Ok(body)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change to `Inner` leaves it whole: a panic elsewhere while
        // it was held does not make it wrong.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn keep(&mut self, text: String, body: Bytes) {
        let cost = entry_cost(&text, &body);
        // Another call may have kept the same text meanwhile.
        if let Some((text, body)) = self.entries.push(text, body) {
            self.bytes -= entry_cost(&text, &body);
        }
        self.bytes += cost;
        while self.bytes > BUDGET {
            let Some((text, body)) = self.entries.pop_lru() else { break };
            self.bytes -= entry_cost(&text, &body);
        }
    }
}

fn entry_cost(text: &str, body: &Bytes) -> usize {
    text.len() + body.len() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memo() -> BodyMemo {
        BodyMemo::new(&Metrics::new())
    }

    #[test]
    fn an_answer_from_the_memo_is_the_transcoding_of_the_same_text() {
        let metrics = Metrics::new();
        let memo = BodyMemo::new(&metrics);
        let texts = [r#"{"a":1,"b":"x"}"#, r#"{"a":2,"b":"x"}"#, r#"{"b":"x","a":1}"#, "{}"];
        for round in 0..3 {
            for text in texts {
                let body = memo.struct_body(text.to_owned()).unwrap();
                assert_eq!(body, transcode::struct_body(text).unwrap(), "round {round}: {text}");
            }
        }
        assert_eq!(memo.lock().entries.len(), texts.len());
        let counted = |source: &str| metrics.get_value_encodings.with_label_values(&[source]).get();
        assert_eq!((counted("transcoded"), counted("memo")), (4, 8));
        assert_eq!(metrics.get_memo_bytes.get(), memo.bytes() as i64);
    }

    #[test]
    fn a_malformed_text_is_an_error_every_time_and_not_kept() {
        let memo = memo();
        for _ in 0..2 {
            assert!(memo.struct_body(r#"{"a":"#.to_owned()).is_err());
        }
        assert_eq!(memo.bytes(), 0);
    }

    #[test]
    fn the_memo_stays_within_its_budget_and_keeps_the_recently_used() {
        let memo = memo();
        let filler = "x".repeat(1000);
        let text = |i: usize| format!(r#"{{"i":{i},"f":"{filler}"}}"#);
        let hot = text(0);
        for i in 1..(3 * BUDGET / 1000) {
            memo.struct_body(text(i)).unwrap();
            memo.struct_body(hot.clone()).unwrap();
            assert!(memo.bytes() <= BUDGET);
        }
        assert!(memo.bytes() > BUDGET / 2, "{} bytes held", memo.bytes());
        assert!(memo.lock().entries.contains(hot.as_str()));
        assert!(!memo.lock().entries.contains(text(1).as_str()));
        // A text past MAX_TEXT is answered, not kept.
        let big = format!(r#"{{"f":"{}"}}"#, "y".repeat(MAX_TEXT));
        let held = memo.bytes();
        assert_eq!(memo.struct_body(big.clone()).unwrap(), transcode::struct_body(&big).unwrap());
        assert_eq!(memo.bytes(), held);
        assert!(!memo.lock().entries.contains(big.as_str()));
    }
}
