//! A JSON object's text transcoded straight to the protobuf encoding of a
//! `google.protobuf.Struct`, without building a map in between.
//!
//! `Get` answers with the values as their store keeps them, JSON text
//! (`model::StoredState::Text`). Parsing that text into a `serde_json` map
//! (an `IndexMap` with a hashed key, a `String` and a boxed `Value` per
//! member) only to encode it and free it cost a `Get` 11.4k instructions
//! of the 41k it spends beyond the transport's own (callgrind, 300 B nested
//! values). Here the text is written out as protobuf as it is read:
//! strings without escapes are copied from it, and nothing is allocated
//! but the output.
//!
//! The text is read by hand, in one pass: serde_json's visitor machinery
//! cost as much again as the encoding (8.6k instructions of a 108k `Get`),
//! where a string's end is found eight bytes at a time and a number is
//! `f64`'s own parser. The grammar is JSON's (RFC 8259), strictly: anything else,
//! a lone surrogate, a number past `f64`'s range or nesting deeper than
//! serde_json's limit (128) is an error naming the byte it was found at,
//! never a panic.
//!
//! Protobuf puts a message's length before its body, and a JSON value's
//! encoded length is known only once it has been read. So each body is
//! written first and its heads inserted in front of it afterwards
//! (`insert_head`): a byte moves once for each container around it, a few
//! hundred bytes for a few hundred bytes of values, where measuring first
//! would need a second walk over the text.
//!
//! The bytes decode to exactly what `api::convert` builds from the map
//! serde_json parses from the same text (the tests check it over random
//! documents): members in the text's order, every number as the `f64`
//! nearest its decimal text (serde_json with `float_roundtrip` parses to
//! the same `f64`, an integer through `u64`/`i64` then `as f64`, which
//! rounds the same way).

use super::encode::{entry_len_with, put_message_head, put_string, string_len};
use prost::encoding::{WireType, encode_varint, encoded_len_varint, key_len};
use std::borrow::Cow;

/// serde_json's recursion limit: a deeper document does not parse there
/// either, so no stored document is this deep.
const MAX_DEPTH: usize = 128;

/// Why a text is not one JSON object, and at which byte.
#[derive(Debug, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct Malformed {
    pub what: &'static str,
    pub at: usize,
}

/// The body of a `Struct` holding the members of the JSON object `text`, in
/// the text's order; `Malformed` when `text` is not one JSON object.
pub fn struct_body(text: &str) -> Result<Vec<u8>, Malformed> {
    // The encoding is about as long as the text: tags and lengths replace
    // quotes, colons and commas, and a number takes 9 bytes.
    let mut p = Parser { text, at: 0, depth: 0, out: Vec::with_capacity(text.len() + text.len() / 4 + 16) };
    p.skip_space();
    p.expect(b'{', "expected a JSON object")?;
    p.members()?;
    p.skip_space();
    if p.at != text.len() {
        return Err(p.error("trailing characters after the object"));
    }
    Ok(p.out)
}

struct Parser<'t> {
    text: &'t str,
    at: usize,
    depth: usize,
    out: Vec<u8>,
}

impl<'t> Parser<'t> {
    fn error(&self, what: &'static str) -> Malformed {
        Malformed { what, at: self.at }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), Malformed> {
        if self.peek() != Some(byte) {
            return Err(self.error(what));
        }
        self.at += 1;
        Ok(())
    }

    /// After an object's `{`: its members up to its `}`, as a `Struct`
    /// body, one `fields` map entry (key 1, value 2) each.
    fn members(&mut self) -> Result<(), Malformed> {
        self.sequence(b'}', "expected ',' or '}' after a member", Self::member)
    }

    fn member(&mut self) -> Result<(), Malformed> {
        self.skip_space();
        self.expect(b'"', "expected a member name")?;
        let key = self.string()?;
        self.skip_space();
        self.expect(b':', "expected ':' after a member name")?;
        self.skip_space();
        match self.scalar()? {
            // A scalar's length is known before it is written: the
            // heads go first.
            Some(scalar) => {
                let value_len = scalar.len();
                let out = &mut self.out;
                head(out, 1, WireType::LengthDelimited, entry_len_with(&key, value_len));
                if !key.is_empty() {
                    head(out, 1, WireType::LengthDelimited, key.len());
                    out.extend_from_slice(key.as_bytes());
                }
                head(out, 2, WireType::LengthDelimited, value_len);
                scalar.put(out);
            }
            None => {
                let start = self.out.len();
                self.container()?;
                let value_len = self.out.len() - start;
                let entry_len = entry_len_with(&key, value_len);
                let head_len = key_len(1)
                    + encoded_len_varint(entry_len as u64)
                    + string_len(1, &key)
                    + key_len(2)
                    + encoded_len_varint(value_len as u64);
                insert_head(&mut self.out, start, head_len, |head| {
                    put_message_head(1, entry_len, head);
                    put_string(1, &key, head);
                    put_message_head(2, value_len, head);
                });
            }
        }
        Ok(())
    }

