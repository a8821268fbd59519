// Status messages for the page, as the paper has them: collected from the modules, filtered,
// pushed. The EventBus is an in-process publish/subscribe with a short history; the
// StatusCollector feeds it:
//   status       a snapshot of the gateway's status every second (with derived rates),
//   detector     an agent's detector state changed (TRUST / SUSPECT / FAILURE),
//   agent        an agent connected or went away,
//   switch       a protected service's switch state changed,
//   replication  a remote site connected or disconnected, or a copy's state changed,
//   recovery     a recovery's progress or status,
//   audit        every new row of the audit log (read back from the table, see below),
//   task         a task's state changed (published by the task API and the TaskStore), or one
//                of its copies could not be assigned, or was assigned after that.
// GET /api/events streams them as server-sent events, `?filter=kind,kind` picks kinds.
//
// The audit log is followed by reading new rows of its table (id > the last seen) twice a
// second rather than by wrapping Audit: every writer (the failover controller, the detectors,
// recovery) already records through its own Audit instance, constructed outside the web layer,
// and the table is the single place all of them meet — so no caller changes, nothing is missed,
// and each event carries the row's id, which the page matches against GET /api/audit.
import { desc, gt } from "drizzle-orm";
import type { Db } from "../db/db.ts";
import { auditLog } from "../db/schema.ts";
import { logger } from "../log.ts";
import type { GatewayStatus } from "./gateway-status.ts";

const log = logger("events");

export const EVENT_KINDS = [
  "status",
  "detector",
  "agent",
  "switch",
  "replication",
  "recovery",
  "audit",
  "task",
] as const;
export type EventKind = typeof EVENT_KINDS[number];

export interface BusEvent {
  id: number;
  time: number;
  kind: EventKind;
  /** What it concerns: agent:A, site:S, service:N, task:T, recovery:ID. */
  subject?: string;
  /** One line for people. */
  message: string;
  data?: unknown;
}

type Listener = (e: BusEvent) => void;

export class EventBus {
  private seq = 0;
  private history: BusEvent[] = [];
  private listeners = new Set<{ kinds?: Set<string>; fn: Listener }>();
  latestStatus: BusEvent | undefined;

  constructor(private readonly keep = 500) {}

  publish(e: Omit<BusEvent, "id" | "time"> & { time?: number }): BusEvent {
    const ev: BusEvent = { id: ++this.seq, time: e.time ?? Date.now(), ...e } as BusEvent;
    if (ev.kind === "status") this.latestStatus = ev;
    else {
      this.history.push(ev);
      if (this.history.length > this.keep) this.history.splice(0, this.history.length - this.keep);
    }
    for (const l of this.listeners) {
      if (l.kinds && !l.kinds.has(ev.kind)) continue;
      try {
        l.fn(ev);
      } catch (err) {
        log.warn("event listener failed", { error: err });
      }
    }
    return ev;
  }

  /** Calls fn with every event of `kinds` (all when undefined) until the returned function is called. */
  subscribe(kinds: Set<string> | undefined, fn: Listener): () => void {
    const l = { kinds, fn };
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Events kept (not status snapshots) newer than `afterId`, of `kinds`, at most `limit`, oldest first. */
  recent(opts: { afterId?: number; kinds?: Set<string>; limit?: number } = {}): BusEvent[] {
    const out = this.history.filter((e) =>
      e.id > (opts.afterId ?? 0) && (!opts.kinds || opts.kinds.has(e.kind))
    );
    return out.slice(-(opts.limit ?? 100));
  }
}

/** Parses `?filter=a,b`: undefined for all kinds; throws naming an unknown kind. */
export function parseFilter(text: string | undefined): Set<string> | undefined {
  if (!text) return undefined;
  const kinds = text.split(",").map((s) => s.trim()).filter(Boolean);
  const bad = kinds.filter((k) => !(EVENT_KINDS as readonly string[]).includes(k));
  if (bad.length) {
    throw new Error(`filter: unknown event kind(s) ${bad.join(", ")}; known: ${EVENT_KINDS.join(", ")}`);
  }
  return kinds.length ? new Set(kinds) : undefined;
}

// ------------------------------------------------------------------------------ SSE

const enc = new TextEncoder();

/**
 * Server-sent events of the bus: first the latest status (if wanted), then the kept events
 * after Last-Event-ID (or the last `replay`), then live ones. A client that falls behind loses
 * status snapshots first (the next one replaces them); one far behind is disconnected (its
 * EventSource reconnects and resumes from its last id). `alive` is checked before each event:
 * a stream ends when its session does.
 */
export class EventStreams {
  private open = new Set<() => void>();

  constructor(private readonly bus: EventBus) {}

