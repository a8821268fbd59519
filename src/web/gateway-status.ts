// The local gateway's status: what /api/status serves, the event stream diffs, /metrics renders
// and the UI shows. One type, composed of what each module's status() returns, so a change in
// any of them is a type error in every reader instead of a silent drift.
import type { ReceiverStats } from "../heartbeat/channel.ts";
import type { FailoverController } from "../failover/controller.ts";
import type { Liveness } from "../failover/liveness.ts";
import type { LinkQos } from "../failover/detector-qos.ts";
import type { AssignmentState } from "../tasks/control-plane.ts";
import type { FailoverTest } from "../tasks/failover-tests.ts";
import type { Sender } from "../replication/sender.ts";
import type { SiteRetention } from "../points/watch.ts";
import type { AlarmsStatus } from "../alarms/alarms.ts";

export interface VolumeStatus {
  id: number;
  agent: string;
  name: string;
  size: number;
  mirror: string;
  lastSeq: number;
  durableSeq: number;
  mirrorSeq: number;
  journalBytes: number;
  /** Most bytes of the journal its records may hold (its task's buffer bound), null: none. */
  bound: number | null;
}

/** One remote site's link and copies, as the volume's sender reports them. */
export type SiteStatus = { site: string; lastError: string | null } & ReturnType<Sender["status"]>;

export interface DrillSummary {
  task: string;
  id: number;
  passed: boolean;
  rtoMs: number | null;
  rpoMs: number | null;
  finishedAt: number;
  reasons: string[];
}

export interface TaskTargetsSeen {
  task: string;
  rtoMs?: number;
  rpoMs?: number;
  sites: string[];
}

export interface GatewayStatus {
  role: "local-gateway";
  site: string;
  uptimeMs: number;
  agents: string[];
  /** Records refused, by reason. */
  refused: Record<string, number>;
  liveness: ReturnType<Liveness["status"]>;
  heartbeats: ReceiverStats;
  services: ReturnType<FailoverController["status"]>;
  assignments: AssignmentState[];
  journal: { tail: number; durable: number; head: number; capacity: number; used: number };
  volumes: VolumeStatus[];
  sites: SiteStatus[];
  tests: FailoverTest[];
  retention: SiteRetention[];
  detectorQos: LinkQos[];
  alarms: AlarmsStatus;
  taskTargets: TaskTargetsSeen[];
  drills: DrillSummary[];
}
