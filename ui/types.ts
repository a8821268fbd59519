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
import type { Task } from "../src/tasks/model.ts";

export type TaskView = Task & { allowed: string[] };

export interface Stored {
  createdAt: number;
  updatedAt: number;
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
