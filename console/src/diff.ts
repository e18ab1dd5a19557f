// The difference between two versions' values, as a list of dot paths
// (the query language's paths) that were added, removed or changed.
// Objects are walked; arrays and scalars are compared whole.

export type Change = { path: string; kind: 'added' | 'removed' | 'changed'; before?: unknown; after?: unknown };

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

export function diff(before: unknown, after: unknown, path = ''): Change[] {
  if (isObject(before) && isObject(after)) {
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
    return keys.flatMap((k) => {
      const p = path ? `${path}.${k}` : k;
      if (!(k in before)) return [{ path: p, kind: 'added' as const, after: after[k] }];
      if (!(k in after)) return [{ path: p, kind: 'removed' as const, before: before[k] }];
      return diff(before[k], after[k], p);
    });
  }
  if (JSON.stringify(before) === JSON.stringify(after)) return [];
  if (before === undefined) return [{ path: path || '(values)', kind: 'added', after }];
  if (after === undefined) return [{ path: path || '(values)', kind: 'removed', before }];
  return [{ path: path || '(values)', kind: 'changed', before, after }];
}
