//! A channel that misbehaves on command, to test the hub's repairs (gap
//! fills, duplicate drops, the storage sweep) without killing a broker.
//!
//! A *delivery* is one published event reaching one subscription whose
//! topic matches it. What happens to each delivery is decided in publish
//! order: by the fault queued with `on_next_publish` (for all deliveries of
//! that publish), else by the standing `rule` (everything passes until a
//! test sets one; a rule may draw from a seeded RNG). A held delivery waits
//! until `release` hands it over in the order the test names: that is a
//! delay, and releasing it after later events is a reorder.
//!
//! Nothing depends on timing. A delivery is queued on its subscription
//! inside `publish`, so a subscriber sees deliveries in the order the test
//! caused them; `settled` waits until every subscriber has taken everything
//! queued for it and come back for more, so whatever it does per delivery
//! (the hub: dedup, gap fill, counting) is done.
//!
//! With its default rule (pass everything) it is a correct channel: the
//! conformance suite runs against it that way (see `hub_repairs`).

use async_trait::async_trait;
use rand::{SeedableRng, seq::SliceRandom};
use stategate::channel::{Channel, Subscription};
use stategate::model::{Event, Result, Topic};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the channel does with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Delivered once, now.
    Pass,
    /// Never delivered.
    Drop,
    /// Delivered twice in a row.
    Duplicate,
    /// Kept back until `release`.
    Hold,
}

/// The order in which `release` hands held deliveries over.
#[derive(Debug, Clone, Copy)]
pub enum Order {
    AsHeld,
    Reversed,
    /// A permutation drawn from this seed.
    Shuffled(u64),
}

/// What the channel did so far, counted per delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Deliveries handed to subscriptions: a duplicated one counts twice, a
    /// held one once when released.
    pub delivered: u64,
    pub dropped: u64,
    /// Deliveries handed over twice (each also counts 2 in `delivered`).
    pub duplicated: u64,
    /// Deliveries held (released or not).
    pub held: u64,
}

/// Decides the fault of a delivery that no queued fault covers.
pub type Rule = Box<dyn FnMut(&Event, &Topic) -> Fault + Send>;

pub struct ChaosChannel {
    state: Mutex<State>,
}

struct State {
    next: VecDeque<Fault>,
    rule: Rule,
    outlets: Vec<Arc<Outlet>>,
    held: Vec<(Arc<Outlet>, Event)>,
    tally: Tally,
}

/// The sending end of one subscription.
struct Outlet {
    topic: Topic,
    tx: mpsc::UnboundedSender<Event>,
    gauge: Arc<Gauge>,
}

/// How far a subscriber is through its queue.
#[derive(Default)]
struct Gauge {
    /// Deliveries queued and not yet taken.
    queued: AtomicU64,
    /// The subscriber asked for the next delivery and found none (so it is
    /// done with the ones before). Cleared before `queued` drops, so that
    /// `queued == 0 && waiting` never shows while a delivery is in hand.
    waiting: AtomicBool,
}

impl Gauge {
    fn settled(&self) -> bool {
        self.queued.load(SeqCst) == 0 && self.waiting.load(SeqCst)
    }
}

impl Outlet {
    fn hand_over(&self, event: Event, tally: &mut Tally) {
        self.gauge.queued.fetch_add(1, SeqCst);
        if self.tx.send(event).is_ok() {
            tally.delivered += 1;
        } else {
            // The subscriber went away; nothing is queued.
            self.gauge.queued.fetch_sub(1, SeqCst);
        }
    }
}

impl ChaosChannel {
    pub fn new() -> Self {
        ChaosChannel {
            state: Mutex::new(State {
                next: VecDeque::new(),
                rule: Box::new(|_, _| Fault::Pass),
                outlets: Vec::new(),
                held: Vec::new(),
                tally: Tally::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every delivery of the next publish not yet covered gets `fault`.
    pub fn on_next_publish(&self, fault: Fault) {
        self.state().next.push_back(fault);
    }

    /// The fault of each delivery no `on_next_publish` covers.
    pub fn rule(&self, rule: impl FnMut(&Event, &Topic) -> Fault + Send + 'static) {
        self.state().rule = Box::new(rule);
    }

    /// Hands every held delivery over, in `order`; returns how many.
    pub fn release(&self, order: Order) -> usize {
        let mut state = self.state();
        let mut held = std::mem::take(&mut state.held);
        match order {
            Order::AsHeld => {}
            Order::Reversed => held.reverse(),
            Order::Shuffled(seed) => held.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed)),
        }
        let n = held.len();
        for (outlet, event) in held {
            outlet.hand_over(event, &mut state.tally);
        }
        n
    }

    pub fn tally(&self) -> Tally {
        self.state().tally
    }

    /// Live subscriptions (the hub keeps one while any stream is live).
    pub fn subscriptions(&self) -> usize {
        self.state().outlets.iter().filter(|o| !o.tx.is_closed()).count()
    }

    /// Waits until every live subscriber has taken all its deliveries and
    /// asked for more. A wait for progress, not a measurement: it fails only
    /// if a subscriber is stuck for half a minute.
    pub async fn settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let settled = self.state().outlets.iter().filter(|o| !o.tx.is_closed()).all(|o| o.gauge.settled());
            if settled {
                return;
            }
            assert!(Instant::now() < deadline, "a subscriber did not take its deliveries within 30 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[async_trait]
impl Channel for ChaosChannel {
    fn name(&self) -> &str {
        "chaos"
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        let mut state = self.state();
        state.outlets.retain(|o| !o.tx.is_closed());
        let queued = state.next.pop_front();
        let State { rule, outlets, held, tally, .. } = &mut *state;
        for outlet in outlets.iter().filter(|o| o.topic.matches(&event.record)) {
            match queued.unwrap_or_else(|| rule(event, &outlet.topic)) {
                Fault::Pass => outlet.hand_over(event.clone(), tally),
                Fault::Drop => tally.dropped += 1,
                Fault::Duplicate => {
                    tally.duplicated += 1;
                    outlet.hand_over(event.clone(), tally);
                    outlet.hand_over(event.clone(), tally);
                }
                Fault::Hold => {
                    tally.held += 1;
                    held.push((outlet.clone(), event.clone()));
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<Subscription> {
        let (tx, rx) = mpsc::unbounded_channel();
        let gauge = Arc::new(Gauge::default());
        self.state().outlets.push(Arc::new(Outlet { topic: topic.clone(), tx, gauge: gauge.clone() }));
        Ok(Box::pin(Inlet { rx, gauge }))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// The receiving end of one subscription; keeps its `Gauge` current.
struct Inlet {
    rx: mpsc::UnboundedReceiver<Event>,
    gauge: Arc<Gauge>,
}

impl futures::Stream for Inlet {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                self.gauge.waiting.store(false, SeqCst);
                self.gauge.queued.fetch_sub(1, SeqCst);
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                self.gauge.waiting.store(true, SeqCst);
                Poll::Pending
            }
        }
    }
}
