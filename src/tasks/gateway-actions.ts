// The local gateway's task actions and the status-driven part of the state machine.
//
// A task is bound to what the gateway runs through its LSP: the host's agent id (its `agent`,
// else its name) and the LSP volume's name, so the task's journal volume is AGENT/NAME; its
// remote centers are the gateway's `--remote` sites. The control plane (control-plane.ts)
// assigns the LSP to the agent over its link; an agent started with `--volume NAME=…` of the
// same device already serves it (flags win):
//   start         checks that every remote center is a --remote of this gateway, assigns the LSP
//                 to its agent (refused with the agent's reason if it cannot serve it), checks
//                 the announced size; then the task follows the copies,
//   pause,        the remote sites stop (resume: start again) receiving the volume; the agent
//   resume        keeps exporting it,
//   remove        (task deleted) the sites stop receiving it, the agent stops exporting it,
//   failover,     switch the task's protected service (--service) with the FailoverController,
//   failback
//   recover       runs a recovery of the volume with the RecoveryService (policy or manual),
//   candidates    the policy's assessment of every copy,
//   schedule      a recovery at a later time (the RecoveryService's scheduler),
//   failover-test a remote site (the request's, else the first with a consistent copy over a
//                 connected link) exports a writable copy of its replica (FailoverTests,
//                 failover-tests.ts) while the service, the stream and the switch stay as they
//                 are; end-test (test-done) discards it, and so does a real failover.
//
// taskEvent() turns the gateway's status into the events the control plane would send: synced
// when every remote copy of the volume is consistent over a connected link, degrade when one is
// not, recovered / recovery-failed when the task's recovery ends.
import {
  ActionError,
  type CandidateList,
  type RecoverRequest,
  type Schedule,
  type TaskActions,
} from "./actions.ts";
import type { Task, TaskEvent } from "./model.ts";
import type { TaskStore } from "./store.ts";
import type { ControlPlane } from "./control-plane.ts";
import type { FailoverTests } from "./failover-tests.ts";
import type { StartedFailback } from "../failover/failback.ts";

/** The parts of the RecoveryService the actions use. */
export interface RecoveryApi {
  candidates(
    volume: string,
    point: { seq?: number; time?: number },
    strategy: "full" | "fast",
  ): Promise<CandidateList>;
  request(req: {
    volume: string;
    mode: "manual" | "policy";
    strategy: "full" | "fast";
    source?: { kind: "lgp" | "rgp" | "rsp"; site?: string };
    point?: { seq?: number; time?: number };
    target?: "lsp" | "lgp";
    force?: boolean;
    at?: number;
  }): Promise<{ id: number; source: string; explanation: string | null }>;
  list(): Promise<RecoveryRow[]>;
  cancel(id: number): Promise<void>;
}

export interface RecoveryRow {
  id: number;
  volume: string;
  status: string;
  scheduledAt?: number | null;
  createdAt: number;
  finishedAt?: number | null;
  error?: string | null;
}

/** The service switch: the FailoverController's failover, and the failback that brings the data back. */
export interface ServiceSwitch {
  status(): { name: string; state: string; site: string }[];
  /** `point`: the standby is rolled back to that recovery point of its site before promotion. */
  failover(name: string, cause: string, point?: number | string): Promise<void>;
  /** Brings the service home with its data: refused at once, or under way until it runs locally again. */
  failback(name: string): StartedFailback;
}

export interface GatewayActionDeps {
  store: TaskStore;
  /** Whether a site holds a recovery point of a volume (rejects with the site's reason). */
  checkPoint?: (site: string, volume: string, point: number | string) => Promise<{ seq: number }>;
  recovery: RecoveryApi;
  services: ServiceSwitch;
  /** The volumes the agents announced (the journal's). */
  volumes: () => { agent: string; name: string; size: number }[];
  /** The gateway's --remote sites. */
  sites: () => string[];
  control: Pick<ControlPlane, "start" | "pause" | "resume" | "remove" | "reassign">;
  tests: Pick<FailoverTests, "begin" | "end">;
  /** The remote sites' links and copies (the gateway's status). */
  copies: () => TaskStatusView;
}

