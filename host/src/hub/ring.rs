//! A topic's delivery buffer: a bounded broadcast queue that holds only what
//! some receiver has not read yet.
//!
//! `tokio::sync::broadcast` allocates all of its slots when it is created;
//! at 4,096 slots that was ~256 KiB per topic, paid by every idle stream on
//! a topic of its own (2,000 of them held 385 MiB). A `Ring` starts empty,
//! grows with the deliveries its slowest receiver has not read, frees a
//! delivery as soon as every receiver has read it, and gives the room back
//! when it drains. Its promises are those of a broadcast channel:
//! - a receiver sees every delivery pushed after it subscribed, in order,
//!   unless it falls more than `cap` deliveries behind: then it is told how
//!   many it missed (`Lagged`) and continues at the oldest one kept;
//! - after `close`, a receiver reads what is left, then `Closed`.
//!
//! One `std::sync::Mutex` guards the queue: every critical section is a few
//! pointer moves, never an await.

use super::Delivery;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Why a receiver got no delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The receiver fell behind by this many deliveries, which are gone.
    #[error("fell behind by {0} deliveries")]
    Lagged(u64),
    /// The ring was closed and everything in it was read.
    #[error("the feed closed")]
    Closed,
}

/// Room kept when a ring drains; it shrinks back to this from a burst.
const IDLE_ROOM: usize = 16;

pub struct Ring {
    cap: usize,
    queue: Mutex<Queue>,
    /// Woken on every push and on close.
    pushed: Notify,
}

struct Queue {
    slots: VecDeque<Slot>,
    /// Position of `slots[0]`; positions count every delivery ever pushed.
    head: u64,
    receivers: usize,
    closed: bool,
}

struct Slot {
    delivery: Delivery,
    /// Receivers that have not read it yet.
    unread: usize,
}

impl Queue {
    fn tail(&self) -> u64 {
        self.head + self.slots.len() as u64
    }

    /// Frees the deliveries every receiver has read, and the room of a burst
    /// that has drained.
    fn trim(&mut self) {
        while self.slots.front().is_some_and(|s| s.unread == 0) {
            self.slots.pop_front();
            self.head += 1;
        }
        let room = self.slots.capacity();
        if room > IDLE_ROOM && self.slots.len() < room / 4 {
            self.slots.shrink_to((self.slots.len() * 2).max(IDLE_ROOM));
        }
    }
}

