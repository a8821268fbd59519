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

/** How long ago (wall clock ms), for "last seen": "now" within 5 s. */
export function ago(t: number | null | undefined, now = Date.now()): string {
  if (!t) return "never";
  const s = Math.max(0, (now - t) / 1000);
  if (s < 5) return "now";
  if (s < 120) return `${Math.round(s)} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `on ${new Date(t).toLocaleDateString()}`;
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

/**
 * What is wrong with a size typed in a field, in the API's words (undefined: nothing):
 * not a size, too large, not a whole number of sectors, more than `max` allows.
 */
export function sizeProblem(
  text: string,
  o: { positive?: boolean; sectors?: boolean; max?: { bytes: number; what: string } } = {},
): string | undefined {
  if (text.trim() === "") return undefined;
  const n = parseSize(text);
  if (!Number.isFinite(n)) return "is not a size: write e.g. 512M or 10G";
  if (n > Number.MAX_SAFE_INTEGER) return `is too large (at most ${bytes(Number.MAX_SAFE_INTEGER)})`;
  if (o.positive && n <= 0) return "must be more than 0 bytes";
  if (o.sectors && n % 512 !== 0) return "must be a multiple of 512 bytes";
  if (o.max && n > o.max.bytes) return `is too large: ${o.max.what} holds ${bytes(o.max.bytes)}`;
  return undefined;
}