    /// The items of an object (`close`: `}`) or a list (`]`), each read by
    /// `item`, up to the closing byte, which is consumed.
    fn sequence(&mut self, close: u8, separator: &'static str, mut item: impl FnMut(&mut Self) -> Result<(), Malformed>) -> Result<(), Malformed> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("nested more than 128 deep"));
        }
        self.skip_space();
        if self.peek() != Some(close) {
            loop {
                self.skip_space();
                item(self)?;
                self.skip_space();
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b) if b == close => break,
                    _ => return Err(self.error(separator)),
                }
            }
        }
        self.at += 1;
        self.depth -= 1;
        Ok(())
    }

    /// A scalar JSON value, read; `None` (nothing read) at an object or a
    /// list.
    fn scalar(&mut self) -> Result<Option<Scalar<'t>>, Malformed> {
        Ok(Some(match self.peek() {
            Some(b'{' | b'[') => return Ok(None),
            Some(b'"') => {
                self.at += 1;
                Scalar::String(self.string()?)
            }
            Some(b'-' | b'0'..=b'9') => Scalar::Number(self.number()?),
            Some(b't') => self.literal("true", Scalar::Bool(true))?,
            Some(b'f') => self.literal("false", Scalar::Bool(false))?,
            Some(b'n') => self.literal("null", Scalar::Null)?,
            _ => return Err(self.error("expected a JSON value")),
        }))
    }

    /// An object or a list (the next byte is `{` or `[`), as a `Value`
    /// body: its `kind` field, 5 (struct_value) or 6 (list_value).
    fn container(&mut self) -> Result<(), Malformed> {
        let start = self.out.len();
        let object = self.peek() == Some(b'{');
        self.at += 1;
        if object {
            self.members()?;
            self.wrap(5, start);
        } else {
            self.items()?;
            self.wrap(6, start);
        }
        Ok(())
    }

    /// After a list's `[`: its items up to its `]`, as a `ListValue` body,
    /// one `values` field (1) each.
    fn items(&mut self) -> Result<(), Malformed> {
        self.sequence(b']', "expected ',' or ']' after a list item", |p| {
            match p.scalar()? {
                Some(scalar) => {
                    head(&mut p.out, 1, WireType::LengthDelimited, scalar.len());
                    scalar.put(&mut p.out);
                }
                None => {
                    let start = p.out.len();
                    p.container()?;
                    p.wrap(1, start);
                }
            }
            Ok(())
        })
    }

    /// `true`, `false` or `null`, whose value is `scalar`.
    fn literal(&mut self, word: &'static str, scalar: Scalar<'t>) -> Result<Scalar<'t>, Malformed> {
        if !self.text[self.at..].starts_with(word) {
            return Err(self.error("expected a JSON value"));
        }
        self.at += word.len();
        Ok(scalar)
    }

    /// A number, checked against JSON's grammar (`f64`'s parser takes more,
    /// such as `inf` or `+1`), then parsed by `f64`'s parser.
    fn number(&mut self) -> Result<f64, Malformed> {
        let start = self.at;
        let bytes = self.text.as_bytes();
        let digits = |at: &mut usize| {
            let from = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > from
        };
        let mut at = start;
        if bytes[at] == b'-' {
            at += 1;
        }
        let int_start = at;
        if !digits(&mut at) || (bytes[int_start] == b'0' && at - int_start > 1) {
            return Err(Malformed { what: "malformed number", at: start });
        }
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            if !digits(&mut at) {
                return Err(Malformed { what: "malformed number", at: start });
            }
        }
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = bytes.get(at) {
                at += 1;
            }
            if !digits(&mut at) {
                return Err(Malformed { what: "malformed number", at: start });
            }
        }
        self.at = at;
        match self.text[start..at].parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(n),
            _ => Err(Malformed { what: "number out of range", at: start }),
        }
    }

    /// After a string's opening quote: the string up to its closing one,
    /// borrowed from the text unless it has escapes.
    fn string(&mut self) -> Result<Cow<'t, str>, Malformed> {
        let text = self.text;
        let start = self.at;
        let mut owned: Option<String> = None;
        let mut from = start;
        loop {
            let end = special_byte(text.as_bytes(), self.at);
            match text.as_bytes().get(end) {
                Some(b'"') => {
                    self.at = end + 1;
                    return Ok(match owned {
                        None => Cow::Borrowed(&text[start..end]),
                        Some(mut s) => {
                            s.push_str(&text[from..end]);
                            Cow::Owned(s)
                        }
                    });
                }
                Some(b'\\') => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(&text[from..end]);
                    self.at = end + 1;
                    self.escape(s)?;
                    from = self.at;
                }
                Some(_) => return Err(Malformed { what: "control character in a string", at: end }),
                None => return Err(Malformed { what: "unterminated string", at: start }),
            }
        }
    }

    /// After a backslash: one escape, appended to `s`.
    fn escape(&mut self, s: &mut String) -> Result<(), Malformed> {
        let Some(b) = self.peek() else {
            return Err(self.error("unterminated string"));
        };
        self.at += 1;
        s.push(match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&first) {
                    if !self.text[self.at..].starts_with("\\u") {
                        return Err(self.error("lone leading surrogate in a \\u escape"));
                    }
                    self.at += 2;
                    let second = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&second) {
                        return Err(self.error("lone leading surrogate in a \\u escape"));
                    }
                    0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                } else {
                    first
                };
                char::from_u32(code).ok_or_else(|| self.error("lone trailing surrogate in a \\u escape"))?
            }
            _ => return Err(self.error("invalid escape")),
        });
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let digits = self.text.get(self.at..self.at + 4).ok_or_else(|| self.error("invalid \\u escape"))?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("invalid \\u escape"));
        }
        self.at += 4;
        Ok(u32::from_str_radix(digits, 16).expect("four hex digits"))
    }

    /// A container's body was written from `start`: put the head of its
    /// field `tag` (5: struct_value, 6: list_value, 1: a list's item) in
    /// front of it.
    fn wrap(&mut self, tag: u32, start: usize) {
        let body = self.out.len() - start;
        insert_head(&mut self.out, start, key_len(tag) + encoded_len_varint(body as u64), |head| put_message_head(tag, body, head));
    }
}

