// Failover drills, the standby agent's half: `drill-up` runs the --on-promote hook with the test
// copy's export in its environment instead of promoting anything (CONTINUUM_DRILL=1,
// CONTINUUM_EXPORT=the copy's NBD URI, CONTINUUM_VOLUME=the volume's name: the hook mounts that
// and starts the service on it), then waits for the service check to pass; `drill-down` runs
// --on-demote with the same environment. The standby's own copy and its stream are not touched.
// Each order is answered (`drill-ready`, `drill-stopped`) with its id.
import { NAME_RE } from "../names.ts";
import type { StandbyReport } from "../wire/control.ts";

export interface StandbyDrillDeps {
  /** Runs --on-promote or --on-demote with extra environment; rejects when it fails. */
  hook(flag: "on-promote" | "on-demote", env: Record<string, string>): Promise<void>;
  /** Resolves once the service check passes; undefined: the agent has no --service-check. */
  waitHealthy?: (timeoutMs: number) => Promise<void>;
  /** This standby is promoted: it serves the real service, a drill cannot run here. */
  promoted(): boolean;
  send(m: Extract<StandbyReport, { type: "drill-ready" | "drill-stopped" }>): void;
}

const EXPORT_RE = /^nbd(\+unix)?:\/\/[^\s]{1,400}$/;

export class StandbyDrills {
  /** The export of the drill under way. */
  private running: string | undefined;

  constructor(private readonly d: StandbyDrillDeps) {}

  /** Handles a drill order; true when the message was one. */
  order(msg: unknown): boolean {
    const m = msg as { type?: string; id?: unknown; export?: unknown; volume?: unknown; timeoutMs?: unknown };
    if (m?.type !== "drill-up" && m?.type !== "drill-down") return false;
    const answer = m.type === "drill-up" ? "drill-ready" : "drill-stopped";
    const reply = (r: { ok: boolean; error?: string; checkMs?: number }) =>
      this.d.send({ type: answer, id: Number(m.id), ...r });
    this.run(m).then(reply, (e) => reply({ ok: false, error: (e as Error).message }));
    return true;
  }

  private async run(
    m: { type?: string; export?: unknown; volume?: unknown; timeoutMs?: unknown },
  ): Promise<{ ok: boolean; checkMs?: number }> {
    const d = this.d;
    if (typeof m.export !== "string" || !EXPORT_RE.test(m.export)) {
      throw new Error("the drill order has no NBD export");
    }
    if (typeof m.volume !== "string" || !NAME_RE.test(m.volume)) {
      throw new Error("the drill order has no volume name");
    }
    const env = { CONTINUUM_DRILL: "1", CONTINUUM_EXPORT: m.export, CONTINUUM_VOLUME: m.volume };
    if (m.type === "drill-down") {
      if (this.running !== m.export) return { ok: true };
      this.running = undefined;
      await d.hook("on-demote", env);
      return { ok: true };
    }
    if (d.promoted()) throw new Error("this standby is promoted: it serves the service, no drill runs here");
    if (this.running !== undefined) throw new Error("a drill already runs on this standby");
    if (!d.waitHealthy) {
      throw new Error("the standby has no --service-check: a drill cannot tell whether the service runs");
    }
    const timeoutMs = Math.min(600_000, Math.max(1000, Number(m.timeoutMs) || 60_000));
    const started = performance.now();
    // set before the hook runs: a drill-down after a failed hook still stops what it started
    this.running = m.export;
    await d.hook("on-promote", env);
    await d.waitHealthy(Math.round(timeoutMs - (performance.now() - started)));
    return { ok: true, checkMs: Math.round(performance.now() - started) };
  }
}
