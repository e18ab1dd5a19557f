"""A stategate storage provider in Python (world `storage-provider`,
wit/storage.wit): where events and current states live.

This one keeps everything in the instance's memory (lost when the gateway
stops): a starting point that shows the contract. Searches return supersets
(every state or event of the type): the host applies the filter, sort,
offset and limit itself. Reads as of an event (`get_at`,
`query_states_at`) bisect each record's events. Check it with
`stategate guest check <file.wasm>`.
"""

import bisect

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.storage import Appended, EventPage, Expect_Absent, Expect_Version, StatePage
from wit_world.imports.types import (
    Event,
    ProviderError_IdempotencyMismatch,
    ProviderError_NotFound,
    ProviderError_VersionConflict,
    State,
)

events = []  # every event, seq = index + 1
states = {}  # (domain, ty, key) -> State
versions = {}  # (domain, ty, key) -> last version, deleted records too
idempotency = {}  # key -> (fingerprint, index of its event)
history = {}  # (domain, ty, key) -> indexes of its events, in seq order


def key_of(r):
    return (r.domain, r.ty, r.key)


def state_at(k, seq):
    """The state the record's last event with seq <= `seq` left (None if it
    had none, or that one deleted it): event i has seq i + 1."""
    lines = history.get(k, [])
    n = bisect.bisect_right(lines, seq - 1)
    if n == 0:
        return None
    e = events[lines[n - 1]]
    if e.values is None:
        return None
    return State(record=e.record, values=e.values, version=e.version)


class Storage(exports.Storage):
    def append(self, req):
        if req.idempotency is not None and req.idempotency.key in idempotency:
            fingerprint, at = idempotency[req.idempotency.key]
            earlier = events[at]
            if earlier.time >= req.idempotency.not_before:
                if fingerprint != req.idempotency.fingerprint:
                    raise Err(ProviderError_IdempotencyMismatch())
                return Appended(event=earlier, replayed=True)
        k = key_of(req.record)
        current = states[k].version if k in states else None
        if isinstance(req.expect, Expect_Absent) and current is not None:
            raise Err(ProviderError_VersionConflict(current))
        if isinstance(req.expect, Expect_Version) and current != req.expect.value:
            raise Err(ProviderError_VersionConflict(current))
        if req.values is None and current is None:
            raise Err(ProviderError_NotFound("/".join(k) + " has no state"))
        version = versions.get(k, 0) + 1
        event = Event(
            id=req.id,
            seq=len(events) + 1,
            record=req.record,
            values=req.values,
            claims=req.claims,
            time=req.time,
            version=version,
            kind=req.kind,
            method=req.method,
        )
        versions[k] = version
        history.setdefault(k, []).append(len(events))
        if req.values is None:
            states.pop(k, None)
        else:
            states[k] = State(record=req.record, values=req.values, version=version)
        if req.idempotency is not None:
            idempotency[req.idempotency.key] = (req.idempotency.fingerprint, len(events))
        events.append(event)
        return Appended(event=event, replayed=False)

    def get(self, record):
        return states.get(key_of(record))

    def search_states(self, domain, ty):
        return [s for (d, t, _), s in sorted(states.items()) if d == domain and t == ty]

    def search_events(self, scan):
        return [
            e
            for e in events
            if e.record.domain == scan.domain
            and e.record.ty == scan.ty
            and (scan.key is None or e.record.key == scan.key)
            and (scan.min_time is None or e.time >= scan.min_time)
            and (scan.max_time is None or e.time <= scan.max_time)
        ]

    def get_event(self, id):
        return next((e for e in events if e.id == id), None)

    def feed(self, q):
        out = []
        for e in events[q.after_seq :]:
            if len(out) >= q.limit:
                break
            if (
                (q.domain is None or e.record.domain == q.domain)
                and (q.ty is None or e.record.ty == q.ty)
                and (q.key is None or e.record.key == q.key)
                and (q.from_time is None or e.time >= q.from_time)
            ):
                out.append(e)
        return out

    def head(self):
        return len(events)

    def ping(self):
        pass

    def query_states(self, q):
        return StatePage(states=self.search_states(q.domain, q.ty), skipped=0)

    def query_events(self, q):
        in_type = [
            e
            for e in events
            if e.record.domain == q.domain
            and e.record.ty == q.ty
            and (q.key is None or e.record.key == q.key)
            and (q.min_time is None or e.time >= q.min_time)
            and (q.max_time is None or e.time <= q.max_time)
        ]
        return EventPage(events=in_type, skipped=0)

    def get_at(self, record, seq):
        return state_at(key_of(record), seq)

    def query_states_at(self, q, seq):
        of_type = [k for k in history if k[0] == q.domain and k[1] == q.ty]
        states = [s for s in (state_at(k, seq) for k in of_type) if s is not None]
        return StatePage(states=states, skipped=0)

    def max_instances(self):
        return 1  # the data lives in this instance's memory
