// A data table in a frame that scrolls sideways on narrow screens (and can
// be scrolled with the keyboard: the frame is focusable and named).
// Columns are given as names; a name ending in `#` is numeric (right-aligned).

export function Table({ label, cls, columns, children }: { label: string; cls?: string; columns: string[]; children: preact.ComponentChildren }) {
  return (
    <div class="table-wrap" role="region" aria-label={label} tabIndex={0}>
      <table class={cls}>
        <thead>
          <tr>
            {columns.map((c) =>
              c.endsWith('#') ? <th key={c} scope="col" class="num">{c.slice(0, -1)}</th> : <th key={c} scope="col">{c || <span class="visually-hidden">Actions</span>}</th>,
            )}
          </tr>
        </thead>
        <tbody>{children}</tbody>
      </table>
    </div>
  );
}
