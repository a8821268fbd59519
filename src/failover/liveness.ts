// The local gateway's view of each agent's health: a failure detector over its
// heartbeats (Chen–Toueg–Aguilera, or φ accrual) plus the service verdict the
// heartbeats carry. FAILURE of the host, or a failed service, is reported once;
// SUSPECT alone never is. Every transition goes to the audit log.
import { ChenDetector } from "../detector/chen.ts";
import { PhiDetector } from "../detector/phi.ts";
import type { Detector, DetectorState, Transition } from "../detector/types.ts";
import type { HeartbeatMeta } from "../heartbeat/channel.ts";
import type { HeartbeatStatus } from "../heartbeat/codec.ts";
import type { Audit } from "../audit/audit.ts";
import { logger } from "../log.ts";
import { Changes } from "../io/changes.ts";

const log = logger("liveness");

export interface DetectorSettings {
  mode: "chen" | "phi";
  /** η: the agents' heartbeat period. */
  etaMs: number;
  /** α (Chen mode). */
  alphaMs: number;
  /** n: arrivals averaged (Chen) or intervals kept (φ). */
  window: number;
  phiSuspect: number;
  phiFailure: number;
}

/** The period and margin a Chen detector judges an agent's heartbeats with. */
export interface Tuning {
  etaMs: number;
  alphaMs: number;
}

interface Watched {
  detector: Detector;
  tuning: Tuning;
  state: DetectorState;
  serviceHealthy: boolean;
  detail: string;
  lastSeq: number;
  lastHeartbeat: number;
  /** A failure was reported and not yet followed by recovery. */
  reported: boolean;
}

export type FailureCause = "host" | "service";

/** An agent's host stopped (FAILURE) or its service failed. */
export type FailureListener = (agent: string, cause: FailureCause, detail: Record<string, unknown>) => void;

export interface LivenessOptions {
  settings: DetectorSettings;
  audit: Pick<Audit, "record">;
  /** Every detector transition (the observed QoS). */
  onTransition?: (agent: string, t: Transition) => void;
  clock?: () => number;
}

/** A gap between two looks at the clock this much longer than the poll period is a stall. */
const STALL_MS = 20;

export class Liveness {
  private agents = new Map<string, Watched>();
  private readonly failureListeners: FailureListener[] = [];
  /** Each agent's heartbeats and transitions (see changed). */
  private readonly changes = new Map<string, Changes>();
  private timer: ReturnType<typeof setInterval>;
  private readonly clock: () => number;
  private readonly pollMs: number;
  /** When this process last read the clock here: it was running then. */
  private lastLook: number | undefined;

  constructor(private readonly o: LivenessOptions) {
    this.clock = o.clock ?? (() => performance.now());
    // detectors hold no timers of their own: polling at a fraction of η bounds the reaction delay
    this.pollMs = Math.max(5, Math.floor(o.settings.etaMs / 10));
    this.timer = setInterval(() => this.poll(), this.pollMs);
  }

  /**
   * The clock, after checking that this process was running since it last looked. Heartbeats are
   * stamped when this thread reads them, so a stall here (a long GC, a busy turn of the event loop)
   * looks like silence from every agent while their heartbeats wait in the socket: the deadlines that
   * fell in the stall wait for those heartbeats, half the stall's length more (Cassandra's failure
   * detector skips its verdicts after a local pause for the same reason). A real failure is detected
   * that much later.
   */
  private look(now = this.clock()): number {
    const last = this.lastLook;
    this.lastLook = Math.max(now, last ?? now);
    if (last === undefined || now - last <= this.pollMs + STALL_MS) return now;
    // the loop has a backlog to work through before it reads the socket: the longer the stall, the
    // longer (a 0.5 s stall once took 37 ms more to deliver the heartbeat that waited)
    const until = now + Math.max(this.pollMs, STALL_MS, (now - last) / 2);
    const moved = [...this.agents].filter(([, w]) => w.detector.watcherPaused(last, now, until));
    if (moved.length) {
      log.warn("this gateway stalled: deadlines that passed meanwhile wait for the heartbeats queued", {
        stalledMs: Math.round(now - last),
        agents: moved.map(([agent]) => agent),
      });
    }
    return now;
  }

  private newDetector(now: number, tuning: Tuning): Detector {
    const s = this.o.settings;
    return s.mode === "chen"
      ? new ChenDetector({ etaMs: tuning.etaMs, alphaMs: tuning.alphaMs, window: s.window, startMs: now })
      : new PhiDetector({
        etaMs: s.etaMs,
        startMs: now,
        window: s.window,
        suspectPhi: s.phiSuspect,
        failurePhi: s.phiFailure,
      });
  }

