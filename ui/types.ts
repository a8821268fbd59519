// The API's shapes, from the server's own model (type-only: nothing of it is bundled).
export type {
  Group,
  Host,
  Mirror,
  PartitionRef,
  Recovery,
  Site,
  Task,
  TaskEvent,
  TaskState,
  Volume,
} from "../src/tasks/model.ts";
export type { CandidateList, RecoveryCandidate, Schedule } from "../src/tasks/actions.ts";
export type { TaskProblem } from "../src/tasks/problems.ts";
import type { PartitionRef, Task, Volume } from "../src/tasks/model.ts";
import type { TaskProblem } from "../src/tasks/problems.ts";

export type TaskView = Task & { allowed: string[]; problems: TaskProblem[] };

export interface Stored {
  /** Found by the gateway itself (not typed in). */
  discovered: boolean;
  /** When the gateway last saw it (ms), null: never. */
  lastSeen: number | null;
  createdAt: number;
  updatedAt: number;
}

/** GET /api/discovery/proposal: a group for a new task. */
export interface ProposalView {
  group: {
    local: { site: string; lsp?: PartitionRef; lgp?: PartitionRef; buffer?: PartitionRef };
    remotes: { site: string; rgp?: PartitionRef; rsp?: PartitionRef }[];
  };
  /** The gateways' copies proposed, not registered yet: the task registers them. */
  adopt: Volume[];
  notes: { path: string; message: string }[];
  complete: boolean;
}

export interface AuditRow {
  id: number;
  time: number;
  subject: string;
  kind: string;
  fromState: string | null;
  toState: string | null;
  cause: string;
  detail: Record<string, unknown>;
}
