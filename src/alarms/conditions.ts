// Alarm conditions read from the local gateway's status, once a second: a service failed over, a
// site link down for a while, a task's remote copy lagging more than its RPO target, the journal
// near full, a site's retention full (points expired before their window). Each raises an alarm when it begins and a resolved one when it ends; what holds at the
// first look (a gateway restarted while a service runs at its remote site) is taken as known,
// except a site down, which only counts once it has been down for `siteDownAfterMs`. Pure.
import type { AlarmInput } from "./alarm.ts";

export interface ConditionSnapshot {
  services?: { name: string; state: string; site?: string }[];
  sites?: { site: string; connected?: boolean; lagSeconds?: number; lastError?: string | null }[];
  journal?: { used?: number; capacity?: number };
  /** Tasks with an RPO target, the sites they replicate to and their state. */
  tasks?: { name: string; state: string; rpoMs?: number; sites: string[] }[];
  /** Each site's retention: how often space made points expire before the window, per volume. */
  retention?: { site: string; windowMs?: number; volumes?: { volume: string; forcedExpiries: number }[] }[];
}

export interface ConditionOptions {
  siteDownAfterMs: number;
  /** Journal use that raises the alarm, and the lower one that ends it. */
  journalHigh: number;
  journalLow: number;
}

export const DEFAULT_CONDITIONS: ConditionOptions = {
  siteDownAfterMs: 10_000,
  journalHigh: 0.9,
  journalLow: 0.8,
};

export interface ConditionState {
  services: Map<string, string>;
  /** Since when each site's link is down, and whether that was alarmed. */
  down: Map<string, { since: number; alarmed: boolean }>;
  lagging: Set<string>;
  journalFull: boolean;
  /** Forced expiries seen per VOLUME@SITE. */
  forced: Map<string, number>;
}

/** Tasks whose replication runs: their lag is measured against their RPO. */
const REPLICATING = new Set(["syncing", "protected", "degraded", "testing"]);

export function initialConditions(): ConditionState {
  return { services: new Map(), down: new Map(), lagging: new Set(), journalFull: false, forced: new Map() };
}

/** The alarms between the previous state and this snapshot, and the next state. */
export function evaluateConditions(
  prev: ConditionState | undefined,
  snap: ConditionSnapshot,
  now: number,
  o: ConditionOptions = DEFAULT_CONDITIONS,
): { state: ConditionState; alarms: AlarmInput[] } {
  const first = prev === undefined;
  const p = prev ?? initialConditions();
  const alarms: AlarmInput[] = [];
  const state = initialConditions();

  for (const s of snap.services ?? []) {
    state.services.set(s.name, s.state);
    const was = p.services.get(s.name);
    if (first || was === undefined || was === s.state) continue;
    if (s.state === "failed-over") {
      alarms.push({
        kind: "failover",
        severity: "critical",
        subject: `service:${s.name}`,
        summary: `service ${s.name} failed over to site ${s.site ?? "?"}`,
        detail: { service: s.name, site: s.site ?? null, from: was },
      });
    } else if (was === "failed-over" && s.state === "protected") {
      alarms.push({
        kind: "failover",
        severity: "critical",
        subject: `service:${s.name}`,
        summary: `service ${s.name} is back at its local site`,
        detail: { service: s.name },
        resolved: true,
      });
    }
  }

  for (const s of snap.sites ?? []) {
    if (s.connected) {
      if (p.down.get(s.site)?.alarmed) {
        alarms.push({
          kind: "site-down",
          severity: "critical",
          subject: `site:${s.site}`,
          summary: `the link to site ${s.site} is up again`,
          detail: { site: s.site },
          resolved: true,
        });
      }
      continue;
    }
    const d = p.down.get(s.site) ?? { since: now, alarmed: false };
    if (!d.alarmed && now - d.since >= o.siteDownAfterMs) {
      d.alarmed = true;
      alarms.push({
        kind: "site-down",
        severity: "critical",
        subject: `site:${s.site}`,
        summary: `the link to site ${s.site} has been down for ${Math.round((now - d.since) / 1000)} s${
          s.lastError ? `: ${s.lastError}` : ""
        }`,
        detail: { site: s.site, downSinceMs: Math.round(now - d.since), lastError: s.lastError ?? null },
      });
    }
    state.down.set(s.site, { ...d });
  }

  const lag = new Map((snap.sites ?? []).map((s) => [s.site, (s.lagSeconds ?? 0) * 1000]));
  for (const t of snap.tasks ?? []) {
    if (t.rpoMs === undefined || !REPLICATING.has(t.state)) continue;
    for (const site of t.sites) {
      const key = `${t.name}@${site}`;
      const ms = lag.get(site);
      if (ms === undefined) continue;
      const over = ms > t.rpoMs;
      if (over) state.lagging.add(key);
      if (over && !p.lagging.has(key)) {
        alarms.push({
          kind: "rpo-exceeded",
          severity: "warning",
          subject: `task:${t.name}`,
          summary: `task ${t.name}: site ${site} lags ${
            (ms / 1000).toFixed(1)
          } s, more than its RPO target of ${(t.rpoMs / 1000).toFixed(1)} s`,
          detail: { task: t.name, site, lagMs: Math.round(ms), rpoMs: t.rpoMs },
        });
      } else if (!over && p.lagging.has(key)) {
        alarms.push({
          kind: "rpo-exceeded",
          severity: "warning",
          subject: `task:${t.name}`,
          summary: `task ${t.name}: site ${site} is within its RPO target again`,
          detail: { task: t.name, site, lagMs: Math.round(ms), rpoMs: t.rpoMs },
          resolved: true,
        });
      }
    }
  }

  for (const r of snap.retention ?? []) {
    for (const v of r.volumes ?? []) {
      const key = `${v.volume}@${r.site}`;
      const was = p.forced.get(key);
      state.forced.set(key, v.forcedExpiries);
      // a site that restarted counts from 0 again: only an increase is news
      if (first || was === undefined || v.forcedExpiries <= was) continue;
      alarms.push({
        kind: "retention-full",
        severity: "warning",
        subject: `site:${r.site}`,
        summary: `site ${r.site}: the retention of ${v.volume} is full: points younger than its window ` +
          "expired (replication goes on; raise --retention-size or shorten --retention)",
        detail: {
          site: r.site,
          volume: v.volume,
          forcedExpiries: v.forcedExpiries,
          windowMs: r.windowMs ?? null,
        },
      });
    }
  }

  const used = snap.journal?.used ?? 0, capacity = snap.journal?.capacity ?? 0;
  const ratio = capacity > 0 ? used / capacity : 0;
  state.journalFull = p.journalFull ? ratio >= o.journalLow : ratio >= o.journalHigh;
  if (state.journalFull !== p.journalFull) {
    alarms.push({
      kind: "journal-near-full",
      severity: "warning",
      subject: "journal",
      summary: state.journalFull
        ? `the journal is ${(ratio * 100).toFixed(0)} % full: a site or the mirror holds its tail`
        : `the journal is ${(ratio * 100).toFixed(0)} % full again`,
      detail: { used, capacity },
      ...(state.journalFull ? {} : { resolved: true }),
    });
  }
  return { state, alarms };
}
