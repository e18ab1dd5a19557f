//! The messages received from the broker, kept until the host has polled
//! past them, and the cursors the host polls from.
//!
//! Invariants:
//! - Messages are numbered in arrival order from 0 within one instance
//!   (an *epoch*, random per instance); a cursor is `<epoch hex>:<next>`.
//! - At most `cap` messages and `cap_bytes` bytes of them are held (the
//!   instance's memory is capped by the host): when full, the oldest is dropped
//!   (and counted) rather than blocking the socket, whose PINGRESPs keep
//!   the connection alive. The host polls every few milliseconds, so this
//!   happens only when the host has stalled; the gateway's storage sweep
//!   makes up for a lost broadcast.
//! - A cursor of another epoch (the host's cursor from before a reload or
//!   a discarded instance) reads from the oldest message held: everything
//!   this instance received is after it.
//! - Reading from a cursor forgets the messages before it: the host polls
//!   from one cursor that only moves forward.

use std::collections::VecDeque;

pub struct Log {
    epoch: u64,
    /// The number of `held[0]`.
    first: u64,
    held: VecDeque<Vec<u8>>,
    cap: usize,
    cap_bytes: usize,
    /// The bytes of the held messages.
    bytes: usize,
    /// Messages dropped because the log was full.
    pub dropped: u64,
}

impl Log {
    pub fn new(epoch: u64, cap: usize, cap_bytes: usize) -> Log {
        Log { epoch, first: 0, held: VecDeque::new(), cap: cap.max(1), cap_bytes, bytes: 0, dropped: 0 }
    }

    pub fn push(&mut self, message: Vec<u8>) {
        self.bytes += message.len();
        self.held.push_back(message);
        // The newest message always stays (it is at most the largest
        // packet accepted).
        while self.held.len() > 1 && (self.held.len() > self.cap || self.bytes > self.cap_bytes) {
            self.pop();
            self.dropped += 1;
        }
    }

    fn pop(&mut self) {
        if let Some(m) = self.held.pop_front() {
            self.bytes -= m.len();
            self.first += 1;
        }
    }

    fn end(&self) -> u64 {
        self.first + self.held.len() as u64
    }

    /// A cursor after every message received so far.
    pub fn tail(&self) -> String {
        self.cursor(self.end())
    }

    fn cursor(&self, next: u64) -> String {
        format!("{:x}:{next}", self.epoch)
    }

    /// Up to `max` messages after `cursor`, and the cursor after them.
    pub fn read(&mut self, cursor: &str, max: usize) -> Result<(Vec<Vec<u8>>, String), String> {
        let (epoch, next) = cursor
            .split_once(':')
            .and_then(|(e, n)| Some((u64::from_str_radix(e, 16).ok()?, n.parse::<u64>().ok()?)))
            .ok_or_else(|| format!("not a cursor of this channel: {cursor:?}"))?;
        let from = if epoch == self.epoch { next.clamp(self.first, self.end()) } else { self.first };
        // Forget what the host has read.
        while self.first < from {
            self.pop();
        }
        let n = max.min(self.held.len());
        let out: Vec<Vec<u8>> = self.held.iter().take(n).cloned().collect();
        Ok((out, self.cursor(from + n as u64)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: u8) -> Vec<u8> {
        vec![i]
    }

    #[test]
    fn reads_what_arrived_after_the_cursor_in_order() {
        let mut log = Log::new(0xab, 100, 1 << 20);
        log.push(m(0));
        let c = log.tail();
        assert_eq!(c, "ab:1");
        let (got, c2) = log.read(&c, 10).unwrap();
        assert!(got.is_empty());
        assert_eq!(c2, c);
        for i in 1..=5 {
            log.push(m(i));
        }
        let (got, c3) = log.read(&c, 3).unwrap();
        assert_eq!(got, [m(1), m(2), m(3)]);
        let (got, c4) = log.read(&c3, 10).unwrap();
        assert_eq!(got, [m(4), m(5)]);
        assert_eq!(c4, log.tail());
        assert_eq!(log.held.len(), 2, "kept until the host polls past them");
        assert!(log.read(&c4, 10).unwrap().0.is_empty());
        assert!(log.held.is_empty(), "read messages are forgotten once polled past");
    }

    #[test]
    fn bounded_by_dropping_the_oldest() {
        let mut log = Log::new(1, 3, 1 << 20);
        let c = log.tail();
        for i in 0..5 {
            log.push(m(i));
        }
        assert_eq!(log.dropped, 2);
        let (got, _) = log.read(&c, 10).unwrap();
        assert_eq!(got, [m(2), m(3), m(4)], "a cursor behind the log skips what was dropped");
    }

    #[test]
    fn bounded_in_bytes_too() {
        let mut log = Log::new(1, 100, 10);
        let c = log.tail();
        for i in 0..4 {
            log.push(vec![i; 4]);
        }
        assert_eq!((log.dropped, log.bytes), (2, 8));
        let (got, _) = log.read(&c, 10).unwrap();
        assert_eq!(got, [vec![2; 4], vec![3; 4]]);
        log.push(vec![9; 50]);
        assert_eq!(log.held.len(), 1, "a message over the cap alone is still kept");
    }

    #[test]
    fn a_cursor_of_another_instance_reads_everything_held() {
        let mut log = Log::new(2, 10, 1 << 20);
        log.push(m(9));
        let (got, c) = log.read("1:500", 10).unwrap();
        assert_eq!(got, [m(9)]);
        assert_eq!(c, "2:1");
        assert!(log.read("nonsense", 1).unwrap_err().contains("nonsense"));
        // A cursor ahead of the log (impossible from this instance) reads nothing.
        let (got, c) = log.read("2:99", 10).unwrap();
        assert!(got.is_empty());
        assert_eq!(c, "2:1");
    }
}