  response(o: { kinds?: Set<string>; lastId?: number; replay?: number; alive: () => boolean }): Response {
    let stop = () => {};
    const body = new ReadableStream<Uint8Array>({
      start: (ctrl) => {
        let closed = false;
        const write = (text: string) => ctrl.enqueue(enc.encode(text));
        const send = (e: BusEvent) => {
          if (closed) return;
          if (!o.alive()) return stop();
          const backlog = -(ctrl.desiredSize ?? 0);
          if (e.kind === "status" && backlog > 0) return; // the next snapshot replaces it
          if (backlog > 512) return stop();
          write(`id: ${e.id}\ndata: ${JSON.stringify(e)}\n\n`);
        };
        write("retry: 2000\n\n");
        if (this.bus.latestStatus && (!o.kinds || o.kinds.has("status"))) send(this.bus.latestStatus);
        const past = this.bus.recent({
          afterId: o.lastId,
          kinds: o.kinds,
          limit: o.lastId !== undefined ? 500 : o.replay ?? 100,
        });
        for (const e of past) send(e);
        const unsubscribe = this.bus.subscribe(o.kinds, send);
        const ping = setInterval(() => {
          if (!o.alive()) return stop();
          if (!closed) write(": keep-alive\n\n");
        }, 15_000);
        stop = () => {
          if (closed) return;
          closed = true;
          unsubscribe();
          clearInterval(ping);
          this.open.delete(stop);
          try {
            ctrl.close();
          } catch { /* already */ }
        };
        this.open.add(stop);
      },
      cancel: () => stop(),
    }, { highWaterMark: 64 * 1024, size: (chunk) => chunk.byteLength });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        "x-accel-buffering": "no",
      },
    });
  }

  /** Ends every open stream (before the server shuts down: it waits for open responses). */
  closeAll(): void {
    for (const s of [...this.open]) s();
  }

  get count(): number {
    return this.open.size;
  }
}

// ------------------------------------------------------------------------------ collector

/** The parts of the local gateway's status the collector looks at (all optional). */
export interface RecoveryView {
  id: number;
  volume: string;
  status: string;
  source?: unknown;
  progress?: {
    phase: string;
    chunks: number;
    done: number;
    bytesMoved: number;
    rateBps: number;
    etaMs: number | null;
  } | null;
}

export interface CollectorOptions {
  bus: EventBus;
  status: () => GatewayStatus;
  db?: Db;
  recoveries?: () => Promise<RecoveryView[]>;
  intervalMs?: number;
}

/** Per-site throughput (bytes/s acknowledged) between two snapshots. */
export interface Rates {
  sites: Record<string, { bps: number }>;
}

export class StatusCollector {
  private prev: GatewayStatus | undefined;
  private prevAt = 0;
  private timers: ReturnType<typeof setInterval>[] = [];
  private auditAfter: number | undefined;
  private recoveryState = new Map<number, string>();
  private busy = { audit: false, recovery: false };
  rates: Rates = { sites: {} };

  constructor(private readonly o: CollectorOptions) {}

