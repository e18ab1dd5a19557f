// Loading data for a view: once, or again every few seconds (paused while
// the tab is hidden), keeping the last good answer next to the last error.

import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, unreachable } from './api';

export interface Loaded<T> {
  data: T | undefined;
  error: ApiError | null;
  loading: boolean;
  reload: () => void;
}

export function useLoad<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[], every = 0): Loaded<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<ApiError | null>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  const latest = useRef(load);
  latest.current = load;

  useEffect(() => {
    setData(undefined);
    setError(null);
  }, deps);

  useEffect(() => {
    const abort = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      setLoading(true);
      try {
        const d = await latest.current(abort.signal);
        if (abort.signal.aborted) return;
        setData(d);
        setError(null);
      } catch (e) {
        if (abort.signal.aborted) return;
        setError(e instanceof ApiError ? e : unreachable());
      } finally {
        if (!abort.signal.aborted) setLoading(false);
      }
      if (every > 0 && !abort.signal.aborted) timer = setTimeout(run, document.hidden ? every * 4 : every);
    };
    run();
    return () => {
      abort.abort();
      clearTimeout(timer);
    };
  }, [...deps, tick]);

  return { data, error, loading, reload };
}
