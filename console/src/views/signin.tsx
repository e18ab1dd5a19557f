// The token form: shown when a call was refused for its token (none, a
// wrong one, an expired one), or from the header's link. The token goes
// to session storage only.

import { useState } from 'preact/hooks';
import type { ApiError } from '../api';
import { ErrorNote } from '../components/errors';
import { getToken, setToken } from '../token';

export function SignIn({ problem, onDone }: { problem: ApiError | null; onDone: () => void }) {
  const [text, setText] = useState('');
  const [missing, setMissing] = useState(false);
  const submit = (e: Event) => {
    e.preventDefault();
    if (!text.trim()) {
      setMissing(true);
      return;
    }
    setToken(text);
    setText('');
    onDone();
  };
  const heading = !problem ? 'Token' : problem.kind === 'expired' ? 'Token expired' : problem.kind === 'no-token' ? 'Sign in' : 'Token refused';
  return (
    <section class="signin">
      <h1 tabIndex={-1}>{heading}</h1>
      <ErrorNote error={problem} />
      <p>
        This gateway checks a bearer token (JWT) on every call, and its policies decide what the token may
        see and change. Paste a token from your identity provider. It stays in this browser tab only (session
        storage), is sent in the <code>Authorization</code> header, and is never put in an address.
      </p>
      {getToken() && !problem && <p>A token is set for this tab.</p>}
      <form onSubmit={submit} novalidate>
        <label for="token">Bearer token</label>
        <input
          id="token"
          type="password"
          autocomplete="off"
          spellcheck={false}
          value={text}
          aria-invalid={missing || undefined}
          aria-describedby={missing ? 'token-missing' : undefined}
          onInput={(e) => { setText((e.target as HTMLInputElement).value); setMissing(false); }}
        />
        {missing && <p id="token-missing" class="field-error">Paste a token first.</p>}
        <div class="actions">
          <button type="submit" class="primary">Use token</button>
        </div>
      </form>
    </section>
  );
}
