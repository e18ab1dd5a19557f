// Live tail: the events of a domain and type (`*` for any) as they are
// appended, newest first. Pause holds new events back (counted) until
// Resume; each row opens its record.

import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, num, type Event } from '../api';
import { Empty, ErrorNote } from '../components/errors';
import { compact, formatTime, visible, who } from '../format';
import { go, href } from '../route';
import { tail } from '../stream';
import { Table } from '../components/table';

const KEEP = 500;

type Status = { state: 'connecting' | 'live' | 'retrying' | 'stopped'; error?: ApiError; retryIn?: number };

export function Tail({ query }: { query: URLSearchParams }) {
  const domain = query.get('domain') || '*';
  const type = query.get('type') || '*';
  const key = query.get('key') || '';
  const [d, setD] = useState(domain);
  const [t, setT] = useState(type);
  const [rows, setRows] = useState<Event[]>([]);
  const [held, setHeld] = useState<Event[]>([]);
  const [paused, setPaused] = useState(false);
  const [status, setStatus] = useState<Status>({ state: 'connecting' });
  const [running, setRunning] = useState(true);
  const pausedRef = useRef(paused);
  pausedRef.current = paused;

  useEffect(() => {
    setD(domain);
    setT(type);
  }, [domain, type]);

  useEffect(() => {
    if (!running) return;
    setRows([]);
    setHeld([]);
    return tail({
      domain,
      type,
      key: key || undefined,
      onEvent: (e) => {
        if (pausedRef.current) setHeld((h) => [e, ...h].slice(0, KEEP));
        else setRows((r) => [e, ...r].slice(0, KEEP));
      },
      onStatus: setStatus,
    });
  }, [domain, type, key, running]);

  const resume = () => {
    setRows((r) => [...held, ...r].slice(0, KEEP));
    setHeld([]);
    setPaused(false);
  };

  const label =
    !running ? 'Stopped.' :
    status.state === 'connecting' ? 'Connecting…' :
    status.state === 'live' ? (paused ? `Paused: ${held.length} new event${held.length === 1 ? '' : 's'} held back.` : 'Live.') :
    status.state === 'retrying' ? `Connection lost; reconnecting in ${((status.retryIn ?? 0) / 1000).toFixed(1)} s.` :
    'Stopped.';

  return (
    <section>
      <h1 tabIndex={-1}>Live tail</h1>
      <form
        class="row tail-form"
        onSubmit={(e) => {
          e.preventDefault();
          go(['tail'], { domain: d.trim() || '*', type: t.trim() || '*' });
          setRunning(true);
        }}
      >
        <label>Domain <input name="domain" value={d} onInput={(e) => setD((e.target as HTMLInputElement).value)} /></label>
        <label>Type <input name="type" value={t} onInput={(e) => setT((e.target as HTMLInputElement).value)} /></label>
        <button type="submit" class="primary">Follow</button>
        {running ? (
          <button type="button" onClick={() => setRunning(false)}>Stop</button>
        ) : null}
        {paused ? (
          <button type="button" onClick={resume}>Resume ({held.length})</button>
        ) : (
          <button type="button" onClick={() => setPaused(true)} disabled={!running}>Pause</button>
        )}
        <button type="button" onClick={() => setRows([])}>Clear</button>
      </form>
      <p class={`status status-${running ? status.state : 'stopped'}${paused ? ' paused' : ''}`} role="status">
        {visible(key ? `${domain}/${type}/${key}` : `${domain}/${type}`)}: {label}
      </p>
      {status.state !== 'live' && running && <ErrorNote error={status.error} what="Stream" />}
      {rows.length === 0 && status.state === 'live' && !paused && (
        <Empty>Waiting for events. Writes to {visible(domain)}/{visible(type)} show here as they happen.</Empty>
      )}
      {rows.length > 0 && (
        <Table label="Events, newest first" cls="events" columns={['Time', 'Record', 'Kind', 'Version#', 'By', 'Values']}>
          {rows.map((e) => (
            <tr key={e.id} class="event" data-id={e.id}>
              <td><time>{formatTime(e.time)}</time></td>
              <td>
                <a href={href(['record', e.state.domain, e.state.type, e.state.key])}>
                  {visible(`${e.state.domain}/${e.state.type}/${e.state.key}`)}
                </a>
              </td>
              <td>{e.kind}</td>
              <td class="num">{num(e.version)}</td>
              <td>{who(e.claims)}</td>
              <td><code class="values">{compact(e.state.values, 100)}</code></td>
            </tr>
          ))}
        </Table>
      )}
    </section>
  );
}
