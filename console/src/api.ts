// Every call the console makes: the gateway's public REST API, relative to
// the page (so a proxy prefix works), with the user's token. Errors keep the
// server's message and are sorted into the states the views explain.

import { getToken } from './token';

export type ErrorKind =
  | 'no-token'
  | 'bad-token'
  | 'expired'
  | 'forbidden'
  | 'unavailable'
  | 'not-found'
  | 'conflict'
  | 'invalid'
  | 'other';

export class ApiError extends Error {
  constructor(
    message: string,
    readonly kind: ErrorKind,
    readonly status: number,
    /** Whether the gateway answered with its error envelope (else a proxy, or a route it does not have). */
    readonly envelope = true,
  ) {
    super(message);
  }
}

/** Listeners told when a call was refused for its token (401). */
const authListeners = new Set<(e: ApiError) => void>();
export function onAuthProblem(listener: (e: ApiError) => void): () => void {
  authListeners.add(listener);
  return () => authListeners.delete(listener);
}

type Params = Record<string, string | number | boolean | undefined | null>;

export function apiUrl(path: string, params: Params = {}): string {
  const url = new URL(`../${path.replace(/^\//, '')}`, location.href);
  url.hash = '';
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
  }
  return url.toString();
}

/** The Authorization header for `token` (the one in session storage unless given). */
export function authHeaders(token: string | null = getToken()): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/**
 * The error a failed response stands for, with the server's message; `sent`
 * is the token the request carried. A call abandoned while its body was read
 * (its view went away) throws the abort instead of reporting a failure.
 */
export async function errorOf(res: Response, sent: string | null, signal?: AbortSignal): Promise<ApiError> {
  let message = `${res.status} ${res.statusText}`;
  let envelope = false;
  try {
    const body = await res.json();
    if (body && typeof body.message === 'string') [message, envelope] = [body.message, true];
  } catch {
    // not the JSON envelope (a proxy's page): keep the status line
  }
  signal?.throwIfAborted();
  return classify(res.status, message, envelope, sent);
}

/**
 * Sorts a failure by its status. A 401 is told to the sign-in listeners
 * only while the token it was sent with is still the current one: a late
 * answer to a replaced token must not undo the new one.
 */
export function classify(status: number, message: string, envelope: boolean, sent: string | null): ApiError {
  let kind: ErrorKind = 'other';
  if (status === 401) {
    kind = !sent ? 'no-token' : /expired/i.test(message) ? 'expired' : 'bad-token';
  } else if (status === 403) kind = 'forbidden';
  else if (status === 404) kind = 'not-found';
  else if (status === 409) kind = 'conflict';
  else if (status === 400 || status === 413 || status === 415) kind = 'invalid';
  else if (status === 502 || status === 503 || status === 504) kind = 'unavailable';
  const e = new ApiError(message, kind, status, envelope);
  if (status === 401 && sent === getToken()) authListeners.forEach((l) => l(e));
  return e;
}

export function unreachable(): ApiError {
  return new ApiError('The gateway cannot be reached: it may be stopped or the network is down.', 'unavailable', 0);
}

export async function call<T>(
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
  path: string,
  options: { params?: Params; body?: unknown; signal?: AbortSignal } = {},
): Promise<T> {
  const sent = getToken();
  const headers: Record<string, string> = { accept: 'application/json', ...authHeaders(sent) };
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(apiUrl(path, options.params), {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      signal: options.signal,
      cache: 'no-store',
    });
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    throw unreachable();
  }
  if (!res.ok) throw await errorOf(res, sent, options.signal);
  return (await res.json()) as T;
}

// ---- the shapes the API returns (64-bit numbers may be strings) ----

export type Int = string | number;
export type Values = Record<string, unknown>;

export interface State {
  domain: string;
  type: string;
  key: string;
  values: Values;
  version: Int;
}

export interface Event {
  id: string;
  state: { domain: string; type: string; key: string; values?: Values; version: Int };
  claims: Record<string, unknown>;
  time: Int;
  version: Int;
  kind: string;
  method: string;
  sequence?: Int;
  /** On a streamed event: where to resume the stream (`after_sequence`). */
  resumeAfter?: Int;
}

export interface CatalogEntry {
  domain: string;
  type: string;
  records: Int;
  events: Int;
  last_event_time?: Int;
  lastEventTime?: Int;
}

export interface ProviderHealth {
  provider: string;
  ready: boolean;
  error: string | null;
}

export interface MethodStats {
  method: string;
  requests: number;
  errors: number;
  codes: Record<string, number>;
  latency: { count: number; sum_seconds: number; p99_seconds: number | null; buckets: [number | null, number][] };
}

export interface Stats {
  time: Int;
  storage: ProviderHealth;
  channel: ProviderHealth;
  streams: { live: number; topics: number };
  events_appended: { total: number; by_kind: Record<string, number> };
  methods: MethodStats[];
}

export const num = (v: Int | undefined | null): number => (v === undefined || v === null ? 0 : Number(v));

/** The record path of the REST API, each part encoded. */
export const recordPath = (d: string, t: string, k: string) =>
  `api/state/ref/${encodeURIComponent(d)}/${encodeURIComponent(t)}/${encodeURIComponent(k)}`;
