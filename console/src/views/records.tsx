// The records of one type: the query builder (field, operator, value) that
// writes `query_string`, the raw text beside it, sort and paging, all kept
// in the address so a search can be shared or gone back to.

import { useEffect, useState } from 'preact/hooks';
import { call, num, type State } from '../api';
import { Empty, ErrorNote } from '../components/errors';
import { compact, visible } from '../format';
import { useLoad } from '../hooks';
import { OPERATORS, toQueryString, type Condition, type Operator } from '../query';
import { go, href } from '../route';
import { OpenType } from './overview';
import { Table } from '../components/table';

const PAGE_SIZES = [10, 20, 50, 100];

export function Records({ domain, type, query }: { domain: string; type: string; query: URLSearchParams }) {
  if (!domain || !type) {
    return (
      <section>
        <h1 tabIndex={-1}>Records</h1>
        <p>Choose a type from the <a href="#/">overview</a>, or name one:</p>
        <OpenType />
      </section>
    );
  }
  return <TypeRecords domain={domain} type={type} query={query} />;
}

function TypeRecords({ domain, type, query }: { domain: string; type: string; query: URLSearchParams }) {
  const q = query.get('q') ?? '';
  const sort = query.get('sort') ?? '';
  const desc = query.get('desc') === 'true';
  const limit = Number(query.get('limit')) || 20;
  const offset = Math.max(0, Number(query.get('offset')) || 0);
  const params = { q, sort, desc, limit };
  const result = useLoad(
    (signal) =>
      call<{ stateValues?: State[] }>('GET', 'api/state/search', {
        params: { domain, type, query_string: q, sort_by: sort, sort_descending: desc || undefined, limit, offset },
        signal,
      }),
    [domain, type, q, sort, desc, limit, offset],
  );
  const rows = result.data?.stateValues ?? [];
  const page = (o: number) => go(['records', domain, type], { ...params, offset: o || undefined });

  return (
    <section>
      <h1 tabIndex={-1}>
        Records of {visible(domain)} / {visible(type)}
      </h1>
      <p class="links">
        <a href={href(['tail'], { domain, type })}>Live tail of this type</a>
      </p>
      <SearchForm key={`${domain}/${type}`} domain={domain} type={type} q={q} sort={sort} desc={desc} limit={limit} />
      <ErrorNote error={result.error} what="Search" />
      <div aria-live="polite" aria-busy={result.loading}>
        {result.loading && !result.data && <p class="note">Loading…</p>}
        {result.data && rows.length === 0 && (
          <Empty>{offset > 0 ? 'No more records.' : q ? 'No record matches this query.' : 'This type has no records yet.'}</Empty>
        )}
        {rows.length > 0 && (
          <p class="sub">
            Records {offset + 1}–{offset + rows.length}
          </p>
        )}
      </div>
      {rows.length > 0 && (
        <Table label="Records" cls="records" columns={['Key', 'Version#', 'Values']}>
          {rows.map((s) => (
            <tr key={s.key}>
              <td><a href={href(['record', domain, type, s.key])}>{visible(s.key)}</a></td>
              <td class="num">{num(s.version)}</td>
              <td><code class="values">{compact(s.values)}</code></td>
            </tr>
          ))}
        </Table>
      )}
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled={offset === 0} onClick={() => page(Math.max(0, offset - limit))}>Previous page</button>
        <button type="button" disabled={rows.length < limit} onClick={() => page(offset + limit)}>Next page</button>
      </nav>
    </section>
  );
}

interface FormProps {
  domain: string;
  type: string;
  q: string;
  sort: string;
  desc: boolean;
  limit: number;
}