  async start(): Promise<void> {
    if (this.o.db) {
      // events start from now: the history is GET /api/audit's
      const [row] = await this.o.db.select({ id: auditLog.id }).from(auditLog).orderBy(desc(auditLog.id))
        .limit(1);
      this.auditAfter = row?.id ?? 0;
    }
    this.snapshot();
    const every = (ms: number, fn: () => void) => {
      const t = setInterval(fn, ms);
      Deno.unrefTimer(t);
      this.timers.push(t);
    };
    every(this.o.intervalMs ?? 1000, () => this.snapshot());
    if (this.o.db) every(500, () => void this.tailAudit());
    if (this.o.recoveries) every(1000, () => void this.pollRecoveries());
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  /** Takes a snapshot, publishes it and the changes since the last one. */
  snapshot(): void {
    let s: GatewayStatus;
    try {
      s = this.o.status();
    } catch (e) {
      log.warn("status snapshot failed", { error: e });
      return;
    }
    const now = performance.now();
    const p = this.prev;
    const dt = (now - this.prevAt) / 1000;
    const rates: Rates = { sites: {} };
    for (const site of s.sites ?? []) {
      const before = p?.sites?.find((x) => x.site === site.site);
      const bytes = (site.ackedBytes ?? 0) - (before?.ackedBytes ?? site.ackedBytes ?? 0);
      rates.sites[site.site] = { bps: p && dt > 0 ? Math.max(0, bytes / dt) : 0 };
    }
    this.rates = rates;
    if (p) this.diff(p, s);
    this.prev = s;
    this.prevAt = now;
    this.o.bus.publish({ kind: "status", message: "status", data: { ...s, rates }, time: Date.now() });
  }

  private diff(p: GatewayStatus, s: GatewayStatus): void {
    const bus = this.o.bus;
    for (const a of s.liveness ?? []) {
      const before = p.liveness?.find((x) => x.agent === a.agent);
      if (before?.state !== a.state) {
        bus.publish({
          kind: "detector",
          subject: `agent:${a.agent}`,
          message: `agent ${a.agent}: ${before?.state ?? "unknown"} → ${a.state}`,
          data: { agent: a.agent, from: before?.state ?? null, to: a.state },
        });
      }
    }
    const was = new Set(p.agents ?? []), now = new Set(s.agents ?? []);
    for (const a of now) {
      if (!was.has(a)) {
        bus.publish({
          kind: "agent",
          subject: `agent:${a}`,
          message: `agent ${a} connected`,
          data: { agent: a, connected: true },
        });
      }
    }
    for (const a of was) {
      if (!now.has(a)) {
        bus.publish({
          kind: "agent",
          subject: `agent:${a}`,
          message: `agent ${a} disconnected`,
          data: { agent: a, connected: false },
        });
      }
    }
    for (const sv of s.services ?? []) {
      const before = p.services?.find((x) => x.name === sv.name);
      if (before && before.state !== sv.state) {
        bus.publish({
          kind: "switch",
          subject: `service:${sv.name}`,
          message: `service ${sv.name}: ${before.state} → ${sv.state}`,
          data: { service: sv.name, from: before.state, to: sv.state, site: sv.site },
        });
      }
    }
    this.assignmentEvents(p, s);
    for (const site of s.sites ?? []) {
      const before = p.sites?.find((x) => x.site === site.site);
      if (before && before.connected !== site.connected) {
        bus.publish({
          kind: "replication",
          subject: `site:${site.site}`,
          message: `site ${site.site} ${site.connected ? "connected" : "disconnected"}`,
          data: { site: site.site, connected: site.connected },
        });
      }
      for (const v of site.volumes ?? []) {
        const old = before?.volumes?.find((x) => x.agent === v.agent && x.name === v.name);
        if (old && old.state !== v.state) {
          bus.publish({
            kind: "replication",
            subject: `site:${site.site}`,
            message: `copy of ${v.agent}/${v.name} at ${site.site}: ${old.state} → ${v.state}`,
            data: { site: site.site, volume: `${v.agent}/${v.name}`, from: old.state, to: v.state },
          });
        }
      }
    }
  }

  /** A task's copy refused (or assigned after a refusal): an event of the task, which its pages follow. */
  private assignmentEvents(p: GatewayStatus, s: GatewayStatus): void {
    const key = (a: { task: string; kind: string; site?: string }) => `${a.task}/${a.kind}/${a.site ?? ""}`;
    const before = new Map((p.assignments ?? []).map((a) => [key(a), a]));
    // a refused start is the task's own failure, published as such (TaskStore.onFailure)
    for (const a of (s.assignments ?? []).filter((x) => !x.atStart)) {
      const old = before.get(key(a));
      const failed = a.state === "failed" && (old?.state !== "failed" || old.error !== a.error);
      if (!failed && !(old?.state === "failed" && a.state === "assigned")) continue;
      const copy = a.kind === "lsp"
        ? `volume ${a.volume} at agent ${a.agent}`
        : `the standby copy at ${a.site}`;
      this.o.bus.publish({
        kind: "task",
        subject: `task:${a.task}`,
        message: failed
          ? `task ${a.task}: ${copy} cannot be assigned: ${a.error ?? "no reason given"}`
          : `task ${a.task}: ${copy} is assigned`,
        data: { task: a.task, assignment: a },
      });
    }
  }

  private async tailAudit(): Promise<void> {
    if (this.busy.audit || !this.o.db) return;
    this.busy.audit = true;
    try {
      const rows = await this.o.db.select().from(auditLog).where(gt(auditLog.id, this.auditAfter ?? 0))
        .orderBy(auditLog.id).limit(500);
      for (const r of rows) {
        this.auditAfter = r.id;
        let detail: unknown = {};
        try {
          detail = JSON.parse(r.detail);
        } catch { /* stored as text */ }
        this.o.bus.publish({
          kind: "audit",
          subject: r.subject,
          message: r.cause,
          time: r.time,
          data: { ...r, detail },
        });
      }
    } catch (e) {
      log.warn("cannot read the audit log", { error: e });
    } finally {
      this.busy.audit = false;
    }
  }

  private async pollRecoveries(): Promise<void> {
    if (this.busy.recovery || !this.o.recoveries) return;
    this.busy.recovery = true;
    try {
      for (const r of await this.o.recoveries()) {
        const before = this.recoveryState.get(r.id);
        const p = r.progress;
        if (r.status === "running" && p) {
          this.o.bus.publish({
            kind: "recovery",
            subject: `recovery:${r.id}`,
            message: `recovery ${r.id} of ${r.volume}: ${p.phase} ${p.done}/${p.chunks} chunks`,
            data: { id: r.id, volume: r.volume, status: r.status, progress: p },
          });
        } else if (before !== undefined && before !== r.status) {
          this.o.bus.publish({
            kind: "recovery",
            subject: `recovery:${r.id}`,
            message: `recovery ${r.id} of ${r.volume}: ${before} → ${r.status}`,
            data: { id: r.id, volume: r.volume, status: r.status, progress: p ?? null },
          });
        }
        this.recoveryState.set(r.id, r.status);
      }
    } catch (e) {
      log.debug("cannot list recoveries", { error: e });
    } finally {
      this.busy.recovery = false;
    }
  }
}
