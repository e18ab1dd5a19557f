//! The requests that carry values (`Set`'s `State`, `Edit`'s
//! `EditRequest`), decoded with their `google.protobuf.Struct` read
//! straight into a JSON object.
//!
//! prost builds a `Struct` (a `BTreeMap` of `Value`s, a `String` per key),
//! which `convert::struct_to_json` then rebuilds as the object the gateway
//! keeps: for the ~300 B of values of the external rows that was 29k of a
//! `Set`'s 200k instructions (callgrind, BENCHMARKS.md session 16).
//!
//! **Invariant:** `values()` answers exactly what prost's decoding of the
//! generated message followed by `struct_to_json` answers, object for
//! object and error for error, and the fast reader's text is what
//! `serde_json` writes for that object (`EventValues`' invariant). The fast
//! reader takes only the plain encoding protobuf libraries write: each map
//! entry a key and a value, each `Value` one field, each key once, nesting
//! under [`FAST_DEPTH`]. Anything else (an unknown or repeated field or
//! key, which protobuf merges or lets the last win; bad UTF-8; NaN; too
//! many values; deep nesting; malformed bytes) goes to prost and
//! `struct_to_json` unchanged, so theirs stay the only answers and error
//! messages. Keys come out sorted, as from the `BTreeMap`: the stored
//! text, and so an idempotency fingerprint, does not depend on the order a
//! client's library wrote the map in. A proptest holds the two paths equal.
//!
//! The fast reader writes the values as JSON text, not as a map: a `Set`
//! that nothing inspects stores the text and never builds the map
//! (`model::EventValues`).
//!
//! The request's other fields decode as the generated message's do
//! (prost's own field functions, the same error context); the values
//! payload is kept as bytes until `values()`, every occurrence of the
//! field concatenated, which is how protobuf merges a message field given
//! more than once.

use super::convert;
use super::status::to_status;
use crate::model::{EventValues, Values, json};
use crate::proto as pb;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};
use smallvec::SmallVec;
use std::marker::PhantomData;
use tonic::Status;

/// JSON nesting the fast reader takes. Deeper values go to prost, whose
/// recursion limit (100 messages, three per JSON level) decides them.
const FAST_DEPTH: usize = 16;

/// Where one request message keeps its fields.
pub trait Layout: Send + Sync + 'static {
    /// The message's name, as prost names it in decode errors.
    const MESSAGE: &'static str;
    /// The values field's name (field 4 in both messages).
    const VALUES: &'static str;
    const EXPECTED_VERSION: u32;
    const IDEMPOTENCY_KEY: u32;
    /// Output-only `int64` fields a client may send: read as prost reads
    /// them (a malformed one is refused), then dropped.
    const IGNORED_INT64: &'static [(u32, &'static str)];
    /// The generated message, which decodes the values on the slow path.
    type Generated: Message + Default;
    fn values_of(m: Self::Generated) -> Option<prost_types::Struct>;
}

/// `stategate.State`, as `Set` receives it.
pub enum SetLayout {}

impl Layout for SetLayout {
    const MESSAGE: &'static str = "State";
    const VALUES: &'static str = "values";
    const EXPECTED_VERSION: u32 = 6;
    const IDEMPOTENCY_KEY: u32 = 7;
    const IGNORED_INT64: &'static [(u32, &'static str)] = &[(5, "version"), (8, "sequence")];
    type Generated = pb::State;
    fn values_of(m: pb::State) -> Option<prost_types::Struct> {
        m.values
    }
}

/// `stategate.EditRequest`; its values are the patch.
pub enum EditLayout {}

impl Layout for EditLayout {
    const MESSAGE: &'static str = "EditRequest";
    const VALUES: &'static str = "patch";
    const EXPECTED_VERSION: u32 = 5;
    const IDEMPOTENCY_KEY: u32 = 6;
    const IGNORED_INT64: &'static [(u32, &'static str)] = &[];
    type Generated = pb::EditRequest;
    fn values_of(m: pb::EditRequest) -> Option<prost_types::Struct> {
        m.patch
    }
}

pub type SetCall = ValuesRequest<SetLayout>;
pub type EditCall = ValuesRequest<EditLayout>;

/// A request with its values still encoded (see the module doc).
pub struct ValuesRequest<L> {
    pub domain: String,
    pub ty: String,
    pub key: String,
    /// Field 4's payload, every occurrence concatenated.
    payload: Option<Vec<u8>>,
    pub expected_version: Option<i64>,
    pub idempotency_key: String,
    layout: PhantomData<L>,
}

