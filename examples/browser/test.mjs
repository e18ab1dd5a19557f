// Headless check of the browser example: serve the page, open it in
// Chromium (playwright-core driving the system browser), write records
// through the gateway's REST API, and wait until the page shows them.
//
//   node browser/test.mjs --gateway http://127.0.0.1:8080 --domain d --screenshot out.png
//
// CHROMIUM (default /usr/bin/chromium) names the browser binary.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    gateway: { type: 'string', default: 'http://127.0.0.1:8080' },
    domain: { type: 'string', default: 'browser' },
    type: { type: 'string', default: 'user' },
    screenshot: { type: 'string', default: 'browser-events.png' },
  },
});

// The page, its script, the contract from proto/ and protobufjs's browser build.
const files = {
  '/favicon.ico': path.join(here, 'favicon.svg'),
  '/': path.join(here, 'index.html'),
  '/index.html': path.join(here, 'index.html'),
  '/app.js': path.join(here, 'app.js'),
  '/vendor/protobuf.min.js': path.join(here, '..', 'node_modules', 'protobufjs', 'dist', 'protobuf.min.js'),
};
const protoDir = path.join(here, '..', '..', 'proto');
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x').pathname;
  let file = files[url];
  if (!file && url.startsWith('/proto/google/protobuf/')) {
    // descriptor.proto (imported by google/api/annotations.proto) ships with protobufjs.
    const p = path.join(here, '..', 'node_modules', 'protobufjs', 'google', 'protobuf', path.basename(url));
    if (fs.existsSync(p)) file = p;
  }
  if (!file && url.startsWith('/proto/')) {
    const p = path.normalize(path.join(protoDir, url.slice('/proto/'.length)));
    if (p.startsWith(protoDir) && fs.existsSync(p)) file = p;
  }
  if (!file) { res.writeHead(404).end(); return; }
  const type = file.endsWith('.html') ? 'text/html' : file.endsWith('.js') ? 'text/javascript' : 'text/plain';
  res.writeHead(200, { 'content-type': type }).end(fs.readFileSync(file));
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const page_url = `http://127.0.0.1:${server.address().port}/?gateway=${encodeURIComponent(args.gateway)}&domain=${args.domain}&type=${args.type}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 420 } });
  page.on('console', (m) => console.log(`[page] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
  await page.goto(page_url);
  await page.waitForSelector('#status.live', { timeout: 30000 });
  const written = [];
  for (const [key, values] of [['alice', { name: 'Alice', city: 'Paris' }], ['bob', { name: 'Bob', city: 'Lyon' }], ['carol', { name: 'Carol', n: 3 }]]) {
    const res = await fetch(`${args.gateway}/api/state/ref/${args.domain}/${args.type}/${key}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ values }),
    });
    if (!res.ok) throw new Error(`REST set ${key}: ${res.status} ${await res.text()}`);
    written.push((await res.json()).id);
  }
  await page.waitForFunction((n) => document.querySelectorAll('tr.event').length >= n, written.length, { timeout: 30000 });
  const shown = await page.$$eval('tr.event', (trs) => trs.map((tr) => ({ id: tr.dataset.id, text: tr.textContent })));
  await page.screenshot({ path: args.screenshot, fullPage: true });
  const ids = shown.map((s) => s.id);
  if (JSON.stringify(ids) !== JSON.stringify(written)) throw new Error(`page shows ${JSON.stringify(ids)}, wrote ${JSON.stringify(written)}`);
  if (!shown[0].text.includes('"name":"Alice"') || !shown[2].text.includes(`${args.domain}/${args.type}/carol`)) {
    throw new Error(`unexpected rows: ${JSON.stringify(shown)}`);
  }
  for (const s of shown) console.log(`shown: ${s.text}`);
  console.log(`screenshot: ${args.screenshot}`);
} catch (e) {
  failed = e;
} finally {
  await browser.close();
  server.close();
}
if (failed) {
  console.error(`browser example failed: ${failed.message}`);
  process.exit(1);
}
console.log('browser example: 3 events shown');
