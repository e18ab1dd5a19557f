//! The connection to the broker and its lifecycle, driven by the host's
//! calls (a guest runs only inside a call; the host polls every few
//! milliseconds, so `pump` runs often enough to keep the connection alive).
//!
//! - Connect: TCP (wasi:sockets, to the address in `grants.net`), CONNECT
//!   with a clean session and the keepalive, wait for CONNACK, SUBSCRIBE to
//!   the channel's topic at QoS 1, wait for SUBACK. Only then is the
//!   session usable, so a subscription made after `tail` misses nothing
//!   the broker accepts afterwards.
//! - Publish: PUBLISH at QoS 1, then wait (bounded) for its PUBACK: a
//!   publish returns Ok only once the broker has taken the message.
//! - Keepalive: a PINGREQ when nothing was sent for half the keepalive; no
//!   PINGRESP within the keepalive means the connection is dead.
//! - Any I/O or protocol error drops the connection; the next call
//!   connects again (at once the first time, then at most every
//!   `reconnect`), subscribing again on the new connection. Calls made
//!   while disconnected fail fast with `unavailable`.
//! - The socket is non-blocking; every wait is bounded by a deadline well
//!   inside the host's call time limit (a guest blocked in the host is not
//!   interrupted by it).

use crate::codec::{self, Connect, Packet, Publish};
use crate::log::Log;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// How the session is configured (see `config.rs`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: String,
    pub topic: String,
    pub client_id: String,
    pub keep_alive: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
    pub reconnect: Duration,
    pub max_message: usize,
}

/// Bytes read from the socket per pass before the packets are handled.
const READ_CHUNK: usize = 64 * 1024;
/// How long a wait sleeps when the socket has nothing (the host's poll
/// period is 10 ms by default; a broker round trip on loopback ~100 µs).
const NAP: Duration = Duration::from_micros(500);

struct Conn {
    stream: TcpStream,
    rx: Vec<u8>,
    last_sent: Instant,
    /// When the unanswered PINGREQ was sent.
    ping_sent: Option<Instant>,
    next_id: u16,
    /// Packet ids acknowledged since the last `take_ack` (PUBACK, SUBACK).
    acked: Vec<u16>,
    /// The SUBACK return codes of the last SUBACK.
    granted: Vec<u8>,
}

pub struct Session {
    pub settings: Settings,
    conn: Option<Conn>,
    /// No connection attempt before this.
    retry_at: Instant,
    /// Why the last attempt or connection failed.
    last_error: String,
    pub log: Log,
}

type Failure = String;

impl Session {
    pub fn new(settings: Settings, log: Log) -> Session {
        Session { settings, conn: None, retry_at: Instant::now(), last_error: String::new(), log }
    }

    /// A connected session: connects when there is none and an attempt is
    /// due. The error says why not.
    pub fn ensure(&mut self) -> Result<(), Failure> {
        if self.conn.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if now < self.retry_at {
            return Err(format!(
                "not connected to the MQTT broker at {} ({}); next attempt in {} ms",
                self.settings.addr,
                self.last_error,
                (self.retry_at - now).as_millis()
            ));
        }
        match self.connect() {
            Ok(conn) => {
                self.conn = Some(conn);
                crate::info(&format!("connected to the MQTT broker at {}, subscribed to {}", self.settings.addr, self.settings.topic));
                Ok(())
            }
            Err(why) => {
                self.retry_at = Instant::now() + self.settings.reconnect;
                self.last_error = why.clone();
                Err(format!("cannot connect to the MQTT broker at {}: {why}", self.settings.addr))
            }
        }
    }

