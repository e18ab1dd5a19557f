// The live tail's connection: `GET /api/events/stream` as NDJSON read
// through fetch() (EventSource cannot send the Authorization header). A
// dropped connection is reopened at the resume point of the last event
// seen (`after_sequence` = its `resumeAfter`: resuming after its id could
// skip an event of another record still committing when it arrived), with
// backoff; errors a retry cannot fix (token, policy, bad request) end it.

import { ApiError, apiUrl, authHeaders, classify, errorOf, unreachable, type Event } from './api';
import { getToken } from './token';

export interface TailOptions {
  domain: string;
  type: string;
  key?: string;
  onEvent: (e: Event) => void;
  onStatus: (s: { state: 'connecting' | 'live' | 'retrying' | 'stopped'; error?: ApiError; retryIn?: number }) => void;
}

const FATAL = new Set(['no-token', 'bad-token', 'expired', 'forbidden', 'invalid', 'not-found']);

/** Starts the tail; the returned function stops it. */
export function tail(opts: TailOptions): () => void {
  const abort = new AbortController();
  let last = '';
  let delay = 250;
  (async () => {
    while (!abort.signal.aborted) {
      opts.onStatus({ state: 'connecting' });
      let error: ApiError;
      try {
        error = await once(opts, last, abort.signal, (e) => {
          if (e.resumeAfter) last = String(e.resumeAfter);
          delay = 250;
          opts.onEvent(e);
        });
      } catch (e) {
        if (abort.signal.aborted) return;
        error = e instanceof ApiError ? e : unreachable();
      }
      if (abort.signal.aborted) return;
      if (FATAL.has(error.kind)) {
        opts.onStatus({ state: 'stopped', error });
        return;
      }
      opts.onStatus({ state: 'retrying', error, retryIn: delay });
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  })();
  return () => abort.abort();
}

/** One connection, until it ends; resolves to why it ended. */
async function once(opts: TailOptions, after: string, signal: AbortSignal, deliver: (e: Event) => void): Promise<ApiError> {
  const url = apiUrl('api/events/stream', { domain: opts.domain, type: opts.type, key: opts.key, after_sequence: after });
  const sent = getToken();
  const res = await fetch(url, { headers: { accept: 'application/x-ndjson', ...authHeaders(sent) }, signal, cache: 'no-store' });
  if (!res.ok) return errorOf(res, sent, signal);
  if (!res.body) return unreachable();
  opts.onStatus({ state: 'live' });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return new ApiError('The stream ended; reconnecting.', 'unavailable', 0);
    buffered += value;
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      const frame = JSON.parse(line);
      if (frame.result) deliver(frame.result as Event);
      else if (frame.error) return streamError(frame.error, sent);
    }
  }
}

/** A `{"error": {code, message}}` line: its gRPC code as the HTTP status REST uses. */
function streamError(e: { code: number; message: string }, sent: string | null): ApiError {
  const status: Record<number, number> = { 3: 400, 5: 404, 7: 403, 8: 429, 14: 503, 16: 401 };
  return classify(status[e.code] ?? 500, e.message, true, sent);
}