/** AGENT/NAME of the task's LSP volume. */
export async function volumeKey(store: TaskStore, task: Task): Promise<string> {
  const lsp = task.group.local.lsp;
  const host = await store.getHost(lsp.host);
  const vol = (await store.listVolumes()).find((v) => v.host === lsp.host && v.device === lsp.device);
  if (!vol) throw new ActionError(`task "${task.name}": no volume registered at ${lsp.host}:${lsp.device}`);
  return `${host.agent ?? host.name}/${vol.name}`;
}

/**
 * The remote center a failover test of task (volume `key`) uses: the requested one, which must
 * be one of the task's, else the first whose copy is consistent over a connected link.
 */
export function testSite(task: Task, key: string, status: TaskStatusView, requested?: string): string {
  const remotes = task.group.remotes.map((r) => r.site);
  if (requested !== undefined) {
    if (!remotes.includes(requested)) {
      throw new ActionError(
        `site "${requested}" is not a remote center of task "${task.name}" (its remote centers: ${
          remotes.join(", ")
        })`,
        400,
      );
    }
    return requested;
  }
  const [agent, name] = key.split("/");
  const why: string[] = [];
  for (const site of remotes) {
    const s = status.sites?.find((x) => x.site === site);
    const state = s?.volumes?.find((v) => v.agent === agent && v.name === name)?.state ?? "unknown";
    if (s?.connected && state === "consistent") return site;
    why.push(`${site}: ${s?.connected ? `copy ${state}` : "link down"}`);
  }
  throw new ActionError(
    `no remote center of task "${task.name}" has a consistent copy of ${key} over a connected link (${
      why.join(", ")
    })`,
    409,
  );
}

/** A recovery request for the recovery service, from a task's validated request (`at`: scheduled). */
function recoveryRequest(volume: string, rec: RecoverRequest, at?: number) {
  return {
    volume,
    mode: rec.mode,
    strategy: rec.strategy,
    source: rec.source ? parseSource(rec.source) : undefined,
    point: rec.point,
    target: rec.target,
    force: rec.force,
    method: rec.method,
    at,
  };
}

/** A RecoveryService refusal (it carries an HTTP status) as an ActionError. */
async function recovering<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    const status = (e as { status?: unknown }).status;
    if (status === 400 || status === 404 || status === 409) {
      throw new ActionError((e as Error).message, status);
    }
    throw e;
  }
}

function parseSource(text: string): { kind: "lgp" | "rgp" | "rsp"; site?: string } {
  if (text === "lgp") return { kind: "lgp" };
  const [kind, site] = text.split("@");
  return { kind: kind as "rgp" | "rsp", site };
}

