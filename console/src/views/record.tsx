// One record: its current values, its history as a timeline (who, when,
// kind, method), the diff between any two versions (each entry against the
// one before it by default), and Revert, Edit and Delete, each confirmed
// first and each showing the server's refusal when a policy says no.

import { useState } from 'preact/hooks';
import { ApiError, call, num, recordPath, type Event, type State, type Values } from '../api';
import { Confirm, type Ask } from '../components/confirm';
import { Empty, ErrorNote } from '../components/errors';
import { diff } from '../diff';
import { compact, formatTime, jsonText, visible, who } from '../format';
import { useLoad } from '../hooks';
import { href } from '../route';
import { Table } from '../components/table';

const PAGE = 100;

export function Record({ domain, type, recordKey }: { domain: string; type: string; recordKey: string }) {
  const path = recordPath(domain, type, recordKey);
  const state = useLoad((signal) => call<State>('GET', path, { signal }), [path]);
  const [pages, setPages] = useState(1);
  const history = useLoad(
    (signal) =>
      call<{ events?: Event[] }>('GET', 'api/events/search', {
        params: { domain, type, key: recordKey, limit: PAGE * pages, 'sort.reverse': true },
        signal,
      }),
    [path, pages],
  );
  const events = history.data?.events ?? [];
  const [ask, setAsk] = useState<Ask | null>(null);
  const [actionError, setActionError] = useState<{ what: string; error: ApiError } | null>(null);
  const [notice, setNotice] = useState('');
  const [editing, setEditing] = useState(false);
  const [pair, setPair] = useState<[string, string] | null>(null);

  const current = state.error?.kind === 'not-found' ? null : state.data;
  const version = current ? num(current.version) : undefined;

  const confirm = (a: Omit<Ask, 'resolve'>) => new Promise<boolean>((resolve) => setAsk({ ...a, resolve: (yes) => { setAsk(null); resolve(yes); } }));
  const act = async (what: string, run: () => Promise<Event>, done: (e: Event) => string) => {
    setActionError(null);
    setNotice('');
    try {
      const e = await run();
      setNotice(done(e));
      setEditing(false);
      setPair(null);
      state.reload();
      history.reload();
    } catch (err) {
      setActionError({ what, error: err instanceof ApiError ? err : new ApiError(String(err), 'other', 0) });
    }
  };

  const revert = async (e: Event) => {
    const ok = await confirm({
      title: `Revert to version ${num(e.version)}?`,
      body: <p>This writes a new version of <strong>{visible(recordKey)}</strong> with the values of version {num(e.version)}. The history keeps every version.</p>,
      confirm: `Revert to version ${num(e.version)}`,
    });
    if (ok) {
      await act('Revert', () => call<Event>('POST', `${path}/revert`, { body: { eventId: e.id, expectedVersion: version === undefined ? undefined : String(version) } }), (ev) => `Reverted: version ${num(ev.version)} has the values of version ${num(e.version)}.`);
    }
  };
  const del = async () => {
    const ok = await confirm({
      title: `Delete ${visible(recordKey)}?`,
      body: <p>This removes the current values (a DEL event); the history is kept and a version can be reverted to later.</p>,
      confirm: 'Delete',
      danger: true,
    });
    if (ok) {
      await act('Delete', () => call<Event>('DELETE', path, { params: { expected_version: version } }), (ev) => `Deleted: version ${num(ev.version)} is a deletion.`);
    }
  };
  const save = async (values: Values) => {
    const ok = await confirm({
      title: 'Save these values?',
      body: <p>This writes version {(version ?? 0) + 1} of <strong>{visible(recordKey)}</strong>, if nobody wrote it since version {version ?? 0}.</p>,
      confirm: 'Save',
    });
    if (ok) {
      await act('Save', () => call<Event>('POST', path, { body: { values, expectedVersion: String(version ?? 0) } }), (ev) => `Saved version ${num(ev.version)}.`);
    }
  };

  // The two versions compared: chosen, else the newest and the one before it.
  const [aId, bId] = pair ?? [events[1]?.id, events[0]?.id];
  const a = events.find((e) => e.id === aId);
  const b = events.find((e) => e.id === bId);

  return (
    <section>
      <h1 tabIndex={-1}>
        {visible(domain)} / {visible(type)} / {visible(recordKey)}
      </h1>
      <p class="links">
        <a href={href(['records', domain, type])}>All records of {visible(domain)}/{visible(type)}</a>
        {' · '}
        <a href={href(['tail'], { domain, type, key: recordKey })}>Live tail of this record</a>
      </p>
      <Confirm ask={ask} />
      <div aria-live="polite">{notice && <p class="note ok" role="status">{notice}</p>}</div>
      {actionError && <ErrorNote error={actionError.error} what={actionError.what} />}

      <div class="record-layout">
        <div class="record-current">
          <h2>Current values</h2>
          <ErrorNote error={state.error?.kind === 'not-found' ? null : state.error} what="Get" />
          {state.loading && !state.data && !state.error && <p class="note">Loading…</p>}
          {state.error?.kind === 'not-found' && <Empty>No current values: the record was deleted, or never written.</Empty>}
          {current && !editing && (
            <div class="current">
              <p class="sub">Version {version}</p>
              <pre class="json" tabIndex={0} aria-label="Current values">{jsonText(current.values, 2)}</pre>
              <div class="actions">
                <button type="button" onClick={() => setEditing(true)}>Edit</button>
                <button type="button" class="danger" onClick={del}>Delete</button>
              </div>
            </div>
          )}
          {editing && <Editor initial={current?.values ?? {}} onSave={save} onCancel={() => setEditing(false)} />}
          {!current && !editing && state.error?.kind === 'not-found' && (
            <div class="actions"><button type="button" onClick={() => setEditing(true)}>Write values</button></div>
          )}
        </div>
        <div class="record-history">
          <h2>History</h2>
          <ErrorNote error={history.error} what="History" />
          {history.data && events.length === 0 && <Empty>No events for this record.</Empty>}
          {a && b && a.id !== b.id && (
            <DiffView a={a} b={b} events={events} onPick={(x, y) => setPair([x, y])} />
          )}
          <ol class="timeline" aria-label="Versions, newest first">
            {events.map((e, i) => (
              <Entry key={e.id} e={e} before={events[i + 1]} current={version} onRevert={() => revert(e)} onCompare={() => events[i + 1] && setPair([events[i + 1].id, e.id])} />
            ))}
          </ol>
          {events.length >= PAGE * pages && (
            <button type="button" onClick={() => setPages((p) => p + 1)}>Load older versions</button>
          )}
        </div>
      </div>
    </section>
  );
}

