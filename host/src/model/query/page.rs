//! Choosing a page of results in bounded memory.
//!
//! A search answers the items its query keeps, in the query's order, after
//! `offset`, up to `limit`. Providers stream candidates (a superset is fine)
//! into a `Page`, which never holds more than `offset + limit` of them,
//! however many the backend returns: a sorted search over a large type costs
//! memory for one page, not for the type (issue 17, point 8).
//!
//! - Candidates that arrive in the query's order (`Arrival::InOrder`, e.g.
//!   states by key from an index scan, events by seq) are counted past the
//!   offset and then kept until the page is full; `offer` then says stop.
//!   Nothing before the offset is held.
//! - Candidates in any other order (`Arrival::AnyOrder`, e.g. a sort on a
//!   field of the values) go through a max-heap of the `offset + limit`
//!   smallest so far: a candidate enters only by replacing the largest.
//!   The order is total (ties are broken by key or seq), so the page is the
//!   same whatever order the candidates came in.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A query that chooses a page of items.
pub trait Select {
    type Item;

    /// Whether an item belongs to the result at all.
    fn keeps(&self, item: &Self::Item) -> bool;

    /// The result's order; total over distinct items.
    fn order(&self, a: &Self::Item, b: &Self::Item) -> Ordering;

    /// `(offset, limit)`.
    fn window(&self) -> (usize, usize);

    /// A page to stream candidates into.
    fn page<T: Borrow<Self::Item>>(&self, arrival: Arrival) -> Page<'_, Self, T>
    where
        Self: Sized,
    {
        Page::new(self, arrival)
    }

    /// The page chosen from `candidates`.
    fn select<T: Borrow<Self::Item>>(&self, arrival: Arrival, candidates: impl IntoIterator<Item = T>) -> Vec<T>
    where
        Self: Sized,
    {
        let infallible = candidates.into_iter().map(Ok::<T, std::convert::Infallible>);
        match self.try_select(arrival, infallible) {
            Ok(page) => page,
        }
    }

    /// The page chosen from `candidates` as a backend reads them: the first
    /// error ends the search, and reading stops once the page is full.
    fn try_select<T: Borrow<Self::Item>, E>(
        &self,
        arrival: Arrival,
        candidates: impl IntoIterator<Item = Result<T, E>>,
    ) -> Result<Vec<T>, E>
    where
        Self: Sized,
    {
        let mut page = self.page(arrival);
        for c in candidates {
            if !page.offer(c?) {
                break;
            }
        }
        Ok(page.finish())
    }
}

/// How a provider's candidates arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Already in the query's order.
    InOrder,
    /// In any order.
    AnyOrder,
}

/// The page being chosen; see the module comment.
pub struct Page<'q, Q: Select, T: Borrow<Q::Item> = <Q as Select>::Item> {
    query: &'q Q,
    arrival: Arrival,
    /// Kept candidates that passed the offset already skipped (`InOrder`).
    skipped: usize,
    kept: BinaryHeap<Ranked<'q, Q, T>>,
    /// Most candidates ever kept at once.
    capacity: usize,
}

impl<'q, Q: Select, T: Borrow<Q::Item>> Page<'q, Q, T> {
    pub fn new(query: &'q Q, arrival: Arrival) -> Self {
        let (offset, limit) = query.window();
        let capacity = match arrival {
            Arrival::InOrder => limit,
            Arrival::AnyOrder => offset.saturating_add(limit),
        };
        Page {
            query,
            arrival,
            skipped: 0,
            kept: BinaryHeap::new(),
            capacity,
        }
    }

    /// Offers one candidate; false once no later candidate can change the
    /// page (so the provider may stop reading).
    pub fn offer(&mut self, candidate: T) -> bool {
        if self.is_done() {
            return false;
        }
        if !self.query.keeps(candidate.borrow()) {
            return true;
        }
        let (offset, _) = self.query.window();
        if self.arrival == Arrival::InOrder && self.skipped < offset {
            self.skipped += 1;
            return true;
        }
        let ranked = Ranked {
            item: candidate,
            query: self.query,
        };
        if self.kept.len() < self.capacity {
            self.kept.push(ranked);
        } else if let Some(mut largest) = self.kept.peek_mut()
            && ranked < *largest
        {
            *largest = ranked;
        }
        !self.is_done()
    }

    fn is_done(&self) -> bool {
        self.capacity == 0 || (self.arrival == Arrival::InOrder && self.kept.len() == self.capacity)
    }

    /// The last item of the page as chosen so far, once the page holds
    /// as many as it can: a later candidate enters only if it sorts before
    /// this one.
    pub fn worst(&self) -> Option<&T> {
        if self.kept.len() < self.capacity {
            return None;
        }
        self.kept.peek().map(|r| &r.item)
    }

