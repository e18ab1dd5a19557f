// Small SVG charts. Each is a <figure> whose caption names it and whose
// image has a text alternative with the latest values; the tables beside
// them carry the same numbers for screen readers.

const W = 480;
const H = 140;
const PAD = { l: 44, r: 8, t: 8, b: 18 };

export interface Series {
  name: string;
  values: number[];
  cls: string;
}

function ticks(max: number): number[] {
  if (max <= 0) return [0, 1];
  const step = 10 ** Math.floor(Math.log10(max));
  const top = Math.ceil(max / step) * step;
  return [0, top / 2, top];
}

/** Lines over the samples so far, spread across the width (they scroll once the caller keeps a full window). */
export function LineChart({ title, series, unit }: { title: string; series: Series[]; unit: string }) {
  const samples = Math.max(2, ...series.map((s) => s.values.length));
  const max = Math.max(0, ...series.flatMap((s) => s.values));
  const t = ticks(max);
  const top = t[t.length - 1] || 1;
  const x = (i: number) => PAD.l + ((W - PAD.l - PAD.r) * i) / Math.max(1, samples - 1);
  const y = (v: number) => H - PAD.b - ((H - PAD.t - PAD.b) * v) / top;
  const latest = series.map((s) => `${s.name} ${fmt(s.values[s.values.length - 1] ?? 0)} ${unit}`).join(', ');
  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={`${title}: now ${latest}`} preserveAspectRatio="none">
        {t.map((v) => (
          <g key={v}>
            <line class="grid" x1={PAD.l} x2={W - PAD.r} y1={y(v)} y2={y(v)} />
            <text class="tick" x={PAD.l - 4} y={y(v) + 4} text-anchor="end">{fmt(v)}</text>
          </g>
        ))}
        {series.map((s) => {
          const offset = samples - s.values.length;
          const points = s.values.map((v, i) => `${x(i + offset).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
          return <polyline key={s.name} class={`line ${s.cls}`} points={points} />;
        })}
      </svg>
      <ul class="legend">
        {series.map((s) => (
          <li key={s.name}><span class={`swatch ${s.cls}`} aria-hidden="true" />{s.name}: {fmt(s.values[s.values.length - 1] ?? 0)} {unit}</li>
        ))}
      </ul>
    </figure>
  );
}

export interface Bar {
  label: string;
  parts: { value: number; cls: string; name: string }[];
}

export function BarChart({ title, bars, unit, format = fmt }: { title: string; bars: Bar[]; unit: string; format?: (n: number) => string }) {
  const rowH = 22;
  const labelW = 190;
  const height = Math.max(1, bars.length) * rowH + 4;
  const max = Math.max(0, ...bars.map((b) => b.parts.reduce((a, p) => a + p.value, 0))) || 1;
  const scale = (v: number) => ((W - labelW - 70) * v) / max;
  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      {bars.length === 0 ? (
        <p class="note empty">No calls yet.</p>
      ) : (
        <svg viewBox={`0 0 ${W} ${height}`} role="img" aria-label={`${title}: ${bars.map((b) => `${b.label} ${b.parts.map((p) => `${p.name} ${format(p.value)}`).join(' ')}`).join('; ')}`}>
          {bars.map((b, i) => {
            let at = labelW;
            const total = b.parts.reduce((a, p) => a + p.value, 0);
            return (
              <g key={b.label}>
                <text class="bar-label" x={labelW - 6} y={i * rowH + 15} text-anchor="end">{b.label}</text>
                {b.parts.map((p) => {
                  const w = scale(p.value);
                  const rect = <rect key={p.name} class={`bar ${p.cls}`} x={at} y={i * rowH + 3} width={Math.max(0, w)} height={rowH - 6} />;
                  at += w;
                  return rect;
                })}
                <text class="bar-value" x={at + 4} y={i * rowH + 15}>{format(total)}{unit ? ` ${unit}` : ''}</text>
              </g>
            );
          })}
        </svg>
      )}
    </figure>
  );
}

function fmt(n: number): string {
  if (n === 0) return '0';
  if (Math.abs(n) >= 1000) return `${(n / 1000).toFixed(1)}k`;
  if (Math.abs(n) >= 10) return n.toFixed(0);
  return n.toFixed(n < 1 ? 2 : 1);
}
