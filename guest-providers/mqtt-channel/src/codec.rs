//! The MQTT 3.1.1 packets a channel needs (OASIS standard, section 3):
//! CONNECT/CONNACK, PUBLISH (QoS 0 and 1) and PUBACK, SUBSCRIBE/SUBACK,
//! PINGREQ/PINGRESP and DISCONNECT. Sans-io: `encode` appends a packet's
//! bytes to a buffer, `decode` reads one packet from the front of a buffer
//! or says more bytes are needed. No other packet type is expected from a
//! broker given what this client sends (it subscribes at QoS 1, so QoS 2
//! flows never start); one arriving anyway is a protocol error, not a
//! panic.

use std::fmt;

/// The largest "remaining length" the protocol can express (4 bytes of
/// variable-length encoding).
pub const MAX_REMAINING: usize = 268_435_455;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck { session_present: bool, code: u8 },
    Publish(Publish),
    PubAck { id: u16 },
    Subscribe { id: u16, filters: Vec<(String, u8)> },
    SubAck { id: u16, codes: Vec<u8> },
    PingReq,
    PingResp,
    Disconnect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub client_id: String,
    pub keep_alive: u16,
    pub clean_session: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    /// 0 or 1.
    pub qos: u8,
    /// Present exactly when `qos` is 1.
    pub id: Option<u16>,
    pub dup: bool,
    pub retain: bool,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A packet longer than the reader accepts (or than MQTT allows).
    TooLong(usize),
    /// Bytes that are not a valid packet; says what is wrong.
    Malformed(&'static str),
    /// A packet type this client never expects (e.g. PUBREC).
    Unexpected(u8),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLong(n) => write!(f, "an MQTT packet of {n} bytes is over the limit"),
            Error::Malformed(what) => write!(f, "malformed MQTT packet: {what}"),
            Error::Unexpected(t) => write!(f, "unexpected MQTT packet type {t}"),
        }
    }
}