impl<L> Default for ValuesRequest<L> {
    fn default() -> Self {
        ValuesRequest {
            domain: String::new(),
            ty: String::new(),
            key: String::new(),
            payload: None,
            expected_version: None,
            idempotency_key: String::new(),
            layout: PhantomData,
        }
    }
}

impl<L> std::fmt::Debug for ValuesRequest<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValuesRequest")
            .field("domain", &self.domain)
            .field("type", &self.ty)
            .field("key", &self.key)
            .field("payload_bytes", &self.payload.as_ref().map(Vec::len))
            .field("expected_version", &self.expected_version)
            .field("idempotency_key", &self.idempotency_key)
            .finish()
    }
}

/// Values read from a request, with the payload's own bytes when they can
/// be sent back as the values' encoding (`ValuesRequest::values_and_body`).
pub type ValuesAndBody = (EventValues, Option<Vec<u8>>);

impl<L: Layout> ValuesRequest<L> {
    /// The values as a JSON object; `None` when the field is absent.
    pub fn values(&mut self) -> Result<Option<Values>, Status> {
        Ok(self.values_and_body()?.map(|(values, _)| values.into_values()))
    }

    /// The values, as the JSON text of their object when the fast reader
    /// took them (`EventValues`: nothing has to build the map unless it
    /// reads it), with the payload itself when it is already exactly the
    /// encoding of those values, entry order aside (which protobuf maps do
    /// not define): a response holding the same values may then send these
    /// bytes rather than encode the object again. The fast reader decides
    /// that as it reads ([`Reading::canonical`]); a payload it leaves to
    /// prost never qualifies.
    pub fn values_and_body(&mut self) -> Result<Option<ValuesAndBody>, Status> {
        let Some(payload) = self.payload.take() else {
            return Ok(None);
        };
        let mut reading = Reading { budget: json::MAX_VALUES, canonical: true };
        let mut text = Vec::with_capacity(payload.len() + payload.len() / 4);
        if object(&payload, 0, &mut reading, &mut text).is_some() {
            // Everything written is JSON punctuation and serde's output.
            let text = String::from_utf8(text).map_err(|e| Status::internal(format!("values text: {e}")))?;
            return Ok(Some((EventValues::from_json_text(text), reading.canonical.then_some(payload))));
        }
        // The slow path: the generated message around the same payload, so
        // prost's errors carry the same context and recursion depth.
        let mut wrapped = Vec::with_capacity(payload.len() + 11);
        encoding::bytes::encode(4, &payload, &mut wrapped);
        let generated = L::Generated::decode(wrapped.as_slice())
            .map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))?;
        let values = L::values_of(generated).unwrap_or_default();
        convert::struct_to_json(L::VALUES, values).map(|v| Some((v.into(), None))).map_err(to_status)
    }
}

impl<L: Layout> Message for ValuesRequest<L> {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for (tag, s) in [(1, &self.domain), (2, &self.ty), (3, &self.key)] {
            if !s.is_empty() {
                encoding::string::encode(tag, s, buf);
            }
        }
        if let Some(p) = &self.payload {
            encoding::bytes::encode(4, p, buf);
        }
        if let Some(v) = &self.expected_version {
            encoding::int64::encode(L::EXPECTED_VERSION, v, buf);
        }
        if !self.idempotency_key.is_empty() {
            encoding::string::encode(L::IDEMPOTENCY_KEY, &self.idempotency_key, buf);
        }
    }

    fn merge_field(&mut self, tag: u32, wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> Result<(), DecodeError> {
        let context = |field: &'static str| {
            move |mut e: DecodeError| {
                e.push(L::MESSAGE, field);
                e
            }
        };
        match tag {
            1 => encoding::string::merge(wire_type, &mut self.domain, buf, ctx).map_err(context("domain")),
            2 => encoding::string::merge(wire_type, &mut self.ty, buf, ctx).map_err(context("type")),
            3 => encoding::string::merge(wire_type, &mut self.key, buf, ctx).map_err(context("key")),
            4 => {
                let mut part = Vec::new();
                encoding::bytes::merge(wire_type, &mut part, buf, ctx).map_err(context(L::VALUES))?;
                match &mut self.payload {
                    Some(p) => p.extend_from_slice(&part),
                    None => self.payload = Some(part),
                }
                Ok(())
            }
            t if t == L::EXPECTED_VERSION => {
                encoding::int64::merge(wire_type, self.expected_version.get_or_insert(0), buf, ctx)
                    .map_err(context("expected_version"))
            }
            t if t == L::IDEMPOTENCY_KEY => {
                encoding::string::merge(wire_type, &mut self.idempotency_key, buf, ctx).map_err(context("idempotency_key"))
            }
            t => match L::IGNORED_INT64.iter().find(|(n, _)| *n == t) {
                Some((_, name)) => encoding::int64::merge(wire_type, &mut 0, buf, ctx).map_err(context(name)),
                None => encoding::skip_field(wire_type, tag, buf, ctx),
            },
        }
    }

    fn encoded_len(&self) -> usize {
        let strings = [(1, &self.domain), (2, &self.ty), (3, &self.key), (L::IDEMPOTENCY_KEY, &self.idempotency_key)];
        strings
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(tag, s)| encoding::string::encoded_len(*tag, s))
            .sum::<usize>()
            + self.payload.as_ref().map_or(0, |p| encoding::bytes::encoded_len(4, p))
            + self.expected_version.as_ref().map_or(0, |v| encoding::int64::encoded_len(L::EXPECTED_VERSION, v))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

