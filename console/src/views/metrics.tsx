// Charts from the gateway's own metrics (`/api/stats`, read from its
// Prometheus registry): calls and errors per second, calls and errors by
// method, p99 latency by method, events appended per second, live streams.
// Rates are differences between snapshots taken every two seconds.

import { useEffect, useState } from 'preact/hooks';
import { call, num, type Stats } from '../api';
import { BarChart, LineChart } from '../components/charts';
import { Empty, ErrorNote } from '../components/errors';
import { formatNumber, formatSeconds } from '../format';
import { useLoad } from '../hooks';
import { Table } from '../components/table';

const SAMPLES = 60;

interface Point {
  requests: number;
  errors: number;
  events: number;
  streams: number;
}

/** The samples of this page's life, so leaving the view and coming back keeps the lines. */
const kept: { points: Point[]; prev: Stats | null } = { points: [], prev: null };

export function Metrics() {
  const stats = useLoad((signal) => call<Stats>('GET', 'api/stats', { signal }), [], 2000);
  const [points, setPoints] = useState<Point[]>(kept.points);
  useEffect(() => {
    const s = stats.data;
    if (!s) return;
    const p = kept.prev;
    kept.prev = s;
    if (!p) return;
    const dt = (num(s.time) - num(p.time)) / 1e9;
    if (dt <= 0) return;
    const total = (x: Stats, f: (m: Stats['methods'][number]) => number) => x.methods.reduce((a, m) => a + f(m), 0);
    const rate = (a: number, b: number) => Math.max(0, (a - b) / dt);
    setPoints(
      (kept.points = [
        ...kept.points,
        {
          requests: rate(total(s, (m) => m.requests), total(p, (m) => m.requests)),
          errors: rate(total(s, (m) => m.errors), total(p, (m) => m.errors)),
          events: rate(s.events_appended.total, p.events_appended.total),
          streams: s.streams.live,
        },
      ].slice(-SAMPLES)),
    );
  }, [stats.data]);

  const s = stats.data;
  const methods = (s?.methods ?? []).filter((m) => m.requests > 0);
  const short = (m: string) => m.replace(/^\/stategate\./, '').replace(/^\/grpc\./, '');
  return (
    <section>
      <h1 tabIndex={-1}>Metrics</h1>
      <p class="sub">This instance’s counters since it started; rates over two-second steps, the last two minutes.</p>
      <ErrorNote error={stats.error} what="Gateway stats" />
      {!s && !stats.error && <p class="note">Loading…</p>}
      {s && (
        <>
          <div class="charts">
            <LineChart title="Calls per second" unit="/s" series={[
              { name: 'calls', values: points.map((p) => p.requests), cls: 's1' },
              { name: 'errors', values: points.map((p) => p.errors), cls: 's2' },
            ]} />
            <LineChart title="Events appended per second" unit="/s" series={[{ name: 'events', values: points.map((p) => p.events), cls: 's3' }]} />
            <LineChart title="Live streams" unit="" series={[{ name: 'streams', values: points.map((p) => p.streams), cls: 's4' }]} />
            <BarChart title="Calls by method (errors in red)" unit="" bars={methods.map((m) => ({
              label: short(m.method),
              parts: [
                { name: 'ok', value: m.requests - m.errors, cls: 's1' },
                { name: 'errors', value: m.errors, cls: 's2' },
              ],
            }))} />
            <BarChart title="p99 latency by method (since start)" unit="ms" format={(n) => n.toFixed(n < 10 ? 2 : 0)} bars={methods.filter((m) => m.latency.p99_seconds !== null).map((m) => ({
              label: short(m.method),
              parts: [{ name: 'p99', value: (m.latency.p99_seconds ?? 0) * 1000, cls: 's5' }],
            }))} />
          </div>
          <h2>By method</h2>
          {methods.length === 0 ? (
            <Empty>No calls yet.</Empty>
          ) : (
            <Table label="Calls by method" columns={['Method', 'Calls#', 'Errors#', 'Codes', 'Mean#', 'p99#']}>
              {methods.map((m) => (
                <tr key={m.method}>
                  <td><code>{m.method}</code></td>
                  <td class="num">{formatNumber(m.requests)}</td>
                  <td class="num">{formatNumber(m.errors)}</td>
                  <td>{Object.entries(m.codes).map(([c, n]) => `${c} ${n}`).join(', ')}</td>
                  <td class="num">{formatSeconds(m.latency.count ? m.latency.sum_seconds / m.latency.count : null)}</td>
                  <td class="num">{formatSeconds(m.latency.p99_seconds)}</td>
                </tr>
              ))}
            </Table>
          )}
          <p class="sub">
            Events appended since start: {Object.entries(s.events_appended.by_kind).map(([k, n]) => `${k} ${n}`).join(', ') || 'none'}.
          </p>
        </>
      )}
    </section>
  );
}
