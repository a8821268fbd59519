// Failback with its data: the service runs at the remote site, the old primary is
// fenced. (1) While the remote keeps serving, an online fast pass copies what
// differs from the site's replica into the local volume and mirror. (2) The
// switch window opens: the remote stops its service and becomes a standby again
// once its gateway holds every write. (3) A verified fast recovery moves the last
// difference. (4) The fence is lifted; the local service starts (the agent's
// --on-unfence). (5) Once it is healthy the DNAT rule goes: traffic is local
// again, and the senders resynchronise every site from the local copies, so
// forward replication resumes in the original direction.
// Every step is idempotent, so a failback that stopped is simply run again.
import { logger } from "../log.ts";

const log = logger("failback");

export type FailbackPhase = "online-copy" | "freezing-remote" | "final-copy" | "starting-local" | "switching";

export interface FailbackDeps {
  /** The service's agent and site, and whether it is failed over now. */
  service: (name: string) => { agent: string; site: string; failedOver: boolean } | undefined;
  /** agent/name keys of the agent's volumes. */
  volumes: (agent: string) => string[];
  /** Why the agent's server cannot take the data now (not connected, not trusted), or undefined. */
  hostUnready: (agent: string) => string | undefined;
  /** Why the agent's service is not healthy, or undefined once it is. */
  serviceUnhealthy: (agent: string) => string | undefined;
  onlineCopy: (volume: string, site: string) => Promise<{ bytesMoved: number }>;
  /** The site stops the service and holds all it wrote. */
  demote: (site: string, agent: string) => Promise<void>;
  /** Verified fast recovery of the volume (and its mirror) from the site's replica. */
  finalCopy: (volume: string, site: string) => Promise<{ bytesMoved: number }>;
  unfence: (agent: string, cause: string) => Promise<void>;
  /** Removes the DNAT rule (the traffic part of failback). */
  switchBack: (name: string) => Promise<void>;
  record: (
    e: { subject: string; kind: string; to?: string; cause: string; detail?: Record<string, unknown> },
  ) => Promise<void>;
  onPhase?: (name: string, phase: FailbackPhase | undefined) => void;
  healthyWithinMs?: number;
  /**
   * Resolves when the agent's health may have changed (its next heartbeat or detector
   * transition), or after `ms` at the latest: the wait for the local service to turn healthy.
   */
  healthChanged: (agent: string, ms: number) => Promise<void>;
}

export interface FailbackReport {
  onlineBytes: number;
  finalBytes: number;
  /** From the remote's service stopping until traffic went to the local one. */
  windowMs: number;
}

export class FailbackError extends Error {
  constructor(readonly status: 404 | 409, message: string) {
    super(message);
  }
}

/** A failback asked for: refused before anything moved, or under way. */
export type StartedFailback = { refused: FailbackError } | { done: Promise<FailbackReport> };

/**
 * Starts a failback: its refusals (no such service, not failed over, the local server not ready)
 * come back at once, before anything moves; otherwise `done` ends with its report.
 */
export function startFailback(d: FailbackDeps, name: string): StartedFailback {
  const s = d.service(name);
  if (!s) return { refused: new FailbackError(404, `no protected service "${name}"`) };
  if (!s.failedOver) return { refused: new FailbackError(409, `service ${name} is not failed over`) };
  const unready = d.hostUnready(s.agent);
  if (unready) {
    return { refused: new FailbackError(409, `the local server of ${name} is not ready (${unready})`) };
  }
  return { done: run(d, name, s) };
}

export async function failback(d: FailbackDeps, name: string): Promise<FailbackReport> {
  const started = startFailback(d, name);
  if ("refused" in started) throw started.refused;
  return await started.done;
}

async function run(
  d: FailbackDeps,
  name: string,
  s: { agent: string; site: string },
): Promise<FailbackReport> {
  const volumes = d.volumes(s.agent);
  const phase = (p: FailbackPhase | undefined) => d.onPhase?.(name, p);
  const subject = `service:${name}`;
  // the phase is set before the first await: a second request meanwhile is refused as running
  phase("online-copy");
  try {
    await d.record({
      subject,
      kind: "failback",
      to: "online-copy",
      cause: `failback from ${s.site} started`,
    });
    let onlineBytes = 0;
    for (const v of volumes) onlineBytes += (await d.onlineCopy(v, s.site)).bytesMoved;
    log.info("online pass done", { service: name, moved: onlineBytes });

    phase("freezing-remote");
    const windowStart = performance.now();
    await d.demote(s.site, s.agent);
    phase("final-copy");
    let finalBytes = 0;
    for (const v of volumes) finalBytes += (await d.finalCopy(v, s.site)).bytesMoved;

    phase("starting-local");
    await d.unfence(s.agent, `failback of ${name}: the local copies hold the remote's final data`);
    const deadline = performance.now() + (d.healthyWithinMs ?? 60_000);
    for (;;) {
      const why = d.serviceUnhealthy(s.agent);
      if (!why) break;
      if (performance.now() > deadline) {
        throw new FailbackError(
          409,
          `the local service of ${name} did not turn healthy (${why}); traffic still goes to ${s.site}: ` +
            `start the service and run failback again`,
        );
      }
      await d.healthChanged(s.agent, deadline - performance.now() + 1);
    }
    phase("switching");
    await d.switchBack(name);
    const windowMs = Math.round(performance.now() - windowStart);
    const report = { onlineBytes, finalBytes, windowMs };
    await d.record({
      subject,
      kind: "failback",
      to: "done",
      cause: `failback from ${s.site} done: switch window ${windowMs} ms`,
      detail: { ...report },
    });
    log.info("failback done", { service: name, ...report });
    return report;
  } catch (e) {
    await d.record({
      subject,
      kind: "failback",
      to: "stopped",
      cause: `failback stopped: ${(e as Error).message}`,
    });
    throw e;
  } finally {
    phase(undefined);
  }
}