function SearchForm({ domain, type, q, sort, desc, limit }: FormProps) {
  const [conditions, setConditions] = useState<Condition[]>([]);
  const [match, setMatch] = useState<'all' | 'any'>('all');
  const [raw, setRaw] = useState(q);
  const [handEdited, setHandEdited] = useState(false);
  const [sortBy, setSortBy] = useState(sort);
  const [descending, setDescending] = useState(desc);
  const [size, setSize] = useState(limit);
  const [invalid, setInvalid] = useState('');

  useEffect(() => setRaw(q), [q]);

  const update = (next: Condition[], m = match) => {
    setConditions(next);
    setMatch(m);
    setRaw(toQueryString(next, m));
    setHandEdited(false);
    setInvalid('');
  };
  const set = (i: number, patch: Partial<Condition>) => update(conditions.map((c, j) => (j === i ? { ...c, ...patch } : c)));

  const submit = (e: Event) => {
    e.preventDefault();
    if (raw.trim()) {
      try {
        const v = JSON.parse(raw);
        if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('must be a JSON object');
      } catch (err) {
        setInvalid(`The query is not a JSON object: ${(err as Error).message}`);
        return;
      }
    }
    go(['records', domain, type], { q: raw.trim(), sort: sortBy.trim(), desc: descending, limit: size });
  };

  return (
    <form class="search" onSubmit={submit}>
      <fieldset>
        <legend>Query</legend>
        {conditions.length === 0 && <p class="sub">No conditions: every record. Add one, or write the query below.</p>}
        <ol class="conditions">
          {conditions.map((c, i) => (
            <li key={i} class="row">
              <label>
                Field <input name={`field-${i}`} value={c.field} placeholder="address.city" onInput={(e) => set(i, { field: (e.target as HTMLInputElement).value })} />
              </label>
              <label>
                Operator
                <select name={`op-${i}`} value={c.op} onChange={(e) => set(i, { op: (e.target as HTMLSelectElement).value as Operator })}>
                  {OPERATORS.map(([op, label]) => (
                    <option key={op} value={op}>{label} ({op})</option>
                  ))}
                </select>
              </label>
              {c.op === '$exists' ? (
                <label>
                  Value
                  <select name={`value-${i}`} value={c.value === 'false' ? 'false' : 'true'} onChange={(e) => set(i, { value: (e.target as HTMLSelectElement).value })}>
                    <option value="true">yes</option>
                    <option value="false">no</option>
                  </select>
                </label>
              ) : (
                <label>
                  Value <input name={`value-${i}`} value={c.value} placeholder={c.op === '$in' || c.op === '$nin' ? 'a, b, 3' : 'Paris, 42, true'} onInput={(e) => set(i, { value: (e.target as HTMLInputElement).value })} />
                </label>
              )}
              <button type="button" class="link" onClick={() => update(conditions.filter((_, j) => j !== i))} aria-label={`Remove condition ${i + 1}`}>
                Remove
              </button>
            </li>
          ))}
        </ol>
        <div class="row">
          <button type="button" onClick={() => update([...conditions, { field: '', op: '$eq', value: '' }])}>Add condition</button>
          {conditions.length > 1 && (
            <label>
              Match
              <select value={match} onChange={(e) => update(conditions, (e.target as HTMLSelectElement).value as 'all' | 'any')}>
                <option value="all">all conditions</option>
                <option value="any">any condition</option>
              </select>
            </label>
          )}
        </div>
        <label class="block" for="raw-query">query_string (JSON)</label>
        <textarea
          id="raw-query"
          name="query_string"
          rows={2}
          spellcheck={false}
          value={raw}
          placeholder='{"address.city": "Paris"}'
          aria-invalid={invalid ? true : undefined}
          aria-describedby="raw-help"
          onInput={(e) => { setRaw((e.target as HTMLTextAreaElement).value); setHandEdited(true); setInvalid(''); }}
        />
        <p id="raw-help" class="sub">
          {handEdited && conditions.length > 0 ? 'Edited by hand: the builder will overwrite it when it changes.' : 'MongoDB’s query language; the builder writes it, and you can edit it.'}
        </p>
        {invalid && <p class="field-error" role="alert">{invalid}</p>}
      </fieldset>
      <div class="row">
        <label>
          Sort by <input name="sort_by" value={sortBy} placeholder="name" onInput={(e) => setSortBy((e.target as HTMLInputElement).value)} />
        </label>
        <label class="check">
          <input type="checkbox" checked={descending} onChange={(e) => setDescending((e.target as HTMLInputElement).checked)} /> Descending
        </label>
        <label>
          Per page
          <select value={size} onChange={(e) => setSize(Number((e.target as HTMLSelectElement).value))}>
            {PAGE_SIZES.map((n) => <option key={n} value={n}>{n}</option>)}
          </select>
        </label>
        <button type="submit" class="primary">Search</button>
      </div>
    </form>
  );
}