/// What a CONNACK return code means (3.2.2.3).
pub fn connack_reason(code: u8) -> &'static str {
    match code {
        0 => "accepted",
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), Error> {
    let len = u16::try_from(s.len()).map_err(|_| Error::Malformed("a string over 65535 bytes"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_remaining(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

/// Appends the packet's bytes to `out`.
pub fn encode(p: &Packet, out: &mut Vec<u8>) -> Result<(), Error> {
    let mut body = Vec::new();
    let first = match p {
        Packet::Connect(c) => {
            put_str(&mut body, "MQTT")?;
            body.push(4); // protocol level: 3.1.1
            let mut flags = 0u8;
            if c.clean_session {
                flags |= 0x02;
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.push(flags);
            body.extend_from_slice(&c.keep_alive.to_be_bytes());
            put_str(&mut body, &c.client_id)?;
            if let Some(u) = &c.username {
                put_str(&mut body, u)?;
            }
            if let Some(pw) = &c.password {
                put_str(&mut body, pw)?;
            }
            0x10
        }
        Packet::ConnAck { session_present, code } => {
            body.extend_from_slice(&[*session_present as u8, *code]);
            0x20
        }
        Packet::Publish(m) => {
            if m.qos > 1 || m.id.is_some() != (m.qos == 1) {
                return Err(Error::Malformed("PUBLISH QoS must be 0 (no id) or 1 (with an id)"));
            }
            if m.topic.is_empty() || m.topic.contains(['+', '#', '\0']) {
                return Err(Error::Malformed("a topic name must be non-empty, without + # or NUL"));
            }
            put_str(&mut body, &m.topic)?;
            if let Some(id) = m.id {
                body.extend_from_slice(&id.to_be_bytes());
            }
            body.extend_from_slice(&m.payload);
            0x30 | (m.dup as u8) << 3 | m.qos << 1 | m.retain as u8
        }
        Packet::PubAck { id } => {
            body.extend_from_slice(&id.to_be_bytes());
            0x40
        }
        Packet::Subscribe { id, filters } => {
            if filters.is_empty() {
                return Err(Error::Malformed("SUBSCRIBE needs a topic filter"));
            }
            body.extend_from_slice(&id.to_be_bytes());
            for (f, qos) in filters {
                put_str(&mut body, f)?;
                body.push(*qos);
            }
            0x82
        }
        Packet::SubAck { id, codes } => {
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(codes);
            0x90
        }
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect => 0xE0,
    };
    if body.len() > MAX_REMAINING {
        return Err(Error::TooLong(body.len()));
    }
    out.push(first);
    put_remaining(out, body.len());
    out.extend_from_slice(&body);
    Ok(())
}

/// Reads the packet at the front of `buf`: `Ok(None)` when more bytes are
/// needed, else the packet and how many bytes it took. A packet whose
/// remaining length is over `max` is refused as soon as its header is read.
pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Packet, usize)>, Error> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else { return Ok(None) };
        len |= ((b & 0x7f) as usize) << (7 * (at - 1));
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at == 5 {
            return Err(Error::Malformed("remaining length over 4 bytes"));
        }
    }
    if len > max {
        return Err(Error::TooLong(len));
    }
    let Some(body) = buf.get(at..at + len) else { return Ok(None) };
    let kind = first >> 4;
    let flags = first & 0x0f;
    let mut r = Reader { body, at: 0 };
    let packet = match kind {
        1 => {
            if r.str()? != "MQTT" || r.u8()? != 4 {
                return Err(Error::Malformed("not an MQTT 3.1.1 CONNECT"));
            }
            let f = r.u8()?;
            let keep_alive = r.u16()?;
            let client_id = r.str()?;
            if f & 0x04 != 0 {
                r.str()?; // will topic
                r.bytes()?; // will message
            }
            let username = if f & 0x80 != 0 { Some(r.str()?) } else { None };
            let password = if f & 0x40 != 0 { Some(r.str()?) } else { None };
            Packet::Connect(Connect { client_id, keep_alive, clean_session: f & 0x02 != 0, username, password })
        }
        2 => {
            let ack = r.u8()?;
            Packet::ConnAck { session_present: ack & 1 == 1, code: r.u8()? }
        }
        3 => {
            let qos = (flags >> 1) & 3;
            if qos > 1 {
                return Err(Error::Unexpected(kind)); // QoS 2 is never subscribed to
            }
            let topic = r.str()?;
            let id = if qos == 1 { Some(r.u16()?) } else { None };
            Packet::Publish(Publish {
                topic,
                qos,
                id,
                dup: flags & 0x08 != 0,
                retain: flags & 0x01 != 0,
                payload: r.rest().to_vec(),
            })
        }
        4 => Packet::PubAck { id: r.u16()? },
        8 => {
            let id = r.u16()?;
            let mut filters = Vec::new();
            while !r.done() {
                filters.push((r.str()?, r.u8()?));
            }
            Packet::Subscribe { id, filters }
        }
        9 => Packet::SubAck { id: r.u16()?, codes: r.rest().to_vec() },
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        other => return Err(Error::Unexpected(other)),
    };
    Ok(Some((packet, at + len)))
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let out = self.body.get(self.at..self.at + n).ok_or(Error::Malformed("packet shorter than its fields"))?;
        self.at += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<String, Error> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Error::Malformed("a string that is not UTF-8"))
    }

    fn rest(&mut self) -> &'a [u8] {
        let out = &self.body[self.at..];
        self.at = self.body.len();
        out
    }

    fn done(&self) -> bool {
        self.at >= self.body.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(p: &Packet) -> Vec<u8> {
        let mut out = Vec::new();
        encode(p, &mut out).unwrap();
        out
    }

    fn roundtrip(p: Packet) {
        let b = bytes(&p);
        assert_eq!(decode(&b, MAX_REMAINING).unwrap(), Some((p, b.len())));
    }

    #[test]
    fn every_packet_roundtrips() {
        roundtrip(Packet::Connect(Connect {
            client_id: "c1".into(),
            keep_alive: 30,
            clean_session: true,
            username: Some("u".into()),
            password: Some("p".into()),
        }));
        roundtrip(Packet::Connect(Connect { client_id: "".into(), keep_alive: 0, clean_session: false, username: None, password: None }));
        roundtrip(Packet::ConnAck { session_present: true, code: 0 });
        roundtrip(Packet::Publish(Publish {
            topic: "a/b".into(),
            qos: 1,
            id: Some(7),
            dup: true,
            retain: false,
            payload: b"{}".to_vec(),
        }));
        roundtrip(Packet::Publish(Publish { topic: "a".into(), qos: 0, id: None, dup: false, retain: true, payload: vec![] }));
        roundtrip(Packet::PubAck { id: 65535 });
        roundtrip(Packet::Subscribe { id: 1, filters: vec![("x/#".into(), 1), ("y".into(), 0)] });
        roundtrip(Packet::SubAck { id: 1, codes: vec![1, 0x80] });
        roundtrip(Packet::PingReq);
        roundtrip(Packet::PingResp);
        roundtrip(Packet::Disconnect);
    }

    /// Byte-exact against the examples of the standard.
    #[test]
    fn known_encodings() {
        assert_eq!(bytes(&Packet::PingReq), [0xC0, 0]);
        assert_eq!(bytes(&Packet::Disconnect), [0xE0, 0]);
        assert_eq!(bytes(&Packet::PubAck { id: 0x0102 }), [0x40, 2, 1, 2]);
        let c = Packet::Connect(Connect { client_id: "ab".into(), keep_alive: 60, clean_session: true, username: None, password: None });
        assert_eq!(bytes(&c), [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'a', b'b']);
        let s = Packet::Subscribe { id: 10, filters: vec![("t".into(), 1)] };
        assert_eq!(bytes(&s), [0x82, 6, 0, 10, 0, 1, b't', 1]);
        let p = Packet::Publish(Publish { topic: "t".into(), qos: 1, id: Some(5), dup: false, retain: false, payload: b"x".to_vec() });
        assert_eq!(bytes(&p), [0x32, 6, 0, 1, b't', 0, 5, b'x']);
    }

    #[test]
    fn remaining_length_uses_up_to_four_bytes() {
        for (n, want) in [
            (0usize, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = Vec::new();
            put_remaining(&mut out, n);
            assert_eq!(out, want, "{n}");
        }
        let big = Packet::Publish(Publish { topic: "t".into(), qos: 0, id: None, dup: false, retain: false, payload: vec![7; 200_000] });
        roundtrip(big);
    }

    #[test]
    fn partial_input_asks_for_more() {
        let b = bytes(&Packet::Publish(Publish { topic: "t".into(), qos: 1, id: Some(1), dup: false, retain: false, payload: vec![1; 300] }));
        for cut in 0..b.len() {
            assert_eq!(decode(&b[..cut], MAX_REMAINING).unwrap(), None, "cut at {cut}");
        }
        // Two packets back to back: the first is read, its length reported.
        let mut two = bytes(&Packet::PingResp);
        two.extend(bytes(&Packet::PubAck { id: 3 }));
        assert_eq!(decode(&two, MAX_REMAINING).unwrap(), Some((Packet::PingResp, 2)));
        assert_eq!(decode(&two[2..], MAX_REMAINING).unwrap(), Some((Packet::PubAck { id: 3 }, 4)));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(decode(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], MAX_REMAINING), Err(Error::Malformed("remaining length over 4 bytes")));
        assert_eq!(decode(&[0x30, 0x80, 0x01], 100), Err(Error::TooLong(128)), "refused from the header alone");
        assert_eq!(decode(&[0x40, 1, 0], MAX_REMAINING), Err(Error::Malformed("packet shorter than its fields")));
        assert_eq!(decode(&[0x50, 2, 0, 1], MAX_REMAINING), Err(Error::Unexpected(5)), "PUBREC");
        assert_eq!(decode(&[0x34, 5, 0, 1, b't', 0, 1], MAX_REMAINING), Err(Error::Unexpected(3)), "QoS 2 PUBLISH");
        assert_eq!(decode(&[0x30, 3, 0, 1, 0xff], MAX_REMAINING), Err(Error::Malformed("a string that is not UTF-8")));
        assert_eq!(decode(&[0x00, 0], MAX_REMAINING), Err(Error::Unexpected(0)));
        let mut out = Vec::new();
        let wild = Packet::Publish(Publish { topic: "a/+".into(), qos: 0, id: None, dup: false, retain: false, payload: vec![] });
        assert!(encode(&wild, &mut out).is_err(), "a wildcard is no topic name");
        let no_id = Packet::Publish(Publish { topic: "a".into(), qos: 1, id: None, dup: false, retain: false, payload: vec![] });
        assert!(encode(&no_id, &mut out).is_err());
        assert!(out.is_empty(), "nothing written on error");
    }
}