// ---- the fast reader: `None` means "not plain; ask prost" ----

const VARINT: WireType = WireType::Varint;
const FIXED64: WireType = WireType::SixtyFourBit;
const LEN: WireType = WireType::LengthDelimited;

/// What the fast reader carries through one payload.
struct Reading {
    /// Values it may still read: `json::MAX_VALUES` per request.
    budget: usize,
    /// Whether everything read so far was written as the gateway's encoder
    /// (`api::encode`) writes what it read back: false after a shape that
    /// decodes to the same JSON but would reach a client differently (an
    /// entry without key or value, an empty `Value`, a `null_value` or
    /// `bool_value` other than 0 or 1, a key given twice, -0).
    canonical: bool,
}

/// Writes a `Struct`'s fields as a JSON object, keys sorted. A key given
/// twice goes to prost, which keeps the last and still decodes the others.
fn object(buf: &[u8], depth: usize, reading: &mut Reading, out: &mut Vec<u8>) -> Option<()> {
    if depth > FAST_DEPTH {
        return None;
    }
    // The entries are read once. A map whose keys come in order (prost's
    // `BTreeMap` writes them so) is written as it comes; one out of order
    // (Go's protobuf writes a map in its own random order) is sorted first.
    let mut all: SmallVec<[RawEntry<'_>; 16]> = SmallVec::new();
    let mut sorted = true;
    for raw in Entries(buf) {
        let raw = raw?;
        if let Some(last) = all.last() {
            sorted &= last.0.unwrap_or(b"") < raw.0.unwrap_or(b"");
        }
        all.push(raw);
    }
    if !sorted {
        all.sort_unstable_by_key(|(name, _)| name.unwrap_or(b""));
        if all.windows(2).any(|pair| pair[0].0.unwrap_or(b"") == pair[1].0.unwrap_or(b"")) {
            return None;
        }
    }
    members(all.into_iter(), depth, reading, out)
}

/// Writes an object's members in the order given.
fn members<'a>(
    entries: impl Iterator<Item = RawEntry<'a>>,
    depth: usize,
    reading: &mut Reading,
    out: &mut Vec<u8>,
) -> Option<()> {
    out.push(b'{');
    for (i, raw) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let (name, value) = with_defaults(raw, reading);
        entry(name, value, depth, reading, out)?;
    }
    out.push(b'}');
    Some(())
}

/// A map's entries as they come; an entry `None` (as the reader's other
/// functions) for anything but the plain encoding.
struct Entries<'a>(&'a [u8]);

impl<'a> Iterator for Entries<'a> {
    type Item = Option<RawEntry<'a>>;

    fn next(&mut self) -> Option<Option<RawEntry<'a>>> {
        if self.0.is_empty() {
            return None;
        }
        Some(self.entry())
    }
}

impl<'a> Entries<'a> {
    /// The next entry, which is there.
    fn entry(&mut self) -> Option<RawEntry<'a>> {
        if key(&mut self.0)? != (1, LEN) {
            return None;
        }
        let mut entry = delimited(&mut self.0)?;
        let (mut name, mut value) = (None, None);
        while !entry.is_empty() {
            match key(&mut entry)? {
                (1, LEN) if name.is_none() => name = Some(delimited(&mut entry)?),
                (2, LEN) if value.is_none() => value = Some(delimited(&mut entry)?),
                _ => return None,
            }
        }
        Some((name, value))
    }
}

