// What the operator's task actions do, behind the API: an injected TaskActions. The web layer
// validates each request body (the schemas below) and the state machine, calls the action, and
// only then records the transition. gatewayActions (gateway-actions.ts) is the local gateway's
// implementation; tests inject their own.
import { z } from "zod";
import { heldPointSchema, must, nameSchema, SOURCE_RE, type Task, type TaskEvent } from "./model.ts";
import type { Candidate } from "../recovery/service.ts";

/** An action refused or failed, with the HTTP status the API answers. */
export class ActionError extends Error {
  constructor(message: string, readonly status: 400 | 404 | 409 | 500 | 503 = 409) {
    super(message);
    this.name = "ActionError";
  }
}

const source = z.string({ error: must("a string") }).regex(SOURCE_RE, "use lgp, rgp@SITE or rsp@SITE");
const reason = z.string({ error: must("a string") }).max(200, "must be at most 200 characters");

/** A recovery point: a sequence number of the LSP, or a time (ms since the epoch); neither: the newest. */
export const pointSchema = z.object({
  seq: z.number({ error: must("a sequence number") }).int("must be a whole number").nonnegative(
    "must not be negative",
  )
    .optional(),
  time: z.number({ error: must("a time in ms since the epoch") }).int("must be a whole number")
    .positive("must be positive").optional(),
}).strict().refine((p) => p.seq === undefined || p.time === undefined, "give seq or time, not both");
export type RecoveryPoint = z.infer<typeof pointSchema>;

export const emptySchema = z.object({}).strict();

export const pauseSchema = z.object({ reason: reason.optional() }).strict();
export type PauseRequest = z.infer<typeof pauseSchema>;

export const failoverTestSchema = z.object({
  /** The remote center to test (default: the task's first). */
  site: nameSchema.optional(),
  /** How long the test copy stays up before it is discarded. */
  durationSeconds: z.number({ error: must("a number of seconds") }).int("must be a whole number")
    .min(60, "must be at least 60 s").max(86400, "must be at most 86400 s (one day)").default(600),
  /** A recovery point held at the site: a sequence number or a checkpoint name (default: now). */
  point: heldPointSchema.optional(),
}).strict();
export type FailoverTestRequest = z.infer<typeof failoverTestSchema>;

export const failoverSchema = z.object({
  /** The remote center to serve from (default: the policy's or the task's first). */
  site: nameSchema.optional(),
  reason: reason.default("operator request"),
  /** Roll the standby back to this recovery point of its site first (sequence or checkpoint name). */
  point: heldPointSchema.optional(),
}).strict();
export type FailoverRequest = z.infer<typeof failoverSchema>;

export const failbackSchema = z.object({
  /** Where the local copies are rebuilt from (default: the copy of the center that served). */
  source: source.optional(),
  strategy: z.enum(["full", "fast"], { error: must('"full" or "fast"') }).default("fast"),
}).strict();
export type FailbackRequest = z.infer<typeof failbackSchema>;

export const recoverSchema = z.object({
  mode: z.enum(["manual", "policy"], { error: must('"manual" or "policy"') }),
  strategy: z.enum(["full", "fast"], { error: must('"full" or "fast"') }).default("fast"),
  /** Manual mode: the copy to recover from. */
  source: source.optional(),
  /** Which local copy is rebuilt: the application server's (lsp) or the gateway's mirror (lgp). */
  target: z.enum(["lsp", "lgp"], { error: must('"lsp" or "lgp"') }).default("lsp"),
  /** Policy mode: the disaster point. */
  point: pointSchema.optional(),
  /** Recover even from a copy the policy finds invalid (older than the point, inconsistent). */
  force: z.boolean({ error: must("true or false") }).default(false),
  /** fast: move the tracked divergence (tracked), hash both ends (scan), or track when a common point is known. */
  method: z.enum(["auto", "scan", "tracked"], { error: must('"auto", "scan" or "tracked"') }).default("auto"),
}).strict().superRefine((r, ctx) => {
  if (r.mode === "manual" && !r.source) {
    ctx.addIssue({
      code: "custom",
      path: ["source"],
      message: "is required in manual mode (lgp, rgp@SITE or rsp@SITE)",
    });
  }
  if (r.mode === "policy" && r.source) {
    ctx.addIssue({
      code: "custom",
      path: ["source"],
      message: "is chosen by the policy: leave it out in policy mode",
    });
  }
});
export type RecoverRequest = z.infer<typeof recoverSchema>;

