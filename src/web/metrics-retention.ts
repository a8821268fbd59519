// /metrics families of the remote sites' retention (issue 15): window, space, points and their
// age per site and volume, and the expiries space forced.
import type { Exposition } from "./metrics.ts";
import type { SiteRetention } from "../points/watch.ts";

export function renderRetentionMetrics(
  x: Exposition,
  retention: SiteRetention[] | undefined,
  now = Date.now(),
): void {
  const on = x.family(
    "continuum_retention_enabled",
    "gauge",
    "1 if the site keeps recovery points (--retention)",
  );
  const window = x.family(
    "continuum_retention_window_seconds",
    "gauge",
    "How long the site keeps every point",
  );
  const max = x.family(
    "continuum_retention_max_bytes",
    "gauge",
    "The space bound of each volume's retention log",
  );
  const bytes = x.family(
    "continuum_retention_bytes",
    "gauge",
    "Bytes of the volume's retention log at the site",
  );
  const points = x.family(
    "continuum_retention_points",
    "gauge",
    "Recovery points held (barriers, resync ends, base)",
  );
  const oldest = x.family(
    "continuum_retention_oldest_point_age_seconds",
    "gauge",
    "Age of the oldest point held (agent clock)",
  );
  const newest = x.family("continuum_retention_newest_seq", "gauge", "Newest sequence the retention holds");
  const forced = x.family(
    "continuum_retention_forced_expiries_total",
    "counter",
    "Expiries the space bound forced before the window (since the site started)",
  );
  for (const r of retention ?? []) {
    // a site keeps points with --retention, or for the volumes whose task asks
    on(r.ok && ((r.windowMs ?? 0) > 0 || (r.volumes?.length ?? 0) > 0) ? 1 : 0, { site: r.site });
    if (!r.ok) continue;
    window((r.windowMs ?? 0) / 1000, { site: r.site });
    max(r.maxBytes ?? 0, { site: r.site });
    for (const v of r.volumes ?? []) {
      const l = { site: r.site, volume: v.volume };
      bytes(v.bytes, l);
      points(v.points, l);
      if (v.oldest?.time) oldest(Math.max(0, (now - v.oldest.time) / 1000), l);
      newest(v.newest.seq, l);
      forced(v.forcedExpiries, l);
    }
  }
}