/// An entry's key (its bytes, checked to be UTF-8 when it is written:
/// `string_bytes`; byte order is the keys' order as strings) and value,
/// either of which the encoding may leave out.
type RawEntry<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// An entry with prost's defaults for what it left out: a missing key is
/// "" and a missing value an empty `Value` (null). Leaving either out is
/// not how the gateway's encoder writes it back.
fn with_defaults<'a>((name, value): RawEntry<'a>, reading: &mut Reading) -> (&'a [u8], Option<&'a [u8]>) {
    reading.canonical &= name.is_some() && value.is_some();
    (name.unwrap_or(b""), value)
}

/// One `"key":value` of an object.
fn entry(name: &[u8], value: Option<&[u8]>, depth: usize, reading: &mut Reading, out: &mut Vec<u8>) -> Option<()> {
    string_bytes(name, out)?;
    out.push(b':');
    match value {
        Some(v) => self::value(v, depth, reading, out),
        None => {
            spend(reading)?;
            out.extend_from_slice(b"null");
            Some(())
        }
    }
}

/// A protobuf string's bytes as a JSON string; `None` if they are not UTF-8
/// (prost refuses them too). Printable ASCII other than `"` and `\\` (most
/// keys and many strings) is both valid and written as it is, which one
/// look at its bytes tells; anything else is checked as UTF-8 first. This
/// spared a `from_utf8` per key and string: with `plain`, 3k of a `Set`'s
/// 129.7k instructions (callgrind, BENCHMARKS.md session 22).
fn string_bytes(bytes: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if plain(bytes) {
        quoted(bytes, out);
    } else {
        string(std::str::from_utf8(bytes).ok()?, out);
    }
    Some(())
}

/// Whether every byte is printable ASCII other than `"` and `\\`: written
/// as it is, it is valid UTF-8 and what serde writes. One look eight bytes
/// at a time (`transcode::plain_ascii`); a byte-by-byte look cost 8
/// instructions a byte, 3.2k of a `Set` (callgrind, BENCHMARKS.md session
/// 22).
fn plain(bytes: &[u8]) -> bool {
    super::transcode::plain_ascii(bytes)
}

/// Whether JSON needs none of these bytes escaped: no `"`, `\\` or control
/// character (`transcode::special_byte`, the transcoder's look for one).
fn nothing_to_escape(bytes: &[u8]) -> bool {
    super::transcode::special_byte(bytes, 0) == bytes.len()
}

/// `bytes` between quotes.
fn quoted(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
}

/// A JSON string as serde writes it: `"`, `\\` and the control characters
/// escaped, everything else as it is (serde's own writer for a string that
/// has any of those).
fn string(s: &str, out: &mut Vec<u8>) {
    if nothing_to_escape(s.as_bytes()) {
        quoted(s.as_bytes(), out);
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec does not fail");
    }
}

fn value(mut buf: &[u8], depth: usize, reading: &mut Reading, out: &mut Vec<u8>) -> Option<()> {
    spend(reading)?;
    if buf.is_empty() {
        reading.canonical = false;
        out.extend_from_slice(b"null");
        return Some(());
    }
    match key(&mut buf)? {
        (1, VARINT) => {
            reading.canonical &= varint(&mut buf)? == 0;
            out.extend_from_slice(b"null");
        }
        (2, FIXED64) => {
            let (n, rest) = buf.split_first_chunk::<8>()?;
            buf = rest;
            let n = f64::from_le_bytes(*n);
            // -0 is read as the integer 0, which goes back as +0.
            reading.canonical &= n != 0.0 || n.is_sign_positive();
            // Written as serde writes the number `struct_to_json` makes.
            serde_json::to_writer(&mut *out, &convert::number("", n).ok()?).ok()?;
        }
        (3, LEN) => string_bytes(delimited(&mut buf)?, out)?,
        (4, VARINT) => {
            let b = varint(&mut buf)?;
            reading.canonical &= b <= 1;
            out.extend_from_slice(if b != 0 { b"true" } else { b"false" });
        }
        (5, LEN) => object(delimited(&mut buf)?, depth + 1, reading, out)?,
        (6, LEN) => list(delimited(&mut buf)?, depth + 1, reading, out)?,
        _ => return None,
    }
    // A second field in one `Value` is the oneof's business: prost's.
    buf.is_empty().then_some(())
}