// Scheduled recoveries are the task's R strategy; a failover test is run (and timed, by its
// duration) by the operator, so it is not schedulable.
export const scheduleSchema = z.object({
  /** What runs at `at`. */
  action: z.literal("recover", { error: must('"recover" (only recoveries are scheduled)') }),
  /** When: ms since the epoch, in the future. */
  at: z.number({ error: must("a time in ms since the epoch") }).int("must be a whole number")
    .refine((t) => t > Date.now(), "must be in the future"),
  recover: recoverSchema,
}).strict();
export type ScheduleRequest = z.infer<typeof scheduleSchema>;

export interface Schedule {
  id: string;
  task: string;
  action: "recover";
  at: number;
  status: string;
}

/** One source a recovery could copy from, assessed by the recovery service (the recovery page shows it). */
export type { Candidate as RecoveryCandidate } from "../recovery/service.ts";

export interface CandidateList {
  candidates: Candidate[];
  /** The source the policy chooses, null when no candidate is valid. */
  chosen: string | null;
  explanation: string;
}

/** What an action reports; `then` are further events to record once it is done (e.g. failed-back). */
export interface ActionResult {
  message?: string;
  then?: TaskEvent[];
  /** An action that goes on in the background: the event that ends it, applied after `then`. */
  later?: Promise<{ event: TaskEvent; cause: string }>;
  detail?: Record<string, unknown>;
}

/**
 * The task actions. Each receives the task as stored (its state is the one before the action)
 * and the validated request; it throws an ActionError to refuse (status and message go to the
 * caller). The API records the state machine's transition only when it resolves.
 */
export interface TaskActions {
  /** configured → syncing: configure the agents and gateways, begin the first synchronisation. */
  start(task: Task): Promise<ActionResult | void>;
  /** → paused: stop replicating (the remote copies stay consistent, older). */
  pause(task: Task, req: PauseRequest): Promise<ActionResult | void>;
  /** paused → syncing */
  resume(task: Task): Promise<ActionResult | void>;
  /** protected → testing: bring a remote copy up beside the running service. */
  failoverTest(task: Task, req: FailoverTestRequest): Promise<ActionResult | void>;
  /** testing → protected: discard the test copy. */
  endFailoverTest(task: Task): Promise<ActionResult | void>;
  /** → failed-over: the service moves to a remote center. */
  failover(task: Task, req: FailoverRequest): Promise<ActionResult | void>;
  /** failed-over → failing-back: rebuild the local copies, then move the service back. */
  failback(task: Task, req: FailbackRequest): Promise<ActionResult | void>;
  /** The sources a recovery to `point` could use, assessed, and the policy's choice. */
  recoveryCandidates(task: Task, point: RecoveryPoint, strategy: "full" | "fast"): Promise<CandidateList>;
  /** → recovering: rebuild a local copy from a source. */
  recover(task: Task, req: RecoverRequest): Promise<ActionResult | void>;
  /**
   * Assigns a started task's copies again after one was refused (a device missing, then
   * fixed). Optional: an implementation without assignments has nothing to retry.
   */
  retry?(task: Task): Promise<ActionResult | void>;
  /**
   * The task was deleted (it was configured or paused): undo what start did. Optional: an
   * implementation that starts nothing has nothing to undo.
   */
  remove?(task: Task): Promise<void>;
  /** Runs an action later; no state change now. */
  schedule(task: Task, req: ScheduleRequest): Promise<Schedule>;
  listSchedules(task: Task): Promise<Schedule[]>;
  cancelSchedule(task: Task, id: string): Promise<void>;
}