function Entry({ e, before, current, onRevert, onCompare }: { e: Event; before?: Event; current?: number; onRevert: () => void; onCompare: () => void }) {
  const v = num(e.version);
  const changes = before ? diff(before.state.values, e.state.values) : [];
  return (
    <li class={`entry kind-${e.kind}`} data-version={v}>
      <div class="entry-head">
        <span class="version">v{v}</span>
        <span class="kind">{e.kind}</span>
        <time>{formatTime(e.time)}</time>
        <span>by <strong>{who(e.claims)}</strong></span>
        <span class="sub">{e.method.replace(/^\/stategate\./, '')}</span>
      </div>
      <p class="sub">
        {e.kind === 'DEL' ? 'Deleted.' : before ? `${changes.length} field${changes.length === 1 ? '' : 's'} changed: ${changes.slice(0, 4).map((c) => visible(c.path)).join(', ')}${changes.length > 4 ? '…' : ''}` : `Created: ${compact(e.state.values, 100)}`}
      </p>
      <details>
        <summary>Values and claims</summary>
        <pre class="json" tabIndex={0}>{jsonText({ values: e.state.values ?? null, claims: e.claims, id: e.id }, 2)}</pre>
      </details>
      <div class="actions">
        {before && <button type="button" class="link" onClick={onCompare}>Diff with v{num(before.version)}</button>}
        {e.kind !== 'DEL' && v !== current && (
          <button type="button" onClick={onRevert}>Revert to v{v}</button>
        )}
      </div>
    </li>
  );
}

