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

// Whoever may write a record chooses its domain, type, key and values, and
// a token's issuer its `sub`. Shown as they are, the control characters
// vanish (two different keys look the same) and the bidirectional
// formatting characters reorder what follows them (`invoice\u{202e}fdp.exe`
// reads `invoiceexe.pdf`). So the console writes them out, as the CLI does
// (`model::printable`); everything else, other scripts and emoji among it,
// shows as it is. Links and requests keep the real names.
const STEERS = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu;
// Of those, what JSON.stringify leaves raw (it escapes C0 controls in
// strings, so any left in its text is its own indentation).
const STEERS_IN_JSON = /[\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/gu;
const RUST_ESCAPES: Record<string, string> = { '\t': '\\t', '\n': '\\n', '\r': '\\r' };

/** A name (domain, type, key, a field's path) with what would hide or reorder it written as `\u{1b}`. */
export function visible(name: string): string {
  return name.replace(STEERS, rustEscape);
}

/** `visible` for a message of several lines (the server's): its line breaks and tabs stay. */
export function visibleMessage(text: string): string {
  return text.replace(STEERS, (c) => (c === '\n' || c === '\t' ? c : rustEscape(c)));
}

function rustEscape(c: string): string {
  return RUST_ESCAPES[c] ?? `\\u{${c.codePointAt(0)!.toString(16)}}`;
}

/**
 * JSON text of values, with the characters JSON.stringify leaves raw that
 * would hide or reorder it (C1 controls, bidirectional formatting) written
 * as JSON escapes: the text still parses to the same values.
 */
export function jsonText(v: unknown, indent?: number): string {
  const s = JSON.stringify(v, null, indent) ?? '';
  return s.replace(STEERS_IN_JSON, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export function compact(v: unknown, max = 140): string {
  const s = v === undefined ? '' : jsonText(v);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Who wrote an event: its token's `sub` (or `(no token)` with auth off). */
export function who(claims: Record<string, unknown> | undefined): string {
  if (!claims || Object.keys(claims).length === 0) return '(no token)';
  const sub = claims.sub ?? claims.email ?? claims.client_id;
  return typeof sub === 'string' ? visible(sub) : jsonText(sub ?? claims);
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