fn list(mut buf: &[u8], depth: usize, reading: &mut Reading, out: &mut Vec<u8>) -> Option<()> {
    if depth > FAST_DEPTH {
        return None;
    }
    out.push(b'[');
    let mut first = true;
    while !buf.is_empty() {
        if key(&mut buf)? != (1, LEN) {
            return None;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        value(delimited(&mut buf)?, depth, reading, out)?;
    }
    out.push(b']');
    Some(())
}

/// One value of `json::MAX_VALUES` per request. Counting a repeated map key
/// twice only sends such a request to prost sooner.
fn spend(reading: &mut Reading) -> Option<()> {
    reading.budget = reading.budget.checked_sub(1)?;
    Some(())
}

/// A field's key. Every key the reader takes (fields 1 to 6 of the wire
/// types it reads) is one byte, read here; a longer one goes to prost's
/// reader, and a wire type the reader never takes ends the look at once.
/// prost's reader, a call through its `Buf`, was 31 instructions a key,
/// about 60 keys a `Set` (callgrind, BENCHMARKS.md session 33).
#[inline(always)]
fn key(buf: &mut &[u8]) -> Option<(u32, WireType)> {
    let Some((&b, rest)) = buf.split_first().filter(|&(&b, _)| b < 0x80) else {
        return long_key(buf);
    };
    *buf = rest;
    let wire = match b & 7 {
        0 => VARINT,
        1 => FIXED64,
        2 => LEN,
        _ => return None,
    };
    Some((u32::from(b >> 3), wire))
}

#[cold]
fn long_key(buf: &mut &[u8]) -> Option<(u32, WireType)> {
    encoding::decode_key(buf).ok()
}

/// A varint: one byte read here (every length under 128), longer ones by
/// prost's reader.
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Option<u64> {
    let Some((&b, rest)) = buf.split_first().filter(|&(&b, _)| b < 0x80) else {
        return long_varint(buf);
    };
    *buf = rest;
    Some(u64::from(b))
}

#[cold]
fn long_varint(buf: &mut &[u8]) -> Option<u64> {
    encoding::decode_varint(buf).ok()
}

fn delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(buf)?).ok()?;
    let (head, rest) = buf.split_at_checked(len)?;
    *buf = rest;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost_types::value::Kind;

    /// A `Value` as raw protobuf, in an order and with repetitions prost's
    /// encoder would not write (unsorted and repeated keys), so both paths
    /// see the encodings other libraries send.
    #[derive(Debug, Clone)]
    enum Wire {
        Null,
        /// `null_value` or `bool_value` with any number, as a careless
        /// encoder might write it.
        NullOf(u64),
        BoolOf(u64),
        Empty,
        Number(f64),
        Str(String),
        Bool(bool),
        Object(Vec<(Option<String>, Option<Wire>)>),
        List(Vec<Wire>),
        /// Two kinds in one `Value`: the last wins (prost), or merges.
        Two(Box<Wire>, Box<Wire>),
    }

    impl Wire {
        fn encode(&self, out: &mut Vec<u8>) {
            match self {
                Wire::Null => encoding::int32::encode(1, &0, out),
                Wire::NullOf(n) => encoding::uint64::encode(1, n, out),
                Wire::BoolOf(n) => encoding::uint64::encode(4, n, out),
                Wire::Empty => {}
                Wire::Number(n) => encoding::double::encode(2, n, out),
                Wire::Str(s) => encoding::string::encode(3, s, out),
                Wire::Bool(b) => encoding::bool::encode(4, b, out),
                Wire::Object(entries) => encoding::bytes::encode(5, &encode_fields(entries), out),
                Wire::List(items) => {
                    let mut body = Vec::new();
                    for item in items {
                        let mut v = Vec::new();
                        item.encode(&mut v);
                        encoding::bytes::encode(1, &v, &mut body);
                    }
                    encoding::bytes::encode(6, &body, out);
                }
                Wire::Two(a, b) => {
                    a.encode(out);
                    b.encode(out);
                }
            }
        }
    }

    fn encode_fields(entries: &[(Option<String>, Option<Wire>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in entries {
            let mut entry = Vec::new();
            if let Some(k) = k {
                encoding::string::encode(1, k, &mut entry);
            }
            if let Some(v) = v {
                let mut body = Vec::new();
                v.encode(&mut body);
                encoding::bytes::encode(2, &body, &mut entry);
            }
            encoding::bytes::encode(1, &entry, &mut out);
        }
        out
    }

    fn wire() -> impl Strategy<Value = Wire> {
        let name = prop_oneof![Just("a".to_owned()), Just("b".to_owned()), "[a-zé]{0,4}"];
        let leaf = prop_oneof![
            Just(Wire::Null),
            Just(Wire::Empty),
            (0u64..3).prop_map(Wire::NullOf),
            (0u64..3).prop_map(Wire::BoolOf),
            any::<f64>().prop_map(Wire::Number),
            (-1e6..1e6f64).prop_map(|n| Wire::Number(n.round())),
            Just(Wire::Number(-0.0)),
            Just(Wire::Number(f64::NAN)),
            "\\PC{0,8}".prop_map(Wire::Str),
            any::<bool>().prop_map(Wire::Bool),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                8 => prop::collection::vec((prop::option::weighted(0.95, name.clone()), prop::option::weighted(0.95, inner.clone())), 0..6)
                    .prop_map(Wire::Object),
                4 => prop::collection::vec(inner.clone(), 0..5).prop_map(Wire::List),
                1 => (inner.clone(), inner).prop_map(|(a, b)| Wire::Two(Box::new(a), Box::new(b))),
            ]
        })
    }

    /// The answer before this module: prost decodes the whole message,
    /// then `struct_to_json`, with the codec's error wording. Objects are
    /// compared as text: `Map`'s equality ignores the order of keys.
    fn through_prost(message: &[u8]) -> Result<Option<String>, (tonic::Code, String)> {
        let s = pb::State::decode(message).map_err(|e| (tonic::Code::InvalidArgument, format!("malformed message: {e}")))?;
        let values = s.values.map(|v| convert::struct_to_json("values", v)).transpose().map_err(|e| {
            let s = to_status(e);
            (s.code(), s.message().to_owned())
        })?;
        Ok(values.map(|v| serde_json::to_string(&v).unwrap()))
    }

    fn through_here(message: &[u8]) -> Result<Option<String>, (tonic::Code, String)> {
        let mut call = SetCall::decode(message).map_err(|e| (tonic::Code::InvalidArgument, format!("malformed message: {e}")))?;
        let values = call.values().map_err(|s| (s.code(), s.message().to_owned()))?;
        Ok(values.map(|v| serde_json::to_string(&v).unwrap()))
    }

    fn state_with(fields: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        encoding::string::encode(1, &"d".to_owned(), &mut m);
        encoding::bytes::encode(4, &fields.to_vec(), &mut m);
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn answers_as_prost_and_struct_to_json(entries in prop::collection::vec((prop::option::weighted(0.95, "[a-c]{0,2}"), prop::option::weighted(0.95, wire())), 0..8)) {
            let message = state_with(&encode_fields(&entries));
            prop_assert_eq!(through_here(&message), through_prost(&message));
        }

        /// The body `values_and_body` hands back reaches a client as the
        /// very values the gateway would have encoded itself.
        #[test]
        fn a_body_handed_back_decodes_as_the_values_encode(entries in prop::collection::vec((prop::option::weighted(0.95, "[a-c]{0,2}"), prop::option::weighted(0.95, wire())), 0..8)) {
            let mut call = SetCall::decode(state_with(&encode_fields(&entries)).as_slice()).unwrap();
            if let Ok(Some((values, Some(body)))) = call.values_and_body() {
                // Compared re-encoded by prost (entries in key order), so
                // that -0 and +0, equal as numbers, differ.
                let sent = prost_types::Struct::decode(body.as_slice()).unwrap().encode_to_vec();
                prop_assert_eq!(sent, convert::json_to_struct(values.into_values()).encode_to_vec());
            }
        }

        #[test]
        fn a_field_given_twice_merges_as_in_prost(a in prop::collection::vec((Just(Some("k".to_owned())), Just(Some(Wire::Object(vec![(Some("x".into()), Some(Wire::Bool(true)))])))), 0..2),
                                                  b in prop::collection::vec((prop::option::of("[kx]"), prop::option::of(wire())), 0..3)) {
            let mut message = state_with(&encode_fields(&a));
            encoding::bytes::encode(4, &encode_fields(&b), &mut message);
            prop_assert_eq!(through_here(&message), through_prost(&message));
        }

        #[test]
        fn any_bytes_answer_as_prost(fields in prop::collection::vec(any::<u8>(), 0..64)) {
            let message = state_with(&fields);
            prop_assert_eq!(through_here(&message), through_prost(&message));
        }
    }

    #[test]
    fn only_a_canonical_payload_is_handed_back() {
        let handed_back = |entries: &[(Option<String>, Option<Wire>)]| {
            let mut call = SetCall::decode(state_with(&encode_fields(entries)).as_slice()).unwrap();
            call.values_and_body().unwrap().unwrap().1.is_some()
        };
        let k = |s: &str| Some(s.to_owned());
        let nested = Wire::Object(vec![(k("x"), Some(Wire::List(vec![Wire::Number(1.5), Wire::Str("s".into())])))]);
        assert!(handed_back(&[(k("b"), Some(Wire::Null)), (k("a"), Some(Wire::Bool(true))), (k("c"), Some(nested))]));
        for odd in [
            vec![(k("a"), Some(Wire::Empty))],
            vec![(None, Some(Wire::Null))],
            vec![(k("a"), None)],
            vec![(k("a"), Some(Wire::NullOf(1)))],
            vec![(k("a"), Some(Wire::BoolOf(2)))],
            vec![(k("a"), Some(Wire::Null)), (k("a"), Some(Wire::Bool(false)))],
            vec![(k("a"), Some(Wire::List(vec![Wire::Empty])))],
            vec![(k("a"), Some(Wire::Number(-0.0)))],
        ] {
            assert!(!handed_back(&odd), "{odd:?} is not how the gateway encodes what it means");
        }
    }

    #[test]
    fn plain_values_take_the_fast_path_with_keys_sorted() {
        let s = prost_types::Struct {
            fields: [("b", Kind::NumberValue(2.0)), ("a", Kind::StringValue("x".into()))]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), prost_types::Value { kind: Some(v) }))
                .collect(),
        };
        let mut encoded = s.encode_to_vec();
        // The same entries again in reverse order, as a Go client may send a map.
        let mut reversed = Vec::new();
        for (k, v) in s.fields.iter().rev() {
            let mut entry = Vec::new();
            encoding::string::encode(1, k, &mut entry);
            encoding::message::encode(2, v, &mut entry);
            encoding::bytes::encode(1, &entry, &mut reversed);
        }
        for payload in [&mut encoded, &mut reversed] {
            let mut reading = Reading { budget: json::MAX_VALUES, canonical: true };
            let mut text = Vec::new();
            object(payload, 0, &mut reading, &mut text).expect("plain encoding takes the fast path");
            assert_eq!(String::from_utf8(text).unwrap(), r#"{"a":"x","b":2}"#);
            assert!(reading.canonical, "a map in any order is canonical");
        }
    }

    /// More entries than the reader gathers on the stack, keys and strings
    /// whose lengths take two bytes, and a key given twice among many: the
    /// same answers as prost, through the fast path where it is plain.
    #[test]
    fn large_maps_and_long_strings_answer_as_prost() {
        let long = "x".repeat(200);
        for n in [15, 16, 17, 40] {
            for reversed in [false, true] {
                let mut entries: Vec<_> =
                    (0..n).map(|i| (Some(format!("{i:03}{long}")), Some(Wire::Str(format!("{i}{long}"))))).collect();
                if reversed {
                    entries.reverse();
                }
                let payload = encode_fields(&entries);
                let mut reading = Reading { budget: json::MAX_VALUES, canonical: true };
                assert!(object(&payload, 0, &mut reading, &mut Vec::new()).is_some(), "{n} entries take the fast path");
                let message = state_with(&payload);
                assert_eq!(through_here(&message), through_prost(&message), "{n} entries, reversed {reversed}");
                entries.push(entries[n / 2].clone());
                let message = state_with(&encode_fields(&entries));
                assert_eq!(through_here(&message), through_prost(&message), "{n} entries and one twice");
            }
        }
    }

    #[test]
    fn strings_are_written_as_serde_writes_them() {
        for s in ["", "plain", "é ✓ 𝄞", "a\"b", "back\\slash", "\u{0}\u{1f}\n\t", "del\u{7f}", "</script>"] {
            let mut out = Vec::new();
            string(s, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(s).unwrap(), "{s:?}");
            let mut out = Vec::new();
            string_bytes(s.as_bytes(), &mut out).expect("UTF-8");
            assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(s).unwrap(), "{s:?} as bytes");
        }
    }

    /// `plain` answers as a look at each byte, wherever in its word a byte
    /// to escape falls.
    #[test]
    fn plain_answers_as_a_look_at_each_byte() {
        let each = |b: &[u8]| b.iter().all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\');
        for len in 0..20 {
            for at in 0..len {
                for odd in (0..=255u8).filter(|&b| !each(&[b])).chain([b' ', b'~', 0x7f, b'!', b'#', b'[', b']']) {
                    let mut bytes = vec![b'x'; len];
                    bytes[at] = odd;
                    assert_eq!(plain(&bytes), each(&bytes), "{odd:#x} at {at} of {len}");
                }
            }
        }
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..40))| {
            prop_assert_eq!(plain(&bytes), each(&bytes));
        });
    }

    /// A key or string that is not UTF-8 is left to prost, which refuses it
    /// as it always has.
    #[test]
    fn a_key_or_string_that_is_not_utf8_is_left_to_prost() {
        for bad in [&b"\xff"[..], b"ok\xc3", b"\xed\xa0\x80"] {
            assert!(string_bytes(bad, &mut Vec::new()).is_none(), "{bad:?}");
            let mut as_key = Vec::new();
            let mut entry = Vec::new();
            encoding::bytes::encode(1, &bad.to_vec(), &mut entry);
            encoding::message::encode(2, &prost_types::Value { kind: Some(Kind::BoolValue(true)) }, &mut entry);
            encoding::bytes::encode(1, &entry, &mut as_key);
            let mut as_string = Vec::new();
            let mut entry = Vec::new();
            encoding::string::encode(1, &"k".to_owned(), &mut entry);
            let mut value = Vec::new();
            encoding::bytes::encode(3, &bad.to_vec(), &mut value);
            encoding::bytes::encode(2, &value, &mut entry);
            encoding::bytes::encode(1, &entry, &mut as_string);
            for payload in [as_key, as_string] {
                let mut reading = Reading { budget: json::MAX_VALUES, canonical: true };
                assert!(object(&payload, 0, &mut reading, &mut Vec::new()).is_none(), "{bad:?} in {payload:?}");
                assert!(prost_types::Struct::decode(payload.as_slice()).is_err(), "prost refuses {bad:?}");
            }
        }
    }

    #[test]
    fn deep_nesting_is_left_to_prost_and_refused_as_before() {
        let mut v = Wire::Bool(true);
        for _ in 0..60 {
            v = Wire::Object(vec![(Some("a".into()), Some(v))]);
        }
        let Wire::Object(entries) = v else { unreachable!() };
        let message = state_with(&encode_fields(&entries));
        let here = through_here(&message);
        assert!(matches!(&here, Err((tonic::Code::InvalidArgument, m)) if m.contains("recursion limit")), "{here:?}");
        assert_eq!(here, through_prost(&message));
    }

    #[test]
    fn the_other_fields_decode_as_the_generated_message() {
        let generated = pb::State {
            domain: "d".into(),
            r#type: "t".into(),
            key: "k".into(),
            values: Some(prost_types::Struct::default()),
            version: 9,
            expected_version: Some(0),
            idempotency_key: "i".into(),
            sequence: 4,
        };
        let mut call = SetCall::decode(generated.encode_to_vec().as_slice()).unwrap();
        assert_eq!((call.domain.as_str(), call.ty.as_str(), call.key.as_str()), ("d", "t", "k"));
        assert_eq!((call.expected_version, call.idempotency_key.as_str()), (Some(0), "i"));
        assert_eq!(call.values().unwrap(), Some(Values::new()));
        // A malformed output-only field is refused, as by the generated message.
        let mut bad = state_with(&[]);
        bad.extend_from_slice(&[5 << 3 | 2, 0]);
        let err = SetCall::decode(bad.as_slice()).unwrap_err().to_string();
        assert_eq!(err, pb::State::decode(bad.as_slice()).unwrap_err().to_string());
        assert!(err.contains("State.version"), "{err}");
        // Encoding round-trips.
        let edit = EditCall::decode(
            pb::EditRequest { domain: "d".into(), expected_version: Some(3), idempotency_key: "x".into(), ..Default::default() }
                .encode_to_vec()
                .as_slice(),
        )
        .unwrap();
        assert_eq!(EditCall::decode(edit.encode_to_vec().as_slice()).unwrap().expected_version, Some(3));
        assert_eq!(edit.encode_to_vec().len(), edit.encoded_len());
    }
}
