// Starts a gateway for the console tests: the binary STATEGATE_TEST_BIN
// names (else `stategate` on PATH), on free loopback ports, with in-memory
// storage, either in development mode or with HS256 tokens and a policy
// file. Also mints the tokens (node:crypto, no library).

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const SECRET = 'console-test-secret-0123456789abcdef';

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function listening(port) {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1', () => { c.destroy(); resolve(true); });
    c.on('error', () => resolve(false));
  });
}

/** `{ url, stop(), log() }`; `policy` (Rego text) turns authentication on. */
export async function startGateway({ policy } = {}) {
  const bin = process.env.STATEGATE_TEST_BIN || 'stategate';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-console-'));
  const port = await freePort();
  const opsPort = await freePort();
  const args = ['--port', String(port), '--ops-port', String(opsPort), '--data-dir', dir,
    '--log-format', 'text', '--storage-provider', '{"name":"inmem"}'];
  // Only what this test sets: no STATEGATE_* of the caller leaks in.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('STATEGATE_')));
  if (policy) {
    fs.writeFileSync(path.join(dir, 'policy.rego'), policy);
    Object.assign(env, {
      STATEGATE_BIND: '127.0.0.1',
      STATEGATE_JWT_HMAC_SECRET: SECRET,
      STATEGATE_REQUEST_POLICY_PATH: path.join(dir, 'policy.rego'),
    });
  } else {
    args.push('--dev');
  }
  const logFile = path.join(dir, 'gateway.log');
  const out = fs.openSync(logFile, 'a');
  const child = spawn(bin, args, { env, stdio: ['ignore', out, out] });
  let exited = null;
  child.on('exit', (code) => { exited = code; });
  const log = () => fs.readFileSync(logFile, 'utf8');
  for (let i = 0; !(await listening(port)); i++) {
    if (exited !== null || i > 300) throw new Error(`the gateway (${bin}) did not start:\n${log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url: `http://127.0.0.1:${port}`,
    log,
    async stop() {
      if (exited === null) {
        const done = new Promise((r) => child.on('exit', r));
        child.kill('SIGTERM');
        await done;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

const b64url = (data) => Buffer.from(data).toString('base64url');

/** An HS256 JWT over `claims` (valid ten minutes unless `exp` is given). */
export function mint(claims, secret = SECRET) {
  const now = Math.floor(Date.now() / 1000);
  const body = { iat: now, exp: now + 600, ...claims };
  const unsigned = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(body))}`;
  return `${unsigned}.${crypto.createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

/** A REST call from the test itself (as another client of the gateway). */
export async function rest(gw, method, p, { body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(gw.url + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}