    /// How many candidates the page holds now.
    pub fn held(&self) -> usize {
        self.kept.len()
    }

    /// The page, in the query's order.
    pub fn finish(self) -> Vec<T> {
        let skip = match self.arrival {
            Arrival::InOrder => 0,
            Arrival::AnyOrder => self.query.window().0,
        };
        self.kept.into_sorted_vec().into_iter().skip(skip).map(|r| r.item).collect()
    }
}

/// A candidate ordered by its query.
struct Ranked<'q, Q: Select, T> {
    item: T,
    query: &'q Q,
}

impl<Q: Select, T: Borrow<Q::Item>> Ord for Ranked<'_, Q, T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.query.order(self.item.borrow(), other.item.borrow())
    }
}

impl<Q: Select, T: Borrow<Q::Item>> PartialOrd for Ranked<'_, Q, T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<Q: Select, T: Borrow<Q::Item>> PartialEq for Ranked<'_, Q, T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<Q: Select, T: Borrow<Q::Item>> Eq for Ranked<'_, Q, T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Filter, RecordRef, Sort, State, StateQuery};
    use serde_json::json;

    fn state(key: &str, n: i64) -> State {
        State {
            record: RecordRef::parse("d", "t", key).unwrap(),
            values: json!({"n": n, "even": n % 2 == 0}).as_object().unwrap().clone(),
            version: 1,
        }
    }

    fn query(filter: &str, sort: Option<&str>, offset: usize, limit: usize) -> StateQuery {
        StateQuery {
            domain: "d".into(),
            ty: "t".into(),
            filter: Filter::parse("query_string", filter).unwrap(),
            sort: sort.map(|p| Sort::parse("sort_by", p, true).unwrap().unwrap()),
            limit,
            offset,
        }
    }

    /// 5,000 candidates in a scrambled order, as a backend may stream them.
    fn candidates() -> Vec<State> {
        (0..5000).map(|i| (i * 7919) % 5000).map(|n| state(&format!("k{n:05}"), n)).collect()
    }

    /// The reference answer: everything kept, fully sorted, then paged.
    fn reference(q: &StateQuery, all: &[State]) -> Vec<String> {
        let mut kept: Vec<&State> = all.iter().filter(|s| q.keeps(s)).collect();
        kept.sort_by(|a, b| q.order(a, b));
        kept.iter().skip(q.offset).take(q.limit).map(|s| s.record.key.clone()).collect()
    }

    #[test]
    fn a_sorted_page_holds_at_most_offset_plus_limit() {
        let all = candidates();
        for (offset, limit) in [(0, 1), (10, 5), (0, 100), (4990, 20), (6000, 3)] {
            let q = query(r#"{"even": true}"#, Some("n"), offset, limit);
            let mut page = q.page::<&State>(Arrival::AnyOrder);
            let mut most = 0;
            for s in &all {
                assert!(page.offer(s), "a page in any order reads every candidate");
                most = most.max(page.held());
            }
            assert!(most <= offset + limit, "held {most} for offset {offset} + limit {limit}");
            let got: Vec<String> = page.finish().into_iter().map(|s| s.record.key.clone()).collect();
            assert_eq!(got, reference(&q, &all), "offset {offset}, limit {limit}");
        }
    }

    #[test]
    fn an_ordered_page_skips_the_offset_and_stops_when_full() {
        let mut all = candidates();
        all.sort_by(|a, b| a.record.key.cmp(&b.record.key));
        let q = query(r#"{"even": true}"#, None, 100, 10);
        let mut page = q.page::<&State>(Arrival::InOrder);
        let (mut read, mut most) = (0, 0);
        for s in &all {
            read += 1;
            let more = page.offer(s);
            most = most.max(page.held());
            if !more {
                break;
            }
        }
        assert!(most <= 10, "nothing before the offset is held: {most}");
        // Even n are kept: the page's last item, the 110th kept, is n = 218.
        assert_eq!(read, 219, "reading stops at the page's last item");
        let got: Vec<String> = page.finish().into_iter().map(|s| s.record.key.clone()).collect();
        assert_eq!(got, reference(&q, &all));
    }

    #[test]
    fn select_agrees_with_a_full_sort_whatever_the_arrival_order() {
        let all = candidates();
        let q = query("", Some("n"), 3, 4);
        let got: Vec<String> = q.select(Arrival::AnyOrder, all.iter()).into_iter().map(|s| s.record.key.clone()).collect();
        assert_eq!(got, ["k04996", "k04995", "k04994", "k04993"]);
        assert!(query("", None, 0, 0).select(Arrival::AnyOrder, all.iter()).is_empty(), "limit 0 is an empty page");
    }
}
