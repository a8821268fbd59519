// GET /metrics: the local gateway's state in the Prometheus text exposition format (0.0.4):
// every family with its HELP and TYPE lines, label values escaped, one sample per line.
import type { RecoveryView } from "./events.ts";
import { TASK_STATES } from "../tasks/model.ts";
import { type QosStatusLike, renderQosMetrics } from "./metrics-qos.ts";
import { renderRetentionMetrics } from "./metrics-retention.ts";
import type { SiteRetention } from "../points/watch.ts";
import type { GatewayStatus } from "./gateway-status.ts";

type Labels = Record<string, string | number>;

/** Builds an exposition: families in the order first declared, samples under their family. */
export class Exposition {
  private families = new Map<string, { help: string; type: string; lines: string[] }>();

  family(name: string, type: "gauge" | "counter", help: string): (value: number, labels?: Labels) => void {
    let f = this.families.get(name);
    if (!f) {
      f = { help, type, lines: [] };
      this.families.set(name, f);
    }
    const fam = f;
    return (value, labels) => {
      const l = labels && Object.keys(labels).length
        ? `{${Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(String(v))}"`).join(",")}}`
        : "";
      fam.lines.push(`${name}${l} ${formatValue(value)}`);
    };
  }

  text(): string {
    const out: string[] = [];
    for (const [name, f] of this.families) {
      out.push(`# HELP ${name} ${f.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`);
      out.push(`# TYPE ${name} ${f.type}`);
      out.push(...f.lines);
    }
    return out.join("\n") + "\n";
  }
}

export function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

export interface MetricsInput {
  status: GatewayStatus;
  /** Acknowledged bytes per second per site, from the collector. */
  rates?: Record<string, { bps: number }>;
  recoveries?: RecoveryView[];
  tasks?: { name: string; state: string }[];
  web?: { loginFailures: number; eventStreams: number };
}

export const DETECTOR_STATES = ["TRUST", "SUSPECT", "FAILURE"] as const;
export const SERVICE_STATES = ["protected", "failing-over", "failed-over"] as const;
export const COPY_STATES = ["consistent", "syncing", "degraded", "inconsistent"] as const;