export function gatewayActions(d: GatewayActionDeps): TaskActions {
  const key = (t: Task) => volumeKey(d.store, t);
  const requestRecovery = (volume: string, rec: RecoverRequest, at?: number) =>
    recovering(() => d.recovery.request(recoveryRequest(volume, rec, at)));
  const service = (task: Task) => {
    if (!task.service) {
      throw new ActionError(
        `task "${task.name}" names no protected service (service): there is nothing to switch`,
        409,
      );
    }
    const s = d.services.status().find((x) => x.name === task.service);
    if (!s) {
      throw new ActionError(
        `task "${task.name}" names service "${task.service}", which this gateway does not protect (--service)`,
        409,
      );
    }
    return s;
  };
  const schedules = async (task: Task): Promise<Schedule[]> => {
    const k = await key(task);
    return (await d.recovery.list()).filter((r) => r.volume === k && r.status === "scheduled").map((r) => ({
      id: String(r.id),
      task: task.name,
      action: "recover" as const,
      at: r.scheduledAt ?? 0,
      status: r.status,
    }));
  };
  return {
    start: async (task) => {
      const k = await key(task);
      const [agent, name] = k.split("/");
      const sites = d.sites();
      const missing = task.group.remotes.map((r) => r.site).filter((s) => !sites.includes(s));
      if (missing.length) {
        throw new ActionError(
          `this gateway does not replicate to ${missing.join(", ")} (no --remote ${missing[0]}=…)`,
          409,
        );
      }
      let connected: boolean;
      try {
        ({ connected } = await d.control.start(task));
      } catch (e) {
        throw new ActionError((e as Error).message, 409);
      }
      const live = d.volumes().find((v) => v.agent === agent && v.name === name);
      if (!live) {
        if (!connected) {
          return {
            message: `agent ${agent} is not connected: ${k} is assigned to it when it connects`,
          };
        }
        throw new ActionError(`agent ${agent} accepted volume ${name} but has not announced it`, 409);
      }
      const lsp = (await d.store.listVolumes()).find((v) =>
        v.host === task.group.local.lsp.host && v.device === task.group.local.lsp.device
      );
      if (lsp && lsp.size !== live.size) {
        throw new ActionError(
          `volume ${k} has ${live.size} bytes at the agent, the task's LSP ${lsp.size}: correct the volume`,
          409,
        );
      }
      return { message: `following ${k} at ${task.group.remotes.map((r) => r.site).join(", ")}` };
    },
    pause: async (task) => {
      await d.control.pause(task);
      return { message: `the remote sites no longer receive ${await key(task)}; the agent still exports it` };
    },
    resume: async (task) => {
      await d.control.resume(task);
      return { message: `the remote sites receive ${await key(task)} again (synchronised first)` };
    },
    remove: (task) => d.control.remove(task),
    retry: async (task) => {
      await d.control.reassign(task).catch((e: Error) => {
        throw new ActionError(e.message, 409);
      });
      return { message: `the copies of ${await key(task)} are assigned again` };
    },
    failoverTest: async (task, req) => {
      const k = await key(task);
      const site = testSite(task, k, d.copies(), req.site);
      if (!d.sites().includes(site)) {
        throw new ActionError(`this gateway does not replicate to ${site} (no --remote ${site}=…)`, 409);
      }
      const t = await d.tests.begin(task.name, k, site, req.durationSeconds, req.point).catch((e: Error) => {
        throw new ActionError(`cannot start a failover test of ${k}: ${e.message}`, 409);
      });
      return {
        message:
          `a copy of ${k} at site ${site} (${req.point === undefined ? "" : "point "}sequence ${t.seq}) ` +
          `is exported at ${t.export}; ` +
          "the service and the replication go on here",
        detail: { test: t },
      };
    },
    endFailoverTest: async (task) => {
      const t = await d.tests.end(task.name);
      return {
        message: t
          ? `the test copy at site ${t.site} is discarded`
          : "no test copy was running (the gateway restarted meanwhile)",
      };
    },
    failover: async (task, req) => {
      const s = service(task);
      if (req.site && req.site !== s.site) {
        throw new ActionError(`service "${s.name}" fails over to site "${s.site}", not "${req.site}"`, 400);
      }
      // a point is checked at the site before anything moves (the primary is fenced first)
      let at = "";
      if (req.point !== undefined) {
        if (!d.checkPoint) throw new ActionError("this gateway cannot fail over to a point", 409);
        const k = await key(task);
        const p = await d.checkPoint(s.site, k, req.point).catch((e: Error) => {
          throw new ActionError(`cannot fail over ${k} to point ${req.point}: ${e.message}`, 409);
        });
        at = ` at point ${p.seq}`;
      }
      // a real failover ends a test: its copy is discarded before the standby is promoted
      if (task.state === "testing") await d.tests.end(task.name);
      await d.services.failover(s.name, `${req.reason} (task ${task.name})${at}`, req.point);
      return {
        message: `service ${s.name} now runs at site ${s.site}${at}`,
        detail: { service: s.name, site: s.site, ...(req.point === undefined ? {} : { point: req.point }) },
      };
    },
    // deno-lint-ignore require-await -- async so that its refusals reject like every action's
    failback: async (task) => {
      const s = service(task);
      // refusals found before anything moved are answered now; the failback ends in the background
      const started = d.services.failback(s.name);
      if ("refused" in started) throw new ActionError(started.refused.message, 409);
      return {
        message: `failback of service ${s.name} started: the local copies are brought back first`,
        later: started.done.then(
          () => ({ event: "failed-back" as const, cause: `failback of service ${s.name} done` }),
          (e: Error) => ({
            event: "failback-failed" as const,
            cause: `failback of service ${s.name} failed: ${e.message}`,
          }),
        ),
      };
    },
    recoveryCandidates: async (task, point, strategy) => {
      const k = await key(task);
      return await recovering(() => d.recovery.candidates(k, point, strategy));
    },
    recover: async (task, req) => {
      const r = await requestRecovery(await key(task), req);
      return {
        message: `recovery ${r.id} of the ${req.target} from ${r.source}`,
        detail: { recovery: r.id, source: r.source, explanation: r.explanation },
      };
    },
    schedule: async (task, req) => {
      const r = await requestRecovery(await key(task), req.recover, req.at);
      return { id: String(r.id), task: task.name, action: "recover", at: req.at, status: "scheduled" };
    },
    listSchedules: schedules,
    cancelSchedule: async (task, id) => {
      if (!(await schedules(task)).some((s) => s.id === id)) {
        throw new ActionError(`task "${task.name}" has no scheduled recovery ${id}`, 404);
      }
      await recovering(() => d.recovery.cancel(Number(id)));
    },
  };
}

