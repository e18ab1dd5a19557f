// stategate from Node with @grpc/grpc-js, loading proto/ at run time with
// @grpc/proto-loader (no code generation step).
//
//   cd examples && npm ci
//   node node/example.js --addr 127.0.0.1:8080 --domain users
//
// Follows the events of <domain>/user, writes two records, reads, searches
// and deletes, and prints what it saw. STATEGATE_TOKEN sends a bearer token.
// Against a gateway with authentication on, a request policy must allow the
// calls (deny by default), e.g.
// STATEGATE_REQUEST_POLICY_PATH=examples/policies/read_only_role.rego and a
// token whose `roles` claim holds "writer".
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const { values: args } = parseArgs({
  options: { addr: { type: 'string', default: '127.0.0.1:8080' }, domain: { type: 'string', default: 'example' } },
});
const PROTO = path.join(__dirname, '..', '..', 'proto');
const def = protoLoader.loadSync(path.join(PROTO, 'stategate.proto'), {
  includeDirs: [PROTO],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const pb = grpc.loadPackageDefinition(def).stategate;

// google.protobuf.Struct <-> plain objects.
const toValue = (v) =>
  v === null ? { nullValue: 'NULL_VALUE' }
  : typeof v === 'number' ? { numberValue: v }
  : typeof v === 'string' ? { stringValue: v }
  : typeof v === 'boolean' ? { boolValue: v }
  : Array.isArray(v) ? { listValue: { values: v.map(toValue) } }
  : { structValue: toStruct(v) };
const toStruct = (o) => ({ fields: Object.fromEntries(Object.entries(o).map(([k, v]) => [k, toValue(v)])) });
const fromValue = (v) =>
  v.kind === 'structValue' ? fromStruct(v.structValue)
  : v.kind === 'listValue' ? v.listValue.values.map(fromValue)
  : v.kind === 'nullValue' ? null
  : v[v.kind];
const fromStruct = (s) => Object.fromEntries(Object.entries((s && s.fields) || {}).map(([k, v]) => [k, fromValue(v)]));

function metadata() {
  const md = new grpc.Metadata();
  if (process.env.STATEGATE_TOKEN) md.set('authorization', `Bearer ${process.env.STATEGATE_TOKEN}`);
  return md;
}

const creds = grpc.credentials.createInsecure();
const state = new pb.StateService(args.addr, creds);
const events = new pb.EventService(args.addr, creds);
const call = (client, method, req) =>
  new Promise((resolve, reject) => client[method](req, metadata(), (err, res) => (err ? reject(err) : resolve(res))));

async function main() {
  const d = args.domain;
  // Replay from now on, then live: nothing written after this instant is missed.
  const fromTime = (BigInt(Date.now()) * 1000000n).toString();
  const stream = events.Stream({ domain: d, type: 'user', from_time: fromTime }, metadata());
  const streamed = [];
  const threeEvents = new Promise((resolve, reject) => {
    stream.on('data', (ev) => {
      streamed.push(ev);
      console.log(`streamed: ${ev.state.key} ${ev.kind} v${ev.version}`);
      if (streamed.length === 3) resolve();
    });
    stream.on('error', (e) => { if (e.code !== grpc.status.CANCELLED) reject(e); });
  });

  const ev = await call(state, 'Set', { domain: d, type: 'user', key: 'alice', values: toStruct({ name: 'Alice', city: 'Paris' }) });
  console.log(`set alice: version ${ev.version}`);
  await call(state, 'Set', { domain: d, type: 'user', key: 'bob', values: toStruct({ name: 'Bob', city: 'Lyon' }) });
  const alice = await call(state, 'Get', { domain: d, type: 'user', key: 'alice' });
  console.log('get alice:', JSON.stringify(fromStruct(alice.values)));
  const found = await call(state, 'Search', { domain: d, type: 'user', query_string: JSON.stringify({ city: 'Paris' }), limit: 10 });
  console.log('search city=Paris:', JSON.stringify(found.state_values.map((s) => s.key)));
  await call(state, 'Del', { domain: d, type: 'user', key: 'bob' });
  try {
    await call(state, 'Get', { domain: d, type: 'user', key: 'bob' });
    throw new Error('bob should be gone');
  } catch (e) {
    if (e.code !== grpc.status.NOT_FOUND) throw e;
    console.log('get bob: NOT_FOUND');
  }
  const history = await call(events, 'Search', { domain: d, type: 'user', limit: 10 });
  console.log('history:', JSON.stringify(history.events.map((e) => `${e.state.key}:${e.kind}`)));

  await threeEvents;
  stream.cancel();
  state.close();
  events.close();
}

main().catch((e) => {
  console.error('example failed:', e.message || e);
  process.exit(1);
});
