// The console in real Chromium (Debian's, driven by playwright-core)
// against gateways this test starts: a record written through the API
// shows in the live tail and the table; its history, a diff of two
// versions, a revert, an edit and a delete; with authentication on, no
// token, a wrong one and an expired one are refused, and a policy's
// refusal is shown with the server's message. Screenshots of each view go
// to CONSOLE_ARTIFACTS (default tests/artifacts).
//
//   STATEGATE_TEST_BIN=/path/to/stategate CHROMIUM=/usr/bin/chromium node --test tests/console.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { mint, rest, startGateway } from './gateway.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = process.env.CONSOLE_ARTIFACTS || path.join(here, 'artifacts');
fs.mkdirSync(ARTIFACTS, { recursive: true });
const TIMEOUT = 20_000;

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
});
after(async () => browser?.close());

/**
 * A page on the gateway that fails the test on a script error, a CSP
 * violation, or any request that leaves the gateway's origin.
 */
async function open(gw, { width = 1280, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  const requests = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('request', (r) => {
    requests.push(r);
    if (!r.url().startsWith(gw.url) && !r.url().startsWith('data:')) problems.push(`external request: ${r.url()}`);
  });
  return { page, context, problems, requests };
}

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
const heading = (page) => page.locator('main h1');

test('development mode: tail, table, history, diff, revert, edit, delete', async () => {
  const gw = await startGateway();
  const d = `c${Date.now().toString(36)}`;
  const { page, context, problems } = await open(gw);
  try {
    await page.goto(`${gw.url}/console`);
    await assert.doesNotReject(heading(page).filter({ hasText: 'Overview' }).waitFor());
    await page.locator('.health.ok').first().waitFor();

    // Keyboard: the skip link comes first, then the brand and the views.
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.textContent?.trim()), 'Skip to content');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Live tail');
    await page.keyboard.press('Enter');
    await heading(page).filter({ hasText: 'Live tail' }).waitFor();
    // The view moves focus in an effect, which runs after the heading is
    // painted: wait for it rather than read it at once.
    await assert.doesNotReject(
      page.waitForFunction(() => document.activeElement?.tagName === 'H1', null, { timeout: 5000 }),
      'focus moves to the new view',
    );

    // Follow the test's domain, any type.
    await page.getByLabel('Domain').fill(d);
    await page.getByRole('button', { name: 'Follow' }).click();
    await page.getByRole('status').filter({ hasText: `${d}/*: Live.` }).waitFor();

    const v1 = await rest(gw, 'POST', `/api/state/ref/${d}/user/alice`, { body: { values: { name: 'Alice', city: 'Paris', age: 30 } } });
    await rest(gw, 'POST', `/api/state/ref/${d}/user/bob`, { body: { values: { name: 'Bob', city: 'Lyon', age: 41 } } });
    await page.locator('tr.event', { hasText: `${d}/user/alice` }).waitFor();
    await page.locator('tr.event', { hasText: `${d}/user/bob` }).waitFor();

    // Paused, new events are held back and counted; Resume shows them.
    await page.getByRole('button', { name: 'Pause' }).click();
    await rest(gw, 'PATCH', `/api/state/ref/${d}/user/alice`, { body: { city: 'Lyon' } });
    await page.getByRole('status').filter({ hasText: '1 new event held back' }).waitFor();
    assert.equal(await page.locator('tr.event').count(), 2);
    await page.getByRole('button', { name: 'Resume (1)' }).click();
    await page.locator('tr.event', { hasText: 'EDIT' }).waitFor();
    await rest(gw, 'POST', `/api/state/ref/${d}/user/alice`, { body: { values: { name: 'Alice', city: 'Lyon', age: 31, tags: ['x'] } } });
    await page.locator('tr.event').nth(3).waitFor();
    await shot(page, 'tail');

    // Open in record, from the newest row.
    await page.locator('tr.event').first().getByRole('link').click();
    await heading(page).filter({ hasText: `${d} / user / alice` }).waitFor();
    const entries = page.locator('.timeline > li');
    await entries.nth(2).waitFor();
    assert.equal(await entries.count(), 3);
    assert.deepEqual(await entries.evaluateAll((li) => li.map((e) => e.dataset.version)), ['3', '2', '1']);
    // The default diff is the newest against the one before it.
    await page.locator('#diff-title', { hasText: 'Diff v2 → v3' }).waitFor();
    // Any two versions: v1 → v3.
    await page.getByLabel('From').selectOption({ label: 'v1 SET' });
    await page.locator('#diff-title', { hasText: 'Diff v1 → v3' }).waitFor();
    const changed = await page.locator('.diff-table tbody tr').evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    assert.deepEqual(changed, [
      ['age', 'changed', '30', '31'],
      ['city', 'changed', '"Paris"', '"Lyon"'],
      ['tags', 'added', '', '["x"]'],
    ]);
    await shot(page, 'record');

    // Revert to v1, confirmed in the dialog.
    await entries.filter({ hasText: 'v1' }).getByRole('button', { name: 'Revert to v1' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByRole('heading', { name: 'Revert to version 1?' }).waitFor();
    await dialog.getByRole('button', { name: 'Revert to version 1' }).click();
    await page.getByRole('status').filter({ hasText: 'Reverted: version 4 has the values of version 1.' }).waitFor();
    const now = await rest(gw, 'GET', `/api/state/ref/${d}/user/alice`);
    assert.equal(now.version, '4');
    assert.deepEqual(now.values, v1.state.values);
    await entries.nth(3).waitFor();
    assert.equal(await entries.first().locator('.kind').textContent(), 'REVERT');

    // Edit with the JSON editor: bad JSON is caught before anything is sent.
    await page.getByRole('button', { name: 'Edit' }).click();
    const editor = page.getByLabel('Values (JSON object)');
    await editor.fill('{"name": ');
    await page.locator('#values-problem', { hasText: 'Not valid JSON' }).waitFor();
    assert.equal(await page.getByRole('button', { name: 'Save…' }).isDisabled(), true);
    await editor.fill('{"name": "Alice", "city": "Nice"}');
    await page.getByRole('button', { name: 'Save…' }).click();
    await dialog.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('status').filter({ hasText: 'Saved version 5.' }).waitFor();
    assert.deepEqual((await rest(gw, 'GET', `/api/state/ref/${d}/user/alice`)).values, { name: 'Alice', city: 'Nice' });

    // The table with a query from the builder.
    await page.getByRole('link', { name: `All records of ${d}/user` }).click();
    await heading(page).filter({ hasText: `Records of ${d} / user` }).waitFor();
    await page.locator('table.records tbody tr').nth(1).waitFor();
    await page.getByRole('button', { name: 'Add condition' }).click();
    await page.getByLabel('Field').fill('city');
    await page.getByLabel('Value').fill('Lyon');
    assert.equal(await page.getByLabel('query_string (JSON)').inputValue(), '{"city":"Lyon"}');
    await page.getByRole('button', { name: 'Search' }).click();
    await page.waitForFunction(() => location.hash.includes('q='));
    await page.locator('table.records tbody tr').first().filter({ hasText: 'bob' }).waitFor();
    assert.equal(await page.locator('table.records tbody tr').count(), 1);
    await shot(page, 'records');
    // A query the gateway refuses shows its message.
    await page.getByLabel('query_string (JSON)').fill('{"age": {"$near": 3}}');
    await page.getByRole('button', { name: 'Search' }).click();
    await page.getByRole('alert').filter({ hasText: '$near' }).waitFor();

    // Delete, confirmed: the record has no current values, its history stays.
    await page.goto(`${gw.url}/console/#/record/${d}/user/bob`);
    await page.getByRole('button', { name: 'Delete' }).click();
    await dialog.getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('status').filter({ hasText: 'Deleted: version 2 is a deletion.' }).waitFor();
    await page.getByText('No current values').waitFor();
    await entries.nth(1).waitFor();

    // Metrics and overview.
    await page.getByRole('link', { name: 'Metrics' }).click();
    await page.locator('figure.chart svg').first().waitFor();
    // Some traffic over a few snapshots, so the lines have points.
    for (let i = 0; i < 12; i++) {
      await rest(gw, 'POST', `/api/state/ref/${d}/load/k${i % 3}`, { body: { values: { i } } });
      await page.waitForTimeout(500);
    }
    await page.waitForFunction(() => (document.querySelector('.chart polyline.s3')?.getAttribute('points') ?? '').split(' ').length >= 3);
    await page.locator('td code', { hasText: '/stategate.StateService/Set' }).waitFor();
    await shot(page, 'metrics');
    await page.getByRole('link', { name: 'Overview' }).click();
    await page.locator('.health.ok').nth(1).waitFor();
    // The catalog: this domain's types with their counts (bob deleted: one record, seven events).
    const row = page.getByRole('region', { name: 'Domains and types' }).locator('tr', { hasText: d }).filter({ hasText: 'user' });
    assert.deepEqual(await row.locator('td').evaluateAll((tds) => tds.slice(0, 4).map((t) => t.textContent)), [d, 'user', '1', '7']);
    await page.waitForTimeout(2500);
    await shot(page, 'overview');

    // Phone width: the record view reads without sideways scrolling.
    const phone = await open(gw, { width: 390, height: 844 });
    await phone.page.goto(`${gw.url}/console/#/record/${d}/user/alice`);
    await phone.page.locator('.timeline > li').nth(4).waitFor();
    const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone`);
    await shot(phone.page, 'phone-record');
    await phone.context.close();
    assert.deepEqual(phone.problems, []);
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await gw.stop();
  }
});

test('names and values that would hide or reorder text are shown written out', async () => {
  const gw = await startGateway();
  const d = `c${Date.now().toString(36)}`;
  // A writer chooses the names and values: U+202E would make the key read
  // `invoiceexe.pdf`, U+2066/7 reorder a field and the type, ESC and the
  // C1 control U+0085 (in a value: a key may not hold white space) vanish.
  const [type, typeShown] = ['t\u2067', 't\\u{2067}'];
  const [key, keyShown] = ['invoice\u202efdp.exe\u001b[2J', 'invoice\\u{202e}fdp.exe\\u{1b}[2J'];
  const values = { note: 'paid\u202e\u0085', 'f\u2066': 1 };
  const raw = /[\u202e\u2066\u2067\u0085\u001b]/u;
  const url = `/api/state/ref/${d}/${encodeURIComponent(type)}/${encodeURIComponent(key)}`;
  const { page, context, problems } = await open(gw);
  try {
    await rest(gw, 'POST', url, { body: { values } });
    await page.goto(`${gw.url}/console/#/records/${d}/${encodeURIComponent(type)}`);
    await heading(page).filter({ hasText: `Records of ${d} / ${typeShown}` }).waitFor();
    const cell = page.locator('table.records tbody tr td').first();
    assert.equal(await cell.textContent(), keyShown);
    // Values as JSON escapes, which parse to the same values.
    const compact = await page.locator('table.records tbody tr code.values').textContent();
    assert.deepEqual(JSON.parse(compact), values);
    assert.ok(compact.includes('"paid\\u202e\\u0085"') && compact.includes('"f\\u2066"'), compact);
    // The link still opens the record by its real key.
    await cell.getByRole('link').click();
    await heading(page).filter({ hasText: `${d} / ${typeShown} / ${keyShown}` }).waitFor();
    const current = await page.getByLabel('Current values').textContent();
    assert.deepEqual(JSON.parse(current), values);
    assert.ok(!raw.test(current), `raw in ${JSON.stringify(current)}`);
    // A confirmation names the record the same way.
    await page.getByRole('button', { name: 'Delete' }).click();
    const dialog = page.getByRole('dialog');
    assert.equal(await dialog.getByRole('heading').textContent(), `Delete ${keyShown}?`);
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    // The editor starts from text that parses to the same values.
    await page.getByRole('button', { name: 'Edit' }).click();
    assert.deepEqual(JSON.parse(await page.getByLabel('Values (JSON object)').inputValue()), values);
    // A server message naming the record (a version conflict: another
    // writer came first) is written out too.
    await rest(gw, 'POST', url, { body: { values: { n: 1 } } });
    await page.getByRole('button', { name: 'Save…' }).click();
    await dialog.getByRole('button', { name: 'Save' }).click();
    const conflict = await page.getByRole('alert').filter({ hasText: 'version conflict' }).textContent();
    assert.ok(conflict.includes(`${d}/${typeShown}/${keyShown}`), conflict);
    assert.ok(!raw.test(conflict), `raw in ${JSON.stringify(conflict)}`);
    // The live tail and the overview.
    await page.goto(`${gw.url}/console/#/tail?domain=${d}&type=${encodeURIComponent(type)}`);
    await page.getByRole('status').filter({ hasText: `${d}/${typeShown}: Live.` }).waitFor();
    await rest(gw, 'POST', url, { body: { values: { n: 3 } } });
    assert.equal(await page.locator('tr.event td a').first().textContent(), `${d}/${typeShown}/${keyShown}`);
    await page.goto(`${gw.url}/console/#/`);
    const row = page.getByRole('region', { name: 'Domains and types' }).locator('tr', { hasText: d });
    await row.waitFor();
    assert.deepEqual(await row.locator('td').evaluateAll((tds) => tds.slice(0, 2).map((t) => t.textContent)), [d, typeShown]);
    assert.ok(!raw.test(await page.locator('main').textContent()), 'nothing raw in the overview');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await gw.stop();
  }
});

const POLICY = `package stategate.authz

default allow = false

allow { input.claims.role == "admin" }

# Operators may do everything but delete and revert.
refused := {"/stategate.StateService/Del", "/stategate.StateService/Revert"}

allow {
  input.claims.role == "operator"
  not refused[input.method]
}
`;

test('authentication on: no, wrong and expired tokens; a policy refusal', async () => {
  const gw = await startGateway({ policy: POLICY });
  const d = `a${Date.now().toString(36)}`;
  const admin = mint({ sub: 'admin', role: 'admin' });
  const operator = mint({ sub: 'olivia', role: 'operator' });
  const { page, context, problems, requests } = await open(gw);
  try {
    await rest(gw, 'POST', `/api/state/ref/${d}/order/o1`, { token: admin, body: { values: { total: 10 } } });
    await rest(gw, 'POST', `/api/state/ref/${d}/order/o1`, { token: admin, body: { values: { total: 12 } } });

    // No token: the sign-in form says so.
    await page.goto(`${gw.url}/console/`);
    await heading(page).filter({ hasText: 'Sign in' }).waitFor();
    await page.getByRole('alert').filter({ hasText: 'This gateway needs a token.' }).waitFor();
    await shot(page, 'signin');

    // A token signed with another key is refused, with the gateway's reason.
    await page.getByLabel('Bearer token').fill(mint({ sub: 'mallory', role: 'admin' }, 'another-secret-0123456789abcdef-xx'));
    await page.getByRole('button', { name: 'Use token' }).click();
    await heading(page).filter({ hasText: 'Token refused' }).waitFor();
    await page.getByRole('alert').filter({ hasText: 'The gateway refused the token.' }).waitFor();

    // An expired one is named as such.
    const past = Math.floor(Date.now() / 1000) - 3600;
    await page.getByLabel('Bearer token').fill(mint({ sub: 'olivia', role: 'operator', iat: past - 600, exp: past }));
    await page.getByRole('button', { name: 'Use token' }).click();
    await heading(page).filter({ hasText: 'Token expired' }).waitFor();

    // A good token: the overview loads; the token is in session storage only.
    await page.getByLabel('Bearer token').fill(operator);
    await page.getByRole('button', { name: 'Use token' }).click();
    await heading(page).filter({ hasText: 'Overview' }).waitFor();
    await page.locator('.health.ok').first().waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('stategate.console.token')), operator);
    assert.equal(await page.evaluate(() => localStorage.length), 0);

    // The policy refuses Delete and Revert for this token: the console says so, with the server's message.
    await page.goto(`${gw.url}/console/#/record/${d}/order/o1`);
    await page.locator('.timeline > li').nth(1).waitFor();
    await page.getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
    const refusal = page.getByRole('alert').filter({ hasText: 'Delete: Refused by the gateway’s policy.' });
    await refusal.waitFor();
    assert.match(await refusal.textContent(), /permission denied/i);
    await shot(page, 'refused');
    await page.getByRole('button', { name: 'Revert to v1' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Revert to version 1' }).click();
    await page.getByRole('alert').filter({ hasText: 'Revert: Refused by the gateway’s policy.' }).waitFor();
    assert.equal((await rest(gw, 'GET', `/api/state/ref/${d}/order/o1`, { token: admin })).version, '2', 'nothing was written');

    // A token handed over in the address (an identity provider's redirect) is taken out of it at once.
    const other = await context.newPage();
    await other.goto(`${gw.url}/console/#access_token=${admin}&token_type=Bearer`);
    await other.locator('main h1', { hasText: 'Overview' }).waitFor();
    assert.equal(new URL(other.url()).hash, '#/');
    assert.equal(await other.evaluate(() => sessionStorage.getItem('stategate.console.token')), admin);

    // The token travelled in the Authorization header only.
    const api = requests.filter((r) => new URL(r.url()).pathname.startsWith('/api/'));
    assert.ok(api.length > 5);
    for (const r of requests) {
      for (const t of [operator, admin]) assert.ok(!r.url().includes(t), `a token in ${r.url()}`);
    }
    const withOperator = api.filter((r) => r.headers().authorization === `Bearer ${operator}`);
    assert.ok(withOperator.length >= 3, 'calls carry the bearer header');
    assert.deepEqual(problems, []);
    assert.ok(!gw.log().includes(operator), 'the gateway does not log the token');
  } finally {
    await context.close();
    await gw.stop();
  }
});

const AXE = fs.readFileSync(path.join(here, '..', 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');

/** axe-core's WCAG 2 A and AA rules on the page as it is; serious and critical findings. */
async function axe(page) {
  await page.addScriptTag({ content: AXE });
  const found = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')).slice(0, 3) }));
  });
  return found.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

test('accessibility: no serious WCAG 2 A/AA finding in any view, light or dark, wide or narrow', async () => {
  const gw = await startGateway();
  const d = `x${Date.now().toString(36)}`;
  await rest(gw, 'POST', `/api/state/ref/${d}/user/alice`, { body: { values: { name: 'Alice', city: 'Paris' } } });
  await rest(gw, 'POST', `/api/state/ref/${d}/user/alice`, { body: { values: { name: 'Alice', city: 'Lyon' } } });
  const views = [
    ['overview', '#/', '.health.ok'],
    ['records', `#/records/${d}/user`, 'table.records tbody tr'],
    ['record', `#/record/${d}/user/alice`, '.diff-table'],
    ['tail', `#/tail?domain=${d}&type=*`, '.status-live'],
    ['metrics', '#/metrics', 'figure.chart'],
    ['signin', '#/signin', '#token'],
  ];
  try {
    for (const scheme of ['light', 'dark']) {
      for (const [width, height] of [[1280, 800], [390, 844]]) {
        // axe is injected as a script, which the console's CSP rightly refuses: this context bypasses it.
        const context = await browser.newContext({ viewport: { width, height }, colorScheme: scheme, bypassCSP: true });
        const page = await context.newPage();
        page.setDefaultTimeout(TIMEOUT);
        for (const [name, hash, ready] of views) {
          await page.goto(`${gw.url}/console/${hash}`);
          await page.locator(ready).first().waitFor();
          assert.deepEqual(await axe(page), [], `${name} (${scheme}, ${width}px)`);
        }
        await context.close();
      }
    }
  } finally {
    await gw.stop();
  }
});