    fn connect(&mut self) -> Result<Conn, Failure> {
        let s = &self.settings;
        let deadline = Instant::now() + s.connect_timeout;
        let addr = s
            .addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve it (is it in grants.net?): {e}"))?
            .next()
            .ok_or("it resolves to no address")?;
        let stream = TcpStream::connect_timeout(&addr, s.connect_timeout).map_err(|e| format!("TCP connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut conn = Conn {
            stream,
            rx: Vec::new(),
            last_sent: Instant::now(),
            ping_sent: None,
            next_id: 0,
            acked: Vec::new(),
            granted: Vec::new(),
        };
        let hello = Packet::Connect(Connect {
            client_id: s.client_id.clone(),
            keep_alive: s.keep_alive.as_secs().min(u16::MAX as u64) as u16,
            clean_session: true,
            username: s.username.clone(),
            password: s.password.clone(),
        });
        conn.send(&hello, deadline)?;
        // CONNACK is the first packet the broker sends.
        let code = loop {
            // A broker that refuses sends CONNACK and closes at once: read
            // the CONNACK before reporting the close.
            let filled = conn.fill();
            match codec::decode(&conn.rx, s.max_message).map_err(|e| e.to_string())? {
                Some((Packet::ConnAck { code, .. }, used)) => {
                    conn.rx.drain(..used);
                    break code;
                }
                Some((other, _)) => return Err(format!("expected CONNACK, got {other:?}")),
                None => {}
            }
            if !filled? {
                if Instant::now() >= deadline {
                    return Err("no CONNACK in time".into());
                }
                std::thread::sleep(NAP);
            }
        };
        if code != 0 {
            return Err(format!("the broker refused the connection: {} (code {code})", codec::connack_reason(code)));
        }
        let id = conn.id();
        conn.send(&Packet::Subscribe { id, filters: vec![(s.topic.clone(), 1)] }, deadline)?;
        let max = s.max_message;
        conn.wait(&mut self.log, max, deadline, |c| c.take_ack(id))
            .map_err(|e| format!("waiting for SUBACK: {e}"))?;
        match conn.granted.first() {
            Some(0 | 1) => Ok(conn),
            _ => Err(format!("the broker refused the subscription to {} (not authorized?)", s.topic)),
        }
    }

    /// Drops the connection after a failure; the next call reconnects at
    /// once (a broker that went away may well be back), later ones at most
    /// every `reconnect`.
    fn lost(&mut self, why: String) -> Failure {
        if let Some(mut c) = self.conn.take() {
            // Best effort: tell a broker that is still there.
            let _ = c.stream.write(&[0xE0, 0]);
            crate::warn(&format!("lost the MQTT connection to {}: {why}", self.settings.addr));
        }
        self.last_error = why.clone();
        format!("the connection to the MQTT broker at {} failed: {why}", self.settings.addr)
    }

    /// Reads what the broker sent (storing messages, acknowledging them),
    /// keeps the connection alive, and reconnects when one is due.
    pub fn pump(&mut self) -> Result<(), Failure> {
        self.ensure()?;
        let keep_alive = self.settings.keep_alive;
        let max = self.settings.max_message;
        let conn = self.conn.as_mut().expect("ensured");
        let result = (|| {
            // What arrived before the connection ended is still taken.
            let filled = conn.fill();
            conn.handle(&mut self.log, max)?;
            filled?;
            let now = Instant::now();
            if let Some(sent) = conn.ping_sent {
                if now.duration_since(sent) > keep_alive {
                    return Err(format!("no PINGRESP within the keepalive ({} s)", keep_alive.as_secs()));
                }
            } else if !keep_alive.is_zero() && now.duration_since(conn.last_sent) >= keep_alive / 2 {
                conn.send(&Packet::PingReq, now + self.settings.ack_timeout)?;
                conn.ping_sent = Some(now);
            }
            Ok(())
        })();
        result.map_err(|e| self.lost(e))
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub fn publish(&mut self, payload: Vec<u8>) -> Result<(), Failure> {
        self.ensure()?;
        let s = &self.settings;
        let deadline = Instant::now() + s.ack_timeout;
        let max = s.max_message;
        let topic = s.topic.clone();
        let conn = self.conn.as_mut().expect("ensured");
        let id = conn.id();
        let p = Packet::Publish(Publish { topic, qos: 1, id: Some(id), dup: false, retain: false, payload });
        let result = conn
            .send(&p, deadline)
            .and_then(|_| conn.wait(&mut self.log, max, deadline, |c| c.take_ack(id)).map_err(|e| format!("waiting for PUBACK: {e}")));
        result.map_err(|e| self.lost(e))
    }

    /// A round trip to the broker: PINGREQ, wait for PINGRESP.
    pub fn ping(&mut self) -> Result<(), Failure> {
        self.ensure()?;
        let deadline = Instant::now() + self.settings.ack_timeout;
        let max = self.settings.max_message;
        let conn = self.conn.as_mut().expect("ensured");
        let result = (|| {
            if conn.ping_sent.is_none() {
                conn.send(&Packet::PingReq, deadline)?;
                conn.ping_sent = Some(Instant::now());
            }
            conn.wait(&mut self.log, max, deadline, |c| c.ping_sent.is_none())
                .map_err(|e| format!("waiting for PINGRESP: {e}"))
        })();
        result.map_err(|e| self.lost(e))
    }
}

impl Conn {
    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    fn take_ack(&mut self, id: u16) -> bool {
        let before = self.acked.len();
        self.acked.retain(|a| *a != id);
        self.acked.len() != before
    }

    fn send(&mut self, p: &Packet, deadline: Instant) -> Result<(), Failure> {
        let mut bytes = Vec::new();
        codec::encode(p, &mut bytes).map_err(|e| e.to_string())?;
        let mut at = 0;
        while at < bytes.len() {
            match self.stream.write(&bytes[at..]) {
                Ok(0) => return Err("the broker closed the connection".into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err("the broker does not take what is sent (send timed out)".into());
                    }
                    std::thread::sleep(NAP);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("send: {e}")),
            }
        }
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Reads what is available now, up to one chunk; whether anything came.
    fn fill(&mut self) -> Result<bool, Failure> {
        let mut buf = [0u8; 16 * 1024];
        let mut got = 0;
        while got < READ_CHUNK {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err("the broker closed the connection".into()),
                Ok(n) => {
                    self.rx.extend_from_slice(&buf[..n]);
                    got += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
        Ok(got > 0)
    }

    /// Handles every whole packet received: messages on the topic go to
    /// the log (and are acknowledged once there), acknowledgements are
    /// noted.
    fn handle(&mut self, log: &mut Log, max: usize) -> Result<(), Failure> {
        let mut used = 0;
        let mut acks = Vec::new();
        while let Some((p, n)) = codec::decode(&self.rx[used..], max).map_err(|e| e.to_string())? {
            used += n;
            match p {
                Packet::Publish(m) => {
                    // A retained message (someone else's: this guest never
                    // retains) is old news replayed on subscribing.
                    if !m.retain {
                        log.push(m.payload);
                    }
                    if let Some(id) = m.id {
                        acks.push(id);
                    }
                }
                Packet::PubAck { id } => self.acked.push(id),
                Packet::SubAck { id, codes } => {
                    self.granted = codes;
                    self.acked.push(id);
                }
                Packet::PingResp => self.ping_sent = None,
                other => return Err(format!("unexpected from the broker: {other:?}")),
            }
        }
        self.rx.drain(..used);
        let deadline = Instant::now() + Duration::from_secs(1);
        for id in acks {
            self.send(&Packet::PubAck { id }, deadline)?;
        }
        Ok(())
    }

    /// Reads and handles packets until `done` holds or the deadline passes.
    /// A connection that ends right after answering (its last bytes and
    /// the close in one read) still counts the answer.
    fn wait(&mut self, log: &mut Log, max: usize, deadline: Instant, mut done: impl FnMut(&mut Conn) -> bool) -> Result<(), Failure> {
        loop {
            self.handle(log, max)?;
            if done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("timed out".into());
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => std::thread::sleep(NAP),
                Err(e) => {
                    self.handle(log, max)?;
                    return if done(self) { Ok(()) } else { Err(e) };
                }
            }
        }
    }
}
