// The live view of the gateway: one EventSource on /api/events while logged in. Status
// snapshots (every second) update `status` and a rolling history for the charts; other events
// (detector, agent, switch, replication, recovery, audit, task) go to `events`.
import { signal } from "@preact/signals";
import type { GatewayStatus } from "../src/web/gateway-status.ts";
import type { Rates } from "../src/web/events.ts";

/** A status snapshot as the stream sends it: the gateway's status and each site's throughput. */
export type Status = GatewayStatus & { rates?: Rates };

export interface LiveEvent {
  id: number;
  time: number;
  kind: string;
  subject?: string;
  message: string;
  data?: unknown;
}

export interface Sample {
  t: number;
  journalUsed: number;
  sites: Record<string, { lagBytes: number; lagSeconds: number; lagRecords: number; bps: number }>;
}

export const status = signal<Status | undefined>(undefined);
export const events = signal<LiveEvent[]>([]);
export const history = signal<Sample[]>([]);
/** connecting, live, retrying */
export const connection = signal<"connecting" | "live" | "retrying" | "off">("off");

const KEEP_EVENTS = 300;
const KEEP_SAMPLES = 180;
let source: EventSource | undefined;

function onStatus(e: LiveEvent): void {
  const s = e.data as Status;
  status.value = s;
  const sample: Sample = { t: e.time, journalUsed: s.journal?.used ?? 0, sites: {} };
  for (const site of s.sites ?? []) {
    sample.sites[site.site] = {
      lagBytes: site.lagBytes ?? 0,
      lagSeconds: site.lagSeconds ?? 0,
      lagRecords: (site.volumes ?? []).reduce((n, v) => n + (v.lagRecords ?? 0), 0),
      bps: s.rates?.sites?.[site.site]?.bps ?? 0,
    };
  }
  const h = history.value;
  history.value = [...(h.length >= KEEP_SAMPLES ? h.slice(h.length - KEEP_SAMPLES + 1) : h), sample];
}

export function connect(): void {
  if (source) return;
  connection.value = "connecting";
  source = new EventSource("/api/events");
  source.onopen = () => connection.value = "live";
  source.onerror = () => {
    // the browser retries by itself (retry: 2000); a closed source means the session ended
    connection.value = source?.readyState === EventSource.CLOSED ? "off" : "retrying";
  };
  source.onmessage = (m) => {
    let e: LiveEvent;
    try {
      e = JSON.parse(m.data);
    } catch {
      return;
    }
    if (e.kind === "status") onStatus(e);
    else if (!events.value.some((x) => x.id === e.id)) {
      const list = [...events.value, e];
      events.value = list.length > KEEP_EVENTS ? list.slice(list.length - KEEP_EVENTS) : list;
    }
  };
}

export function disconnect(): void {
  source?.close();
  source = undefined;
  connection.value = "off";
  status.value = undefined;
  events.value = [];
  history.value = [];
}