export function renderMetrics(m: MetricsInput): string {
  const x = new Exposition();
  const s = m.status;
  x.family("continuum_up", "gauge", "1 while the gateway serves")(1, { site: s.site ?? "" });
  x.family("continuum_uptime_seconds", "gauge", "Seconds since the gateway started")(
    (s.uptimeMs ?? 0) / 1000,
  );

  // agents and their detectors
  const connected = x.family(
    "continuum_agent_connected",
    "gauge",
    "1 if the agent's link to the gateway is up",
  );
  const agents = new Set([...(s.agents ?? []), ...(s.liveness ?? []).map((l) => l.agent)]);
  for (const a of [...agents].sort()) connected((s.agents ?? []).includes(a) ? 1 : 0, { agent: a });
  const refused = x.family(
    "continuum_agent_refused_total",
    "counter",
    "Connections refused per claimed agent name",
  );
  for (const [a, n] of Object.entries(s.refused ?? {})) refused(n, { agent: a });
  const det = x.family(
    "continuum_detector_state",
    "gauge",
    "Failure detector output per agent: 1 for the current state (TRUST, SUSPECT, FAILURE), 0 for the others",
  );
  const age = x.family(
    "continuum_detector_heartbeat_age_seconds",
    "gauge",
    "Seconds since the agent's last heartbeat",
  );
  const healthy = x.family(
    "continuum_service_check_healthy",
    "gauge",
    "1 if the agent's service checks pass",
  );
  for (const l of s.liveness ?? []) {
    for (const st of DETECTOR_STATES) det(l.state === st ? 1 : 0, { agent: l.agent, state: st });
    if (l.sinceLastHeartbeatMs !== undefined) age(l.sinceLastHeartbeatMs / 1000, { agent: l.agent });
    healthy(l.serviceHealthy === false ? 0 : 1, { agent: l.agent });
  }
  x.family("continuum_heartbeats_accepted_total", "counter", "Heartbeats accepted")(
    s.heartbeats?.accepted ?? 0,
  );
  const dropped = x.family("continuum_heartbeats_dropped_total", "counter", "Heartbeats dropped, by reason");
  for (const [r, n] of Object.entries(s.heartbeats?.dropped ?? {})) dropped(n, { reason: r });

  // service switch
  const sw = x.family(
    "continuum_service_state",
    "gauge",
    "Protected service switch state: 1 for the current state (protected, failing-over, failed-over)",
  );
  for (const sv of s.services ?? []) {
    for (const st of SERVICE_STATES) sw(sv.state === st ? 1 : 0, { service: sv.name, state: st });
  }

  // journal
  const j = s.journal ?? {};
  const used = j.used ?? Math.max(0, (j.head ?? 0) - (j.tail ?? 0));
  x.family("continuum_journal_used_bytes", "gauge", "Journal bytes held (not yet released by every reader)")(
    used,
  );
  x.family("continuum_journal_capacity_bytes", "gauge", "Journal ring capacity")(j.capacity ?? 0);
  x.family("continuum_journal_used_ratio", "gauge", "Journal use as a fraction of its capacity")(
    j.capacity ? used / j.capacity : 0,
  );
  x.family(
    "continuum_journal_head_bytes",
    "counter",
    "Journal position written so far (bytes since creation)",
  )(
    j.head ?? 0,
  );

  // volumes
  const size = x.family("continuum_volume_size_bytes", "gauge", "Size of a protected volume");
  const last = x.family(
    "continuum_volume_last_seq",
    "gauge",
    "Highest sequence number received from the agent",
  );
  const durable = x.family(
    "continuum_volume_durable_seq",
    "gauge",
    "Highest sequence number durable in the journal",
  );
  const mirror = x.family(
    "continuum_volume_mirror_seq",
    "gauge",
    "Highest sequence number applied to the mirror (LGP)",
  );
  for (const v of s.volumes ?? []) {
    const l = { agent: v.agent, volume: v.name };
    size(v.size ?? 0, l);
    last(v.lastSeq ?? 0, l);
    durable(v.durableSeq ?? 0, l);
    mirror(v.mirrorSeq ?? 0, l);
  }

  // remote sites
  const up = x.family("continuum_site_connected", "gauge", "1 if the link to the remote site is up");
  const lagB = x.family(
    "continuum_site_lag_bytes",
    "gauge",
    "Journal bytes durable here and not yet acknowledged by the site",
  );
  const lagS = x.family(
    "continuum_site_lag_seconds",
    "gauge",
    "Age of the oldest record not yet acknowledged by the site",
  );
  const lagR = x.family(
    "continuum_site_lag_records",
    "gauge",
    "Records of a volume not yet acknowledged by the site",
  );
  const acked = x.family(
    "continuum_site_acked_seq",
    "gauge",
    "Highest sequence number of a volume the site acknowledged",
  );
  const bytes = x.family(
    "continuum_site_replicated_bytes_total",
    "counter",
    "Bytes acknowledged by the site",
  );
  const rate = x.family(
    "continuum_site_throughput_bytes_per_second",
    "gauge",
    "Bytes acknowledged per second (last second)",
  );
  const rtt = x.family("continuum_site_rtt_seconds", "gauge", "Round-trip time to the site");
  const inflight = x.family(
    "continuum_site_in_flight_bytes",
    "gauge",
    "Bytes sent to the site and not yet acknowledged",
  );
  const copy = x.family(
    "continuum_site_copy_state",
    "gauge",
    "State of a volume's copy at the site: 1 for the current state (consistent, syncing, degraded, inconsistent)",
  );
  for (const site of s.sites ?? []) {
    const l = { site: site.site };
    up(site.connected ? 1 : 0, l);
    lagB(site.lagBytes ?? 0, l);
    lagS(site.lagSeconds ?? 0, l);
    bytes(site.ackedBytes ?? 0, l);
    rate(m.rates?.[site.site]?.bps ?? 0, l);
    if (site.rttMs !== null && site.rttMs !== undefined) rtt(site.rttMs / 1000, l);
    inflight(site.inFlightBytes ?? 0, l);
    for (const v of site.volumes ?? []) {
      const vl = { site: site.site, agent: v.agent ?? "", volume: v.name ?? "" };
      lagR(v.lagRecords ?? 0, vl);
      acked(v.ackedSeq ?? 0, vl);
      const states = (COPY_STATES as readonly string[]).includes(v.state)
        ? COPY_STATES
        : [...COPY_STATES, v.state];
      for (const st of states) copy(v.state === st ? 1 : 0, { ...vl, state: st });
    }
  }

  // recovery
  const count = x.family(
    "continuum_recoveries",
    "gauge",
    "Recoveries by status (scheduled, running, done, failed, cancelled)",
  );
  const byStatus = new Map<string, number>();
  for (const r of m.recoveries ?? []) byStatus.set(r.status, (byStatus.get(r.status) ?? 0) + 1);
  for (const st of ["scheduled", "running", "done", "failed", "cancelled"]) {
    count(byStatus.get(st) ?? 0, { status: st });
  }
  const prog = x.family(
    "continuum_recovery_progress_ratio",
    "gauge",
    "Fraction of chunks a running recovery has done",
  );
  const moved = x.family("continuum_recovery_moved_bytes", "gauge", "Bytes a running recovery has copied");
  const rrate = x.family(
    "continuum_recovery_rate_bytes_per_second",
    "gauge",
    "Copy rate of a running recovery",
  );
  const eta = x.family(
    "continuum_recovery_eta_seconds",
    "gauge",
    "Estimated seconds until a running recovery is done",
  );
  for (const r of m.recoveries ?? []) {
    const p = r.progress;
    if (r.status !== "running" || !p) continue;
    const l = { id: r.id, volume: r.volume };
    prog(p.chunks ? p.done / p.chunks : 0, l);
    moved(p.bytesMoved, l);
    rrate(p.rateBps, l);
    if (p.etaMs !== null) eta(p.etaMs / 1000, l);
  }

  // tasks
  const ts = x.family(
    "continuum_task_state",
    "gauge",
    "Protection task state: 1 for the current state, 0 for the others",
  );
  for (const t of m.tasks ?? []) {
    for (const st of TASK_STATES) ts(t.state === st ? 1 : 0, { task: t.name, state: st });
  }

  if (m.web) {
    x.family("continuum_web_login_failures_total", "counter", "Failed logins since start")(
      m.web.loginFailures,
    );
    x.family("continuum_web_event_streams", "gauge", "Open event streams (GET /api/events)")(
      m.web.eventStreams,
    );
  }
  renderQosMetrics(x, s as QosStatusLike);
  renderRetentionMetrics(x, (s as { retention?: SiteRetention[] }).retention);
  return x.text();
}