  /**
   * Feeds one authenticated heartbeat (from the receiver). `tuning`: the period it was sent at
   * and the margin to judge it with (the QoS configuration's), else the flags'.
   */
  heartbeat(
    agent: string,
    seq: number,
    status: HeartbeatStatus,
    now: number,
    meta: HeartbeatMeta,
    tuning: Tuning = { etaMs: this.o.settings.etaMs, alphaMs: this.o.settings.alphaMs },
  ): void {
    this.look(now);
    let w = this.agents.get(agent);
    if (!w) {
      // watched from the first heartbeat: an agent never heard from is unknown, not failed
      w = {
        detector: this.newDetector(now, tuning),
        tuning,
        state: "TRUST",
        serviceHealthy: true,
        detail: "",
        lastSeq: 0,
        lastHeartbeat: now,
        reported: false,
      };
      this.agents.set(agent, w);
      this.o.audit.record({
        subject: `agent:${agent}`,
        kind: "detector",
        to: "TRUST",
        cause: "first heartbeat",
      });
    } else if (meta.newBoot) {
      w.detector.restart(now);
    }
    if (tuning.etaMs !== w.tuning.etaMs || tuning.alphaMs !== w.tuning.alphaMs) {
      if (w.detector instanceof ChenDetector) w.detector.reconfigure(tuning.etaMs, tuning.alphaMs);
      log.info("detector retuned", { agent, from: w.tuning, to: tuning });
      w.tuning = tuning;
    }
    w.detector.heartbeat(seq, now);
    w.lastSeq = seq;
    w.lastHeartbeat = now;
    w.detail = status.detail;
    this.record(agent, w, w.detector.poll(now));
    if (status.healthy !== w.serviceHealthy) {
      w.serviceHealthy = status.healthy;
      this.o.audit.record({
        subject: `agent:${agent}`,
        kind: "service",
        from: status.healthy ? "failed" : "healthy",
        to: status.healthy ? "healthy" : "failed",
        cause: status.healthy ? "the agent's service check passes again" : "the agent's service check failed",
        detail: { seq, check: status.detail },
      });
      if (!status.healthy) this.fail(agent, w, "service", { seq, check: status.detail });
    }
    if (w.state === "TRUST" && w.serviceHealthy) w.reported = false;
    this.changedFor(agent);
  }

  /**
   * Resolves at the agent's next heartbeat or detector transition (what can change `unhealthy`
   * and `hostUntrusted`; a wait re-checks them then), or after `ms`.
   */
  changed(agent: string, ms: number): Promise<void> {
    let c = this.changes.get(agent);
    if (!c) this.changes.set(agent, c = new Changes());
    return c.next(ms);
  }

  private changedFor(agent: string): void {
    this.changes.get(agent)?.notify();
  }

  /** Judges every agent now and reports what changed (the timer does this every η/10). */
  poll(): void {
    const now = this.look();
    for (const [agent, w] of this.agents) this.record(agent, w, w.detector.poll(now));
  }

  private record(agent: string, w: Watched, ts: Transition[]): void {
    for (const t of ts) {
      w.state = t.to;
      this.o.onTransition?.(agent, t);
      this.o.audit.record({
        subject: `agent:${agent}`,
        kind: "detector",
        from: t.from,
        to: t.to,
        cause: t.to === "TRUST" ? "heartbeat arrived" : "no heartbeat by the freshness point",
        detail: { at: Math.round(t.at), lastSeq: t.lastSeq, lastArrivalMs: t.lastArrivalMs, ...t.evidence },
      });
      if (t.to === "FAILURE") {
        this.fail(agent, w, "host", { lastSeq: t.lastSeq, lastArrivalMs: t.lastArrivalMs, ...t.evidence });
      }
    }
    if (ts.length) this.changedFor(agent);
  }

  private fail(agent: string, w: Watched, cause: FailureCause, detail: Record<string, unknown>): void {
    if (w.reported) return;
    w.reported = true;
    for (const l of this.failureListeners) l(agent, cause, detail);
  }

  /** Registers a listener told of every failure reported from now on (once per failure). */
  onFailure(l: FailureListener): void {
    this.failureListeners.push(l);
  }

  /** Why an agent cannot be relied on now, or undefined when it is trusted and its service healthy. */
  /** Why the agent's host is not trusted (no heartbeat, SUSPECT, FAILURE), or undefined. */
  hostUntrusted(agent: string): string | undefined {
    const w = this.agents.get(agent);
    if (!w) return `no heartbeat from ${agent} yet`;
    const state = w.detector.state(this.look());
    return state === "TRUST" ? undefined : `${agent} is ${state}`;
  }

  unhealthy(agent: string): string | undefined {
    const w = this.agents.get(agent);
    if (!w) return `no heartbeat from ${agent} yet`;
    const state = w.detector.state(this.look());
    if (state !== "TRUST") return `${agent} is ${state}`;
    if (!w.serviceHealthy) return `the service of ${agent} fails its checks: ${w.detail}`;
    return undefined;
  }

  status() {
    const now = this.look();
    return [...this.agents].map(([agent, w]) => ({
      agent,
      state: w.detector.state(now),
      serviceHealthy: w.serviceHealthy,
      serviceDetail: w.detail,
      lastSeq: w.lastSeq,
      sinceLastHeartbeatMs: Math.round(now - w.lastHeartbeat),
    }));
  }

  close(): void {
    clearInterval(this.timer);
    for (const c of this.changes.values()) c.notify();
  }
}
