// A stategate storage provider in JavaScript (world `storage-provider`,
// wit/storage.wit): where events and current states live.
//
// This one keeps everything in the instance's memory (lost when the gateway
// stops): a starting point that shows the contract. Searches return
// supersets (every state or event of the type): the host applies the filter,
// sort, offset and limit itself. Errors are thrown as the WIT
// `provider-error` variant; u64/s64 fields are BigInts. Reads as of an
// event (`getAt`, `queryStatesAt`) bisect each record's events.
// Check it with `stategate guest check <file.wasm>`.

const events = []; // every event, seq = index + 1
const states = new Map(); // "domain\0ty\0key" -> state
const versions = new Map(); // the last version of every record, deleted ones too
const idempotency = new Map(); // key -> [fingerprint, index of its event]
const history = new Map(); // "domain\0ty\0key" -> indexes of its events, in seq order

const keyOf = (r) => `${r.domain}\0${r.ty}\0${r.key}`;
const inRange = (e, min, max) => (min === undefined || e.time >= min) && (max === undefined || e.time <= max);

function ofType(domain, ty, key, min, max) {
  return events.filter(
    (e) => e.record.domain === domain && e.record.ty === ty && (key === undefined || e.record.key === key) && inRange(e, min, max),
  );
}

// The state the record's last event with seq <= `seq` left (undefined if
// it had none, or that one deleted it): event i has seq i + 1.
function stateAt(k, seq) {
  const lines = history.get(k) ?? [];
  let lo = 0;
  let hi = lines.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (events[lines[mid]].seq <= seq) lo = mid + 1;
    else hi = mid;
  }
  const e = lo > 0 ? events[lines[lo - 1]] : undefined;
  if (e === undefined || e.values === undefined) return undefined;
  return { record: e.record, values: e.values, version: e.version };
}

export const storage = {
  append(req) {
    if (req.idempotency !== undefined && idempotency.has(req.idempotency.key)) {
      const [fingerprint, at] = idempotency.get(req.idempotency.key);
      const earlier = events[at];
      if (earlier.time >= req.idempotency.notBefore) {
        if (fingerprint !== req.idempotency.fingerprint) throw { tag: "idempotency-mismatch" };
        return { event: earlier, replayed: true };
      }
    }
    const k = keyOf(req.record);
    const current = states.get(k)?.version;
    if (req.expect.tag === "absent" && current !== undefined) throw { tag: "version-conflict", val: current };
    if (req.expect.tag === "version" && current !== req.expect.val) throw { tag: "version-conflict", val: current };
    if (req.values === undefined && current === undefined) throw { tag: "not-found", val: `${k.replaceAll("\0", "/")} has no state` };
    const version = (versions.get(k) ?? 0n) + 1n;
    const event = {
      id: req.id,
      seq: BigInt(events.length + 1),
      record: req.record,
      values: req.values,
      claims: req.claims,
      time: req.time,
      version,
      kind: req.kind,
      method: req.method,
    };
    versions.set(k, version);
    if (!history.has(k)) history.set(k, []);
    history.get(k).push(events.length);
    if (req.values === undefined) states.delete(k);
    else states.set(k, { record: req.record, values: req.values, version });
    if (req.idempotency !== undefined) idempotency.set(req.idempotency.key, [req.idempotency.fingerprint, events.length]);
    events.push(event);
    return { event, replayed: false };
  },

  get(record) {
    return states.get(keyOf(record));
  },

  searchStates(domain, ty) {
    return [...states.values()].filter((s) => s.record.domain === domain && s.record.ty === ty);
  },

  searchEvents(scan) {
    return ofType(scan.domain, scan.ty, scan.key, scan.minTime, scan.maxTime);
  },

  getEvent(id) {
    return events.find((e) => e.id === id);
  },

  feed(q) {
    const out = [];
    for (const e of events.slice(Number(q.afterSeq))) {
      if (out.length >= q.limit) break;
      if (
        (q.domain === undefined || e.record.domain === q.domain) &&
        (q.ty === undefined || e.record.ty === q.ty) &&
        (q.key === undefined || e.record.key === q.key) &&
        (q.fromTime === undefined || e.time >= q.fromTime)
      ) {
        out.push(e);
      }
    }
    return out;
  },

  head() {
    return BigInt(events.length);
  },

  ping() {},

  queryStates(q) {
    return { states: storage.searchStates(q.domain, q.ty), skipped: 0 };
  },

  queryEvents(q) {
    return { events: ofType(q.domain, q.ty, q.key, q.minTime, q.maxTime), skipped: 0 };
  },

  getAt(record, seq) {
    return stateAt(keyOf(record), seq);
  },

  queryStatesAt(q, seq) {
    const prefix = `${q.domain}\0${q.ty}\0`;
    const keys = [...history.keys()].filter((k) => k.startsWith(prefix));
    return { states: keys.map((k) => stateAt(k, seq)).filter((s) => s !== undefined), skipped: 0 };
  },

  // One instance: the data lives in its memory.
  maxInstances() {
    return 1;
  },
};
