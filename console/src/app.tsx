// The shell: skip link, navigation, the sign-in panel when a call was
// refused for its token, and the view the address names.

import { useEffect, useRef, useState } from 'preact/hooks';
import { onAuthProblem, type ApiError } from './api';
import { href, useRoute } from './route';
import { clearToken, getToken } from './token';
import { SignIn } from './views/signin';
import { Overview } from './views/overview';
import { Records } from './views/records';
import { Record } from './views/record';
import { Tail } from './views/tail';
import { Metrics } from './views/metrics';

const NAV = [
  ['', 'Overview'],
  ['records', 'Records'],
  ['tail', 'Live tail'],
  ['metrics', 'Metrics'],
] as const;

export function App() {
  const route = useRoute();
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [session, setSession] = useState(0);
  const main = useRef<HTMLElement>(null);
  const first = useRef(true);

  useEffect(() => onAuthProblem(setProblem), []);
  // Moving between views moves focus to the new view's heading, so screen
  // readers announce it and Tab starts from the content.
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    const h = main.current?.querySelector<HTMLElement>('h1');
    h?.focus();
  }, [route.parts.join('/'), problem]);

  const signedIn = () => {
    setProblem(null);
    setSession((s) => s + 1);
  };
  const signOut = () => {
    clearToken();
    setProblem(null);
    setSession((s) => s + 1);
  };

  const [view, ...args] = route.parts;
  let content: preact.ComponentChildren;
  if (problem || view === 'signin') {
    content = <SignIn problem={problem} onDone={signedIn} />;
  } else if (view === 'records') {
    content = <Records domain={args[0] ?? ''} type={args[1] ?? ''} query={route.query} />;
  } else if (view === 'record' && args.length >= 3) {
    content = <Record domain={args[0]} type={args[1]} recordKey={args.slice(2).join('/')} />;
  } else if (view === 'tail') {
    content = <Tail query={route.query} />;
  } else if (view === 'metrics') {
    content = <Metrics />;
  } else if (!view) {
    content = <Overview />;
  } else {
    content = (
      <section>
        <h1 tabIndex={-1}>Not found</h1>
        <p>There is no view “{view}”. <a href="#/">Go to the overview</a>.</p>
      </section>
    );
  }
  const current = view === 'record' ? 'records' : (view ?? '');
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); main.current?.querySelector<HTMLElement>('h1')?.focus(); }}>
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="#/">stategate <span>console</span></a>
        <nav aria-label="Views">
          <ul>
            {NAV.map(([path, label]) => (
              <li key={path}>
                <a href={href(path ? [path] : [])} aria-current={current === path ? 'page' : undefined}>{label}</a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="session">
          {getToken() ? (
            <button type="button" class="link" onClick={signOut}>Sign out</button>
          ) : (
            <a href="#/signin">Token</a>
          )}
        </div>
      </header>
      <main id="main" ref={main} key={session}>
        {content}
      </main>
    </>
  );
}
