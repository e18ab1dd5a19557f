// The bearer token: kept in this tab's session storage only (gone when the
// tab closes), sent in the Authorization header, never logged and never put
// in a URL. A token handed over by a redirect (an identity provider's
// `#access_token=…` fragment, which browsers never send to a server) is
// taken out of the address bar at once.

const KEY = 'stategate.console.token';

export function getToken(): string | null {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null; // storage disabled: the console works without a token (auth off)
  }
}

export function setToken(token: string): void {
  sessionStorage.setItem(KEY, token.trim().replace(/^Bearer\s+/i, ''));
}

export function clearToken(): void {
  sessionStorage.removeItem(KEY);
}

/** Takes `#access_token=…` (or `#token=…`) from the address, if there. */
export function takeTokenFromFragment(): void {
  const hash = location.hash.replace(/^#/, '');
  if (!/(^|&)(access_token|token)=/.test(hash)) return;
  const params = new URLSearchParams(hash);
  const token = params.get('access_token') ?? params.get('token');
  history.replaceState(null, '', location.pathname + location.search + '#/');
  if (token) setToken(token);
}