function DiffView({ a, b, events, onPick }: { a: Event; b: Event; events: Event[]; onPick: (a: string, b: string) => void }) {
  const changes = diff(a.state.values, b.state.values);
  const options = events.map((e) => <option key={e.id} value={e.id}>v{num(e.version)} {e.kind}</option>);
  return (
    <section class="diff" aria-labelledby="diff-title">
      <h3 id="diff-title">
        Diff v{num(a.version)} → v{num(b.version)}
      </h3>
      <div class="row">
        <label>From <select name="diff-from" value={a.id} onChange={(e) => onPick((e.target as HTMLSelectElement).value, b.id)}>{options}</select></label>
        <label>To <select name="diff-to" value={b.id} onChange={(e) => onPick(a.id, (e.target as HTMLSelectElement).value)}>{options}</select></label>
      </div>
      {changes.length === 0 ? (
        <Empty>The two versions have the same values.</Empty>
      ) : (
        <Table label="Differences" cls="diff-table" columns={['Field', 'Change', `v${num(a.version)}`, `v${num(b.version)}`]}>
          {changes.map((c) => (
            <tr key={c.path} class={c.kind}>
              <td><code>{visible(c.path)}</code></td>
              <td>{c.kind}</td>
              <td class="before"><code>{c.before === undefined ? '' : compact(c.before, 80)}</code></td>
              <td class="after"><code>{c.after === undefined ? '' : compact(c.after, 80)}</code></td>
            </tr>
          ))}
        </Table>
      )}
    </section>
  );
}

/** The JSON editor: a text area checked as you type. */
function Editor({ initial, onSave, onCancel }: { initial: Values; onSave: (v: Values) => void; onCancel: () => void }) {
  const [text, setText] = useState(jsonText(initial, 2));
  let problem = '';
  let parsed: Values | null = null;
  try {
    const v = JSON.parse(text);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) problem = 'The values must be a JSON object.';
    else parsed = v;
  } catch (e) {
    problem = `Not valid JSON: ${(e as Error).message}`;
  }
  return (
    <form class="editor" onSubmit={(e) => { e.preventDefault(); if (parsed) onSave(parsed); }}>
      <label class="block" for="values-editor">Values (JSON object)</label>
      <textarea
        id="values-editor"
        rows={Math.min(24, Math.max(6, text.split('\n').length + 1))}
        spellcheck={false}
        value={text}
        aria-invalid={problem ? true : undefined}
        aria-describedby="values-problem"
        onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
        onKeyDown={(e) => {
          // Tab indents; Escape then Tab leaves the editor (keyboard users are not trapped).
          if (e.key === 'Tab' && !e.shiftKey && !e.altKey && (e.target as HTMLTextAreaElement).dataset.escaped !== '1') {
            e.preventDefault();
            const t = e.target as HTMLTextAreaElement;
            const at = t.selectionStart;
            setText(text.slice(0, at) + '  ' + text.slice(t.selectionEnd));
            requestAnimationFrame(() => t.setSelectionRange(at + 2, at + 2));
          }
          (e.target as HTMLTextAreaElement).dataset.escaped = e.key === 'Escape' ? '1' : '';
        }}
      />
      <p id="values-problem" class={problem ? 'field-error' : 'sub'} aria-live="polite">
        {problem || 'Valid JSON. Tab indents; press Escape, then Tab, to move on.'}
      </p>
      <div class="actions">
        <button type="button" onClick={onCancel}>Cancel</button>
        <button type="submit" class="primary" disabled={!parsed}>Save…</button>
      </div>
    </form>
  );
}
