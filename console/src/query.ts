// The query builder's model: conditions on fields, written as the
// `query_string` JSON the API takes (MongoDB's query language).

export const OPERATORS = [
  ['$eq', 'equals'],
  ['$ne', 'does not equal'],
  ['$gt', 'greater than'],
  ['$gte', 'at least'],
  ['$lt', 'less than'],
  ['$lte', 'at most'],
  ['$in', 'is one of'],
  ['$nin', 'is none of'],
  ['$exists', 'exists'],
  ['$regex', 'matches regex'],
] as const;

export type Operator = (typeof OPERATORS)[number][0];

export interface Condition {
  field: string;
  op: Operator;
  value: string;
}

/** A typed value: JSON when it parses (`3`, `true`, `"x"`, `[1,2]`), else the text. */
export function typed(text: string): unknown {
  const t = text.trim();
  if (t === '') return '';
  try {
    return JSON.parse(t);
  } catch {
    return text;
  }
}

function operand(c: Condition): unknown {
  switch (c.op) {
    case '$exists':
      return c.value !== 'false';
    case '$regex':
      return c.value;
    case '$in':
    case '$nin': {
      const v = typed(c.value);
      return Array.isArray(v) ? v : c.value.split(',').map((s) => typed(s.trim()));
    }
    default:
      return typed(c.value);
  }
}

/** The query_string for the conditions ("" when there are none). */
export function toQueryString(conditions: Condition[], match: 'all' | 'any'): string {
  const used = conditions.filter((c) => c.field.trim() !== '');
  if (used.length === 0) return '';
  const one = (c: Condition) => ({ [c.field.trim()]: c.op === '$eq' ? operand(c) : { [c.op]: operand(c) } });
  if (match === 'any') return JSON.stringify({ $or: used.map(one) });
  const out: Record<string, unknown> = {};
  const parts: Record<string, unknown>[] = [];
  for (const c of used) {
    const field = c.field.trim();
    const cond = one(c)[field];
    const prev = out[field];
    const mergeable = (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v) && Object.keys(v).every((k) => k.startsWith('$'));
    if (prev === undefined) out[field] = cond;
    else if (mergeable(prev) && mergeable(cond) && !Object.keys(cond as object).some((k) => k in (prev as object))) {
      out[field] = { ...(prev as object), ...(cond as object) };
    } else parts.push({ [field]: cond });
  }
  return JSON.stringify(parts.length ? { $and: [out, ...parts] } : out);
}
