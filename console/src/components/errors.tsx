// How a failed call is shown: what it means for the user, then the
// server's own message (a policy's refusal says why), as an alert.

import type { ApiError } from '../api';
import { visibleMessage } from '../format';

const MEANING: Record<ApiError['kind'], string> = {
  'no-token': 'This gateway needs a token.',
  'bad-token': 'The gateway refused the token.',
  expired: 'The token has expired.',
  forbidden: 'Refused by the gateway’s policy.',
  unavailable: 'The gateway or its backend is unavailable.',
  'not-found': 'Not found.',
  conflict: 'The record changed meanwhile.',
  invalid: 'The gateway refused the request.',
  other: 'The call failed.',
};

export function ErrorNote({ error, what }: { error: ApiError | null | undefined; what?: string }) {
  if (!error) return null;
  return (
    <div class={`note error kind-${error.kind}`} role="alert">
      <strong>
        {what ? `${what}: ` : ''}
        {MEANING[error.kind]}
      </strong>{' '}
      <span class="server-message">{visibleMessage(error.message)}</span>
    </div>
  );
}

export function Empty({ children }: { children: preact.ComponentChildren }) {
  return <p class="note empty">{children}</p>;
}
