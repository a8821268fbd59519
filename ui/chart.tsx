// A line chart in plain SVG: one or more series over time, scaled to their own maximum, with
// a few grid lines and labels. data-* attributes expose what is drawn (tests read them).
export interface Series {
  label: string;
  points: { t: number; v: number }[];
  format: (v: number) => string;
}

export function LineChart(
  { series, title, windowMs = 180_000, height = 160, id }: {
    series: Series[];
    title: string;
    windowMs?: number;
    height?: number;
    id?: string;
  },
) {
  const W = 600, H = height, L = 64, R = 8, T = 10, B = 22;
  const now = Math.max(Date.now(), ...series.flatMap((s) => s.points.map((p) => p.t)));
  const t0 = now - windowMs;
  const max = Math.max(1e-9, ...series.flatMap((s) => s.points.map((p) => p.v)));
  const x = (t: number) => L + ((t - t0) / windowMs) * (W - L - R);
  const y = (v: number) => T + (1 - v / max) * (H - T - B);
  const count = series.reduce((n, s) => n + s.points.length, 0);
  const fmt = series[0]?.format ?? String;
  return (
    <figure class="chart-figure">
      <svg
        class="chart"
        viewBox={`0 0 ${W} ${H}`}
        role="img"
        aria-label={`${title}: ${
          series.map((s) => `${s.label} now ${s.format(s.points.at(-1)?.v ?? 0)}`).join(", ")
        }`}
        data-points={String(count)}
        data-max={String(max)}
        id={id}
      >
        {[0, 0.5, 1].map((f) => (
          <g key={f}>
            <line class="grid-line" x1={L} x2={W - R} y1={y(max * f)} y2={y(max * f)} />
            <text x={L - 6} y={y(max * f) + 4} text-anchor="end">{count ? fmt(max * f) : ""}</text>
          </g>
        ))}
        <line class="axis" x1={L} x2={W - R} y1={H - B} y2={H - B} />
        <text x={L} y={H - 6}>-{Math.round(windowMs / 1000)} s</text>
        <text x={W - R} y={H - 6} text-anchor="end">now</text>
        {series.map((s, i) => {
          const pts = s.points.filter((p) => p.t >= t0);
          if (pts.length === 0) return null;
          const d = pts.map((p, j) => `${j ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
          return (
            <path
              key={s.label}
              class={`s${i % 3}`}
              d={d}
              data-series={s.label}
              data-last={String(pts.at(-1)!.v)}
            />
          );
        })}
      </svg>
      <figcaption class="legend">
        <strong>{title}</strong>
        {series.map((s, i) => (
          <span key={s.label}>
            <span class={`sw s${i % 3}`} aria-hidden="true" />
            {s.label}: {s.format(s.points.at(-1)?.v ?? 0)}
          </span>
        ))}
      </figcaption>
    </figure>
  );
}
