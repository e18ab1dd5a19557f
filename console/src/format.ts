// Display helpers shared by the views.

import type { Int } from './api';

/** Unix nanoseconds as local date and time with milliseconds. */
export function formatTime(ns: Int | undefined): string {
  if (ns === undefined || ns === null || ns === '' || Number(ns) === 0) return '—';
  const ms = Number(BigInt(ns) / 1_000_000n);
  const d = new Date(ms);
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function compact(v: unknown, max = 140): string {
  const s = v === undefined ? '' : JSON.stringify(v);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Who wrote an event: its token's `sub` (or `(no token)` with auth off). */
export function who(claims: Record<string, unknown> | undefined): string {
  if (!claims || Object.keys(claims).length === 0) return '(no token)';
  const sub = claims.sub ?? claims.email ?? claims.client_id;
  return typeof sub === 'string' ? sub : JSON.stringify(sub ?? claims);
}

export function formatNumber(n: number): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: 1 });
}

export function formatSeconds(s: number | null | undefined): string {
  if (s === null || s === undefined) return '—';
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}