impl Ring {
    /// A ring that keeps at most `cap` unread deliveries.
    pub fn new(cap: usize) -> Arc<Ring> {
        Arc::new(Ring {
            cap: cap.max(1),
            queue: Mutex::new(Queue {
                slots: VecDeque::new(),
                head: 0,
                receivers: 0,
                closed: false,
            }),
            pushed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of every delivery pushed from now on.
    pub fn subscribe(self: &Arc<Self>) -> Receiver {
        let mut q = self.lock();
        q.receivers += 1;
        Receiver {
            ring: self.clone(),
            next: q.tail(),
        }
    }

    /// Queues a delivery for every current receiver; with none, drops it.
    /// Past `cap` unread deliveries the oldest is dropped (its laggards are
    /// told when they next read).
    pub fn push(&self, delivery: Delivery) {
        {
            let mut q = self.lock();
            if q.receivers == 0 || q.closed {
                return;
            }
            let unread = q.receivers;
            q.slots.push_back(Slot { delivery, unread });
            if q.slots.len() > self.cap {
                q.slots.pop_front();
                q.head += 1;
            }
        }
        self.pushed.notify_waiters();
    }

    /// Ends the ring: receivers read what is queued, then `Closed`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.pushed.notify_waiters();
    }

    /// Deliveries queued and not yet read by every receiver.
    #[cfg(test)]
    fn queued(&self) -> (usize, usize) {
        let q = self.lock();
        (q.slots.len(), q.slots.capacity())
    }
}

/// One stream's place in a ring.
pub struct Receiver {
    ring: Arc<Ring>,
    /// Position of the next delivery to read.
    next: u64,
}

impl Receiver {
    /// The next delivery, waiting for one if none is queued.
    pub async fn recv(&mut self) -> Result<Delivery, RecvError> {
        loop {
            // Registered before the queue is looked at, so a push between
            // the look and the wait still wakes this receiver.
            let pushed = self.ring.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            if let Some(outcome) = try_recv(&self.ring, &mut self.next) {
                return outcome;
            }
            pushed.await;
        }
    }
}

/// A queued delivery for the receiver at `next`, a lag, the end, or `None`
/// when there is nothing yet. (A function of the ring, not of `Receiver`,
/// so the wait registered on the ring can stay borrowed meanwhile.)
fn try_recv(ring: &Ring, next: &mut u64) -> Option<Result<Delivery, RecvError>> {
    let mut q = ring.lock();
    if *next < q.head {
        let missed = q.head - *next;
        *next = q.head;
        return Some(Err(RecvError::Lagged(missed)));
    }
    let index = (*next - q.head) as usize;
    if let Some(slot) = q.slots.get_mut(index) {
        slot.unread -= 1;
        let delivery = slot.delivery.clone();
        *next += 1;
        if index == 0 {
            q.trim();
        }
        return Some(Ok(delivery));
    }
    q.closed.then_some(Err(RecvError::Closed))
}

impl Drop for Receiver {
    /// Marks everything this receiver had not read as read, so it is freed.
    fn drop(&mut self) {
        let mut q = self.ring.lock();
        q.receivers -= 1;
        let from = self.next.saturating_sub(q.head) as usize;
        for slot in q.slots.iter_mut().skip(from) {
            slot.unread -= 1;
        }
        q.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::SharedEvent;
    use crate::model::{Event, EventKind, RecordRef};

    fn delivery(seq: u64) -> Delivery {
        Delivery {
            event: SharedEvent::new(Event {
                id: seq.to_string(),
                seq,
                record: RecordRef {
                    domain: "d".into(),
                    ty: "t".into(),
                    key: "k".into(),
                },
                values: None,
                claims: Default::default(),
                time: 0,
                version: seq,
                kind: EventKind::Set,
                method: String::new(),
            }),
            watermark: 0,
        }
    }

    async fn seqs(rx: &mut Receiver, n: usize) -> Vec<u64> {
        let mut out = vec![];
        for _ in 0..n {
            out.push(rx.recv().await.unwrap().event.seq);
        }
        out
    }

    #[tokio::test]
    async fn every_receiver_gets_what_was_pushed_after_it_subscribed() {
        let ring = Ring::new(8);
        ring.push(delivery(1)); // no receiver: dropped
        let mut a = ring.subscribe();
        ring.push(delivery(2));
        let mut b = ring.subscribe();
        ring.push(delivery(3));
        assert_eq!(seqs(&mut a, 2).await, vec![2, 3]);
        assert_eq!(seqs(&mut b, 1).await, vec![3]);
        assert_eq!(ring.queued().0, 0, "read by everyone, so freed");
    }

    #[tokio::test]
    async fn a_laggard_is_told_how_many_it_missed_and_continues() {
        let ring = Ring::new(3);
        let mut slow = ring.subscribe();
        for seq in 1..=5 {
            ring.push(delivery(seq));
        }
        assert_eq!(slow.recv().await.unwrap_err(), RecvError::Lagged(2));
        assert_eq!(seqs(&mut slow, 3).await, vec![3, 4, 5]);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_on_push_and_on_close() {
        let ring = Ring::new(4);
        let mut rx = ring.subscribe();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await.map(|d| d.event.seq);
            let end = rx.recv().await.map(|d| d.event.seq);
            (first, end)
        });
        tokio::task::yield_now().await;
        ring.push(delivery(7));
        ring.close();
        assert_eq!(waiting.await.unwrap(), (Ok(7), Err(RecvError::Closed)));
    }

    #[tokio::test]
    async fn a_dropped_receiver_releases_what_it_left_unread() {
        let ring = Ring::new(1024);
        let mut fast = ring.subscribe();
        let slow = ring.subscribe();
        for seq in 0..1000 {
            ring.push(delivery(seq));
        }
        assert_eq!(seqs(&mut fast, 1000).await.len(), 1000);
        assert_eq!(ring.queued().0, 1000, "the slow receiver has read none");
        drop(slow);
        let (len, room) = ring.queued();
        assert_eq!(len, 0);
        assert!(room <= IDLE_ROOM, "the drained burst's room is given back ({room})");
    }

    #[test]
    fn an_idle_ring_is_small() {
        let ring = Ring::new(4096);
        let _rx = ring.subscribe();
        assert_eq!(ring.queued(), (0, 0), "nothing is allocated before a delivery");
    }
}
