// Numbers for people.
export function bytes(n: number | undefined | null): string {
  if (n === undefined || n === null || !Number.isFinite(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0, v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v.toFixed(0) : v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

export function rate(bps: number | undefined | null): string {
  return bps === undefined || bps === null ? "—" : `${bytes(bps)}/s`;
}

export function seconds(s: number | undefined | null): string {
  if (s === undefined || s === null || !Number.isFinite(s)) return "—";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function duration(ms: number | undefined | null): string {
  return ms === undefined || ms === null ? "—" : seconds(ms / 1000);
}

export function clock(t: number): string {
  return new Date(t).toLocaleTimeString([], { hour12: false });
}

export function dateTime(t: number | null | undefined): string {
  if (!t) return "—";
  return new Date(t).toLocaleString([], { hour12: false });
}

/** "10G", "512M", "4096", "1.5T" → bytes (binary units); NaN when it is not a size. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$/i.exec(text);
  if (!m) return NaN;
  const mult = { "": 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 }[m[2].toLowerCase()] ??
    NaN;
  return Math.round(Number(m[1]) * mult);
}
