//! Reads at a store position for providers that cannot answer them
//! natively (the defaults of `Storage::get_at`, `search_states_at` and
//! `seq_at_time`). Every native provider answers `get_at` and
//! `search_states_at` itself; so does a wasm guest built against WIT 0.3.0
//! (`get-at`, `query-states-at`, from its own index, `storage::wasm`). A
//! guest built against 0.2.0 or 0.1.0 has no such calls and gets these
//! (`storage::wasm` calls them explicitly for it), and every wasm guest
//! gets `seq_at_time_by_search`.
//!
//! **Now, without a snapshot** (`bracketed_*`): read the head, the data,
//! and the head again. Seqs are assigned in commit order and every commit
//! raises the head, so equal heads mean no commit landed while the data was
//! read: the answer is exactly the store at that head. Under steady writes
//! the heads rarely agree; after `BRACKET_TRIES` attempts the answer is
//! rebuilt from history at the last head read instead, which is exact by
//! construction.
//!
//! **In the past** (`replay_*`): the feed of the record's domain and type
//! replayed up to the seq, keeping each record's last event. Exact, but its
//! cost grows with that history: providers with an index on (record, seq),
//! 0.3.0 wasm guests included, answer in logarithmic time instead.

use super::{FEED_PAGE, Storage};
use crate::model::{
    Arrival, AtSeq, Event, EventOrder, EventQuery, EventSort, FeedQuery, Filter, RecordRef, Result, Select, State, StateQuery,
    Topic, state_after,
};
use std::collections::BTreeMap;

/// Attempts at a bracketed read before rebuilding from history.
const BRACKET_TRIES: usize = 3;

/// `get` now, with the seq it reflects.
pub async fn bracketed_get<S: Storage + ?Sized>(storage: &S, record: &RecordRef) -> Result<AtSeq<Option<State>>> {
    for _ in 0..BRACKET_TRIES {
        let before = storage.head().await?;
        let value = storage.get(record).await?;
        if storage.head().await? == before {
            return Ok(AtSeq { value, seq: before });
        }
    }
    let seq = storage.head().await?;
    Ok(AtSeq { value: replay_get(storage, record, seq).await?, seq })
}

/// `search_states` now, with the seq it reflects.
pub async fn bracketed_search<S: Storage + ?Sized>(storage: &S, query: &StateQuery) -> Result<AtSeq<Vec<State>>> {
    for _ in 0..BRACKET_TRIES {
        let before = storage.head().await?;
        let value = storage.search_states(query).await?;
        if storage.head().await? == before {
            return Ok(AtSeq { value, seq: before });
        }
    }
    let seq = storage.head().await?;
    Ok(AtSeq { value: replay_search(storage, query, seq).await?, seq })
}

/// Calls `each` with every event of `topic` (and `key`) up to `seq`, in
/// seq order.
async fn replay<S: Storage + ?Sized>(
    storage: &S,
    topic: Topic,
    key: Option<String>,
    seq: u64,
    mut each: impl FnMut(Event),
) -> Result<()> {
    let mut query = FeedQuery {
        topic,
        key,
        after_seq: 0,
        from_time: None,
        limit: FEED_PAGE,
    };
    loop {
        let page = storage.feed(&query).await?;
        let full = page.len() == FEED_PAGE;
        for event in page {
            if event.seq > seq {
                return Ok(());
            }
            query.after_seq = event.seq;
            each(event);
        }
        if !full {
            return Ok(());
        }
    }
}

/// The record as its last event up to `seq` left it.
pub async fn replay_get<S: Storage + ?Sized>(storage: &S, record: &RecordRef, seq: u64) -> Result<Option<State>> {
    let topic = Topic {
        domain: Some(record.domain.clone()),
        ty: Some(record.ty.clone()),
    };
    let mut last = None;
    replay(storage, topic, Some(record.key.clone()), seq, |e| last = Some(e)).await?;
    Ok(last.as_ref().and_then(state_after))
}

/// The query's page over the states its type had after event `seq`.
pub async fn replay_search<S: Storage + ?Sized>(storage: &S, query: &StateQuery, seq: u64) -> Result<Vec<State>> {
    let topic = Topic {
        domain: Some(query.domain.clone()),
        ty: Some(query.ty.clone()),
    };
    let mut states: BTreeMap<String, Option<State>> = BTreeMap::new();
    replay(storage, topic, None, seq, |e| {
        states.insert(e.record.key.clone(), state_after(&e));
    })
    .await?;
    let arrival = if query.sort.is_some() { Arrival::AnyOrder } else { Arrival::InOrder };
    Ok(query.select(arrival, states.values().flatten()).into_iter().cloned().collect())
}

/// `seq_at_time` through an event search: the newest event of the type
/// stamped at or before `time`.
pub async fn seq_at_time_by_search<S: Storage + ?Sized>(storage: &S, domain: &str, ty: &str, time: i64) -> Result<u64> {
    let query = EventQuery {
        domain: domain.to_owned(),
        ty: ty.to_owned(),
        key: None,
        filter: Filter::default(),
        claims_filter: Filter::default(),
        min_time: None,
        max_time: Some(time),
        min_version: None,
        max_version: None,
        limit: 1,
        offset: 0,
        sort: Some(EventSort {
            by: EventOrder::Time,
            descending: true,
        }),
    };
    Ok(storage.search_events(&query).await?.first().map_or(0, |e| e.seq))
}
