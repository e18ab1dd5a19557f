// A confirmation as a modal <dialog>: focus moves into it (Cancel first),
// Escape cancels, and the page behind is inert until it closes.

import { useEffect, useRef } from 'preact/hooks';

export interface Ask {
  title: string;
  body: preact.ComponentChildren;
  confirm: string;
  danger?: boolean;
  resolve: (yes: boolean) => void;
}

export function Confirm({ ask }: { ask: Ask | null }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (ask && !d.open) d.showModal();
    if (!ask && d.open) d.close();
  }, [ask]);
  const answer = (yes: boolean) => {
    ref.current?.close();
    ask?.resolve(yes);
  };
  return (
    <dialog ref={ref} class="confirm" aria-labelledby="confirm-title" onCancel={(e) => { e.preventDefault(); answer(false); }}>
      {ask && (
        <form method="dialog" onSubmit={(e) => { e.preventDefault(); answer(true); }}>
          <h2 id="confirm-title">{ask.title}</h2>
          <div class="confirm-body">{ask.body}</div>
          <div class="actions">
            <button type="button" autofocus onClick={() => answer(false)}>Cancel</button>
            <button type="submit" class={ask.danger ? 'danger' : 'primary'}>{ask.confirm}</button>
          </div>
        </form>
      )}
    </dialog>
  );
}
