// A stategate channel provider in JavaScript (world `channel-provider`,
// wit/channel.wit): the broadcast between gateway instances. The gateway
// publishes every event to it and polls it from an opaque cursor every few
// milliseconds, filtering by topic itself.
//
// This one keeps events in the instance's memory, so it serves one gateway
// only: a starting point. A real channel talks to a broker through
// `grants.http`. Errors are thrown as the WIT `provider-error` variant,
// e.g. `throw { tag: "unavailable", val: "why" }`; u64 fields are BigInts.
// Check it with `stategate guest check <file.wasm>`.

// The number of the first event held, and the events not yet polled past.
let first = 0;
const held = [];

export const channel = {
  publish(event) {
    held.push(event);
  },

  tail() {
    return String(first + held.length);
  },

  poll(cursor, max) {
    const at = Number.parseInt(cursor, 10);
    if (Number.isNaN(at)) throw { tag: "internal", val: `not a cursor: ${JSON.stringify(cursor)}` };
    // Forget what the host has polled past (its cursor only moves forward).
    const done = Math.min(Math.max(at - first, 0), held.length);
    held.splice(0, done);
    first += done;
    const events = held.slice(0, max);
    return { events, cursor: String(first + events.length) };
  },

  ping() {},

  // One instance: the events live in its memory.
  maxInstances() {
    return 1;
  },
};
