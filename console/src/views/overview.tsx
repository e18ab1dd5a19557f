// Overview: the domains and types this token may see (the catalog, with
// record and event counts), events per second, live streams, and whether
// storage and channel answer (the stats snapshot, as /readyz checks them).

import { useEffect, useRef, useState } from 'preact/hooks';
import { call, num, type CatalogEntry, type Stats } from '../api';
import { Empty, ErrorNote } from '../components/errors';
import { formatNumber, formatTime, visible } from '../format';
import { useLoad } from '../hooks';
import { go, href } from '../route';
import { Table } from '../components/table';

interface Catalog {
  entries: CatalogEntry[];
  head?: string | number;
}

export function Overview() {
  const catalog = useLoad((signal) => call<Catalog>('GET', 'api/catalog', { signal }), [], 5000);
  const stats = useLoad((signal) => call<Stats>('GET', 'api/stats', { signal }), [], 2000);
  const rate = useRate(stats.data);
  // A gateway without the catalog (older, or a proxy in front) answers 404, or a bare 4xx.
  const e = catalog.error;
  const noCatalog = !!e && (e.kind === 'not-found' || (!e.envelope && e.status >= 400 && e.status < 500 && e.kind !== 'bad-token' && e.kind !== 'no-token' && e.kind !== 'expired'));

  return (
    <section>
      <h1 tabIndex={-1}>Overview</h1>
      <div class="cards" aria-live="polite" aria-busy={stats.loading && !stats.data}>
        <Health title="Storage" h={stats.data?.storage} />
        <Health title="Channel" h={stats.data?.channel} />
        <div class="card">
          <h2>Live streams</h2>
          <p class="big">{stats.data ? stats.data.streams.live : '…'}</p>
          <p class="sub">{stats.data ? `${stats.data.streams.topics} topics watched` : ''}</p>
        </div>
        <div class="card">
          <h2>Events per second</h2>
          <p class="big">{rate === null ? '…' : formatNumber(rate)}</p>
          <p class="sub">{stats.data ? `${formatNumber(stats.data.events_appended.total)} appended since start` : ''}</p>
        </div>
      </div>
      <ErrorNote error={stats.error} what="Gateway stats" />

      <h2>Domains and types</h2>
      <ErrorNote error={noCatalog ? null : catalog.error} what="Catalog" />
      {noCatalog && (
        <Empty>This gateway does not list its domains and types (no catalog). Open a type by name below.</Empty>
      )}
      {catalog.data && catalog.data.entries.length === 0 && (
        <Empty>No records yet, or none this token may see. Write one through the API, then it shows here.</Empty>
      )}
      {catalog.data && catalog.data.entries.length > 0 && (
        <Table label="Domains and types" columns={['Domain', 'Type', 'Records#', 'Events#', 'Last event', '']}>
          {catalog.data.entries.map((e) => (
            <tr key={`${e.domain}/${e.type}`}>
              <td>{visible(e.domain)}</td>
              <td><a href={href(['records', e.domain, e.type])}>{visible(e.type)}</a></td>
              <td class="num">{formatNumber(num(e.records))}</td>
              <td class="num">{formatNumber(num(e.events))}</td>
              <td>{formatTime(e.last_event_time ?? e.lastEventTime)}</td>
              <td><a href={href(['tail'], { domain: e.domain, type: e.type })} aria-label={`Live tail of ${visible(e.domain)}/${visible(e.type)}`}>Tail</a></td>
            </tr>
          ))}
        </Table>
      )}
      <OpenType />
    </section>
  );
}

function Health({ title, h }: { title: string; h: Stats['storage'] | undefined }) {
  return (
    <div class={`card health ${h ? (h.ready ? 'ok' : 'bad') : ''}`}>
      <h2>{title}</h2>
      <p class="big">{h ? (h.ready ? 'Ready' : 'Not ready') : '…'}</p>
      <p class="sub">{h ? h.provider : ''}{h?.error ? `: ${h.error}` : ''}</p>
    </div>
  );
}

/** Events per second between the last two snapshots. */
function useRate(stats: Stats | undefined): number | null {
  const prev = useRef<{ t: number; n: number } | null>(null);
  const [rate, setRate] = useState<number | null>(null);
  useEffect(() => {
    if (!stats) return;
    const now = { t: num(stats.time) / 1e9, n: stats.events_appended.total };
    if (prev.current && now.t > prev.current.t) setRate(Math.max(0, (now.n - prev.current.n) / (now.t - prev.current.t)));
    prev.current = now;
  }, [stats]);
  return rate;
}

/** Records or live tail of a type named by hand (a tail takes `*`). */
export function OpenType() {
  const [domain, setDomain] = useState('');
  const [type, setType] = useState('');
  const [problem, setProblem] = useState('');
  const open = (where: 'records' | 'tail') => {
    const d = domain.trim();
    const t = type.trim();
    if (where === 'tail') return go(['tail'], { domain: d || '*', type: t || '*' });
    if (!d || !t || d.includes('*') || t.includes('*')) return setProblem('Records need a domain and a type (no *).');
    go(['records', d, t]);
  };
  return (
    <form class="open-type" onSubmit={(e) => { e.preventDefault(); open('records'); }}>
      <h2>Open a type</h2>
      <div class="row">
        <label>Domain <input name="domain" value={domain} onInput={(e) => { setDomain((e.target as HTMLInputElement).value); setProblem(''); }} /></label>
        <label>Type <input name="type" value={type} onInput={(e) => { setType((e.target as HTMLInputElement).value); setProblem(''); }} /></label>
        <button type="submit">Records</button>
        <button type="button" onClick={() => open('tail')}>Live tail</button>
      </div>
      {problem && <p class="field-error" role="alert">{problem}</p>}
    </form>
  );
}
