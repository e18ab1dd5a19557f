// A live event stream in the browser over grpc-web.
//
// The messages come from proto/stategate.proto, parsed in the page by
// protobufjs; the grpc-web framing (a 5-byte header per message, a final
// trailers frame) is a few lines over fetch's streaming body. If the
// connection drops, the page reconnects with after_sequence = the
// resume_after of the last event it showed, so the gateway replays exactly
// what it missed (resuming after the last event's id could skip an event of
// another record that was still committing when that one arrived).
//
// Query parameters: gateway (default: this page's origin), domain, type, token.
'use strict';

const params = new URLSearchParams(location.search);
const gateway = (params.get('gateway') || location.origin).replace(/\/$/, '');
const domain = params.get('domain') || 'example';
const type = params.get('type') || 'user';
const token = params.get('token');

const statusEl = document.getElementById('status');
const rows = document.getElementById('events');
document.getElementById('topic').textContent = `${domain}/${type} @ ${gateway}`;
const setStatus = (text, cls) => { statusEl.textContent = text; statusEl.className = cls || ''; };

function frame(bytes) {
  const out = new Uint8Array(5 + bytes.length);
  new DataView(out.buffer).setUint32(1, bytes.length);
  out.set(bytes, 5);
  return out;
}

function show(Event, ev) {
  const e = Event.toObject(ev, { longs: String, enums: String, oneofs: true });
  const st = e.state || {};
  const tr = document.createElement('tr');
  tr.className = 'event';
  tr.dataset.id = e.id;
  const time = new Date(Number(BigInt(e.time || 0) / 1000000n)).toISOString();
  const values = st.values ? JSON.stringify(structToJson(st.values)) : '';
  const cells = [[time], [e.kind, e.kind], [`${st.domain}/${st.type}/${st.key}`], [`v${e.version}`], [values]];
  for (const [text, cls] of cells) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  rows.appendChild(tr);
}

// google.protobuf.Struct (as protobufjs objects with oneofs: true) to JSON.
const structToJson = (s) => Object.fromEntries(Object.entries(s.fields || {}).map(([k, v]) => [k, valueToJson(v)]));
const valueToJson = (v) =>
  v.kind === 'structValue' ? structToJson(v.structValue)
  : v.kind === 'listValue' ? (v.listValue.values || []).map(valueToJson)
  : v.kind === 'nullValue' || !v.kind ? null
  : v[v.kind];

async function follow(root) {
  const StreamOpts = root.lookupType('stategate.StreamOpts');
  const Event = root.lookupType('stategate.Event');
  let resumeAfter = 0; // 0: start at the head
  for (let attempt = 0; ; attempt++) {
    try {
      const opts = StreamOpts.encode({ domain, type, afterSequence: resumeAfter }).finish();
      const headers = { 'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1', accept: 'application/grpc-web+proto' };
      if (token) headers.authorization = `Bearer ${token}`;
      const res = await fetch(`${gateway}/stategate.EventService/Stream`, { method: 'POST', headers, body: frame(opts) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const early = res.headers.get('grpc-status');
      if (early && early !== '0') throw new Error(`gRPC ${early}: ${decodeURIComponent(res.headers.get('grpc-message') || '')}`);
      setStatus('live', 'live');
      attempt = 0;
      const reader = res.body.getReader();
      let buf = new Uint8Array(0);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error('stream closed');
        const joined = new Uint8Array(buf.length + value.length);
        joined.set(buf);
        joined.set(value, buf.length);
        buf = joined;
        while (buf.length >= 5) {
          const len = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
          if (buf.length < 5 + len) break;
          const flag = buf[0];
          const body = buf.subarray(5, 5 + len);
          buf = buf.slice(5 + len);
          if (flag & 0x80) {
            const trailers = new TextDecoder().decode(body);
            const status = /grpc-status:\s*(\d+)/i.exec(trailers);
            if (status && status[1] !== '0') throw new Error(`gRPC ${status[1]}: ${trailers.trim()}`);
            throw new Error('stream ended');
          }
          const ev = Event.decode(body);
          if (ev.resumeAfter) resumeAfter = ev.resumeAfter;
          show(Event, ev);
        }
      }
    } catch (e) {
      setStatus(`reconnecting (${e.message})`, 'error');
      await new Promise((r) => setTimeout(r, Math.min(5000, 200 * 2 ** attempt)));
    }
  }
}

// Imports such as "google/api/http.proto" are relative to proto/, the
// include root, as protoc sees them (protobufjs would resolve them relative
// to the importing file). google/protobuf/{struct,empty}.proto are built in.
const root = new protobuf.Root();
root.resolvePath = (origin, target) =>
  target.startsWith('google/') ? `proto/${target}` : protobuf.util.path.resolve(origin, target);
root
  .load('proto/stategate.proto')
  .then(follow)
  .catch((e) => setStatus(`cannot load the contract: ${e.message}`, 'error'));