/// A scalar value read from the text.
enum Scalar<'t> {
    Null,
    Bool(bool),
    Number(f64),
    String(Cow<'t, str>),
}

impl Scalar<'_> {
    /// Its `Value` body's length.
    fn len(&self) -> usize {
        match self {
            Scalar::Null | Scalar::Bool(_) => key_len(1) + 1,
            Scalar::Number(_) => key_len(2) + 8,
            Scalar::String(s) => key_len(3) + encoded_len_varint(s.len() as u64) + s.len(),
        }
    }

    /// Its `Value` body: its one `kind` member.
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Scalar::Null => head(out, 1, WireType::Varint, 0),
            Scalar::Bool(b) => head(out, 4, WireType::Varint, usize::from(*b)),
            Scalar::Number(n) => {
                varint(out, 2 << 3 | WireType::SixtyFourBit as usize);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Scalar::String(s) => {
                head(out, 3, WireType::LengthDelimited, s.len());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// A field's key and then `n`: a length, or a varint's value. Tags here
/// are below 16, so a key is one byte, and most lengths are too.
#[inline]
fn head(out: &mut Vec<u8>, tag: u32, wire: WireType, n: usize) {
    varint(out, (tag << 3 | wire as u32) as usize);
    varint(out, n);
}

#[inline]
fn varint(out: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        encode_varint(n as u64, out);
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `v` that is a quote, a backslash or a
/// control character. The lowest one set is exact; above it a borrow may
/// set more, so the word is nonzero exactly when it holds such a byte.
fn special_bytes_in(v: u64) -> u64 {
    // The high bit of each byte that is zero in `w`.
    let zero_bytes = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    zero_bytes(v ^ (ONES * b'"' as u64)) | zero_bytes(v ^ (ONES * b'\\' as u64)) | (v.wrapping_sub(ONES * 0x20) & !v & HIGH)
}

/// The index of the first byte from `at` that ends a string's plain run:
/// a quote, a backslash or a control character (`bytes.len()`: none).
/// Eight bytes at a time: the strings of records are mostly short, where
/// a vectorized search's setup costs more than it saves.
pub(super) fn special_byte(bytes: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = bytes.get(at..at + 8) {
        let found = special_bytes_in(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        if found != 0 {
            return at + found.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return at;
        }
        at += 1;
    }
    at
}

/// Whether every byte is printable ASCII other than `"` and `\\`, so that
/// the bytes between quotes are both valid UTF-8 and what serde writes for
/// them. The values reader (`values_request::string_bytes`) asks it of every
/// key and string sent to it: one pass eight bytes at a time, the last
/// word overlapping the one before it or, under eight bytes, padded with a
/// plain byte. `is_ascii` and then `special_byte`, two passes each with a
/// byte-by-byte tail, cost 155 instructions a string of a `Set` (callgrind,
/// BENCHMARKS.md session 33).
pub(super) fn plain_ascii(bytes: &[u8]) -> bool {
    let odd = |v: u64| special_bytes_in(v) | (v & HIGH);
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("eight bytes"));
    let len = bytes.len();
    if len < 8 {
        let mut padded = [b'a'; 8];
        padded[..len].copy_from_slice(bytes);
        return odd(u64::from_le_bytes(padded)) == 0;
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut seen = 0;
    for chunk in &mut chunks {
        seen |= odd(word(chunk));
    }
    if !chunks.remainder().is_empty() {
        seen |= odd(word(&bytes[len - 8..]));
    }
    seen == 0
}

/// Makes room for `len` bytes at `at` and fills them with `write`, which
/// must write exactly `len` bytes.
fn insert_head(out: &mut Vec<u8>, at: usize, len: usize, write: impl FnOnce(&mut &mut [u8])) {
    let end = out.len();
    out.resize(end + len, 0);
    out.copy_within(at..end, at + len);
    let mut head = &mut out[at..at + len];
    write(&mut head);
    debug_assert!(head.is_empty(), "a head was measured {len} bytes but written {}", len - head.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::convert;
    use crate::model::{RecordRef, State, Values};
    use prost::Message;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// What the parsed path encodes: `convert`'s Struct of the parsed map.
    fn via_map(text: &str) -> prost_types::Struct {
        let values: Values = serde_json::from_str(text).unwrap();
        let record = RecordRef { domain: "d".into(), ty: "t".into(), key: "k".into() };
        convert::state(State { record, values, version: 0 }).values.unwrap()
    }

    fn transcoded(text: &str) -> prost_types::Struct {
        prost_types::Struct::decode(struct_body(text).unwrap().as_slice()).unwrap()
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn special_byte_finds_the_first_quote_backslash_or_control(bytes in prop::collection::vec(prop_oneof![Just(b'"'), Just(b'\\'), 0u8..0x20, any::<u8>(), b'a'..=b'z'], 0..40), at in 0usize..40) {
            let at = at.min(bytes.len());
            let naive = (at..bytes.len()).find(|&i| bytes[i] == b'"' || bytes[i] == b'\\' || bytes[i] < 0x20).unwrap_or(bytes.len());
            prop_assert_eq!(special_byte(&bytes, at), naive);
        }

        #[test]
        fn transcoding_equals_parsing_then_encoding(v in prop::collection::btree_map(".{0,8}", json_value(), 0..10)) {
            let v: Values = v.into_iter().collect();
            // Compact, as sqlite and mysql keep it; spaced, as postgres prints jsonb.
            for text in [serde_json::to_string(&v).unwrap(), serde_json::to_string_pretty(&v).unwrap()] {
                prop_assert_eq!(transcoded(&text), via_map(&text));
            }
        }
    }

    #[test]
    fn escapes_numbers_and_nesting_come_through() {
        let text = r#"{"a\"b": "line\nbreak \u00e9 \ud83d\ude00", "": [[], {}, [1, -2, 3.5e3, 18446744073709551615]],
            "deep": {"x": {"y": {"z": [null, true, false]}}}, "long": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        assert_eq!(transcoded(text), via_map(text));
        let s = transcoded(text);
        let Some(prost_types::value::Kind::StringValue(v)) = s.fields["a\"b"].kind.clone() else { panic!("a string") };
        assert_eq!(v, "line\nbreak é 😀");
    }

    #[test]
    fn a_stored_float_reads_back_as_the_same_f64() {
        // Without serde_json's float_roundtrip this came back one ulp off.
        let n = -966659874139.3817f64;
        let text = serde_json::to_string(&json!({ "n": n })).unwrap();
        assert_eq!(transcoded(&text).fields["n"].kind, Some(prost_types::value::Kind::NumberValue(n)));
        assert_eq!(via_map(&text).fields["n"].kind, Some(prost_types::value::Kind::NumberValue(n)));
    }

    #[test]
    fn text_that_is_not_one_object_is_an_error() {
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        let bad = [
            "", "[1]", "\"s\"", "{\"a\":", "{\"a\": 1} {}", "{\"a\": tru}", "{1: 2}", "{\"a\": 1,}", "{\"a\" 1}",
            "{\"a\": 1e400}", "{\"a\": -}", "{\"a\": 01}", "{\"a\": 1.}", "{\"a\": .5}", "{\"a\": 1e}", "{\"a\": +1}",
            "{\"a\": inf}", "{\"a\": NaN}", "{\"a\": \"\\ud800\"}", "{\"a\": \"\\udc00\"}", "{\"a\": \"\\ud800\\u0041\"}",
            "{\"a\": \"\\x\"}", "{\"a\": \"\\u12\"}", "{\"a\": \"tab\there\"}", "{\"a\": \"open}", "{\"a\": [1 2]}", "{\"a\": [1,]}",
            &deep,
        ];
        for bad in bad {
            assert!(struct_body(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(struct_body("{}").unwrap().is_empty());
        assert!(struct_body(" {\"a\" : 1 } \n").is_ok());
    }
}
