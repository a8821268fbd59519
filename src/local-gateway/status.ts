// The local gateway's status (src/web/gateway-status.ts is its type), composed of what each part
// reports, and the alarms' watch over the same parts, which also reads the tasks' targets the
// status shows.
import type { Alarms } from "../alarms/alarms.ts";
import type { Drills } from "../drills/drills.ts";
import type { FailoverController, ServiceConfig } from "../failover/controller.ts";
import type { FailureDetection } from "../failover/detection.ts";
import type { Journal } from "../journal/journal.ts";
import type { GatewayListener } from "../link/gateway-listener.ts";
import type { MirrorApplier } from "../mirror/applier.ts";
import type { RetentionWatch } from "../points/watch.ts";
import type { ControlPlane } from "../tasks/control-plane.ts";
import type { FailoverTests } from "../tasks/failover-tests.ts";
import type { TaskStore } from "../tasks/store.ts";
import { taskTargets } from "../tasks/targets.ts";
import type { GatewayStatus, TaskTargetsSeen } from "../web/gateway-status.ts";
import type { RemoteSites } from "./sites.ts";

export interface StatusParts {
  site: string;
  listener: GatewayListener;
  detection: FailureDetection;
  controller: FailoverController;
  control: ControlPlane;
  journal: Journal;
  mirror: MirrorApplier;
  sites: RemoteSites;
  tests: FailoverTests;
  retention: RetentionWatch;
  alarms: Alarms;
  drills: Drills;
  /** The tasks' targets as last read (watchAlarms). */
  targets: () => TaskTargetsSeen[];
}

/** The status now; uptime counts from `started` (performance.now()). */
export function gatewayStatus(g: StatusParts, started: number): GatewayStatus {
  const { journal } = g;
  return {
    role: "local-gateway",
    site: g.site,
    uptimeMs: Math.round(performance.now() - started),
    agents: g.listener.connectedAgents(),
    refused: Object.fromEntries(g.listener.refused),
    liveness: g.detection.liveness.status(),
    heartbeats: g.detection.heartbeats.stats(),
    services: g.controller.status(),
    assignments: g.control.status(),
    journal: { ...journal.positions, used: journal.positions.head - journal.positions.tail },
    volumes: journal.volumes().map((v) => ({
      id: v.id,
      agent: v.agent,
      name: v.name,
      size: v.size,
      mirror: v.mirrorPath,
      lastSeq: v.lastSeq,
      durableSeq: v.durableSeq,
      mirrorSeq: g.mirror.applied(v.id),
      journalBytes: journal.heldBytes(v.id),
      bound: v.bound ?? null,
    })),
    sites: g.sites.status(),
    tests: g.tests.list(),
    retention: g.retention.status(),
    detectorQos: g.detection.qos.status(),
    alarms: g.alarms.status(),
    taskTargets: g.targets(),
    drills: g.drills.latest().map((d) => ({
      task: d.task,
      id: d.id,
      passed: d.status === "passed",
      rtoMs: d.rtoMs,
      rpoMs: d.rpoMs,
      finishedAt: d.finishedAt ?? 0,
      reasons: d.reasons,
    })),
  };
}

export interface AlarmParts {
  store: TaskStore;
  services: readonly ServiceConfig[];
  controller: FailoverController;
  sites: RemoteSites;
  journal: Journal;
  retention: RetentionWatch;
}

/** Starts the alarms' watch over the gateway; returns the tasks' targets as it last read them. */
export function watchAlarms(alarms: Alarms, g: AlarmParts): () => TaskTargetsSeen[] {
  let seen: TaskTargetsSeen[] = [];
  alarms.watch(async () => {
    const tasks = await g.store.listTasks();
    seen = tasks.map((t) => {
      const { rtoMs, rpoMs } = taskTargets(t, g.services);
      return { task: t.name, rtoMs, rpoMs, sites: t.group.remotes.map((r) => r.site) };
    });
    return {
      services: g.controller.status(),
      sites: g.sites.status(),
      journal: {
        used: g.journal.positions.head - g.journal.positions.tail,
        capacity: g.journal.positions.capacity,
      },
      tasks: tasks.map((t, i) => ({ name: t.name, state: t.state, ...seen[i] })),
      retention: g.retention.status(),
    };
  });
  return () => seen;
}