/** The parts of the gateway's status taskEvent looks at. */
export interface TaskStatusView {
  sites?: {
    site: string;
    connected?: boolean;
    volumes?: { agent?: string; name?: string; state: string }[];
  }[];
}

/**
 * The event the status implies for a task (bound to volume `key`), or undefined: what the
 * control plane would report. `recoveries` are the gateway's, newest last.
 */
export function taskEvent(
  task: Task,
  key: string,
  status: TaskStatusView,
  recoveries: RecoveryRow[],
): { event: TaskEvent; cause: string } | undefined {
  const [agent, name] = key.split("/");
  const copies = task.group.remotes.map((r) => {
    const site = status.sites?.find((s) => s.site === r.site);
    const v = site?.volumes?.find((x) => x.agent === agent && x.name === name);
    return { site: r.site, connected: site?.connected === true, state: v?.state ?? "unknown" };
  });
  const bad = copies.filter((c) => !c.connected || c.state !== "consistent");
  const describe = (c: typeof copies[number]) =>
    `${c.site}: ${c.connected ? `copy ${c.state}` : "link down"}`;
  switch (task.state) {
    case "syncing":
    case "degraded":
      if (bad.length === 0) return { event: "synced", cause: `every remote copy of ${key} is consistent` };
      if (task.state === "syncing" && bad.some((c) => !c.connected)) {
        return { event: "degrade", cause: bad.map(describe).join(", ") };
      }
      return undefined;
    case "protected":
      return bad.length ? { event: "degrade", cause: bad.map(describe).join(", ") } : undefined;
    case "recovering": {
      const mine = recoveries.filter((r) => r.volume === key && r.createdAt >= task.stateSince - 5_000);
      const last = mine[mine.length - 1];
      if (!last) return undefined;
      if (last.status === "done") return { event: "recovered", cause: `recovery ${last.id} of ${key} done` };
      if (last.status === "failed" || last.status === "cancelled") {
        return {
          event: "recovery-failed",
          cause: `recovery ${last.id} of ${key} ${last.status}${last.error ? `: ${last.error}` : ""}`,
        };
      }
      return undefined;
    }
    default:
      return undefined;
  }
}

/**
 * Applies taskEvent to every task (called with each status snapshot). Errors of one task (its
 * host deleted meanwhile, a concurrent change) are skipped: the next snapshot tries again.
 */
export async function followTasks(
  store: TaskStore,
  status: TaskStatusView,
  recoveries: RecoveryRow[],
): Promise<void> {
  for (const task of await store.listTasks()) {
    if (!["syncing", "degraded", "protected", "recovering"].includes(task.state)) continue;
    try {
      const e = taskEvent(task, await volumeKey(store, task), status, recoveries);
      if (e) await store.applyEvent(task.name, e.event, e.cause, task.state);
    } catch { /* next snapshot */ }
  }
}
