// What keeps a task from being protected, for the people looking at it (pure: no I/O): the
// failure of its last start or resume (kept on the task until one succeeds), a copy the control
// plane could not assign (its LSP at the agent, an RSP at a remote site), and a remote center
// whose link is down. Each says why; the task page, the task list and the dashboard show them
// until they are resolved, and POST /api/tasks/NAME/retry runs the failed step again.
import type { Task } from "./model.ts";
import type { AssignmentState } from "./control-plane.ts";

export interface TaskProblem {
  /** start, resume: that action failed; assignment: a copy is not assigned; link: a site is away. */
  kind: "start" | "resume" | "assignment" | "link";
  message: string;
  /** When it began (ms), when known. */
  since: number | null;
  /** failed: it needs the operator (fix, then retry); waiting: the gateway goes on trying by itself. */
  level: "failed" | "waiting";
}

/** The parts of the local gateway's status the problems come from. */
export interface ProblemStatusView {
  assignments?: AssignmentState[];
  sites?: { site: string; connected?: boolean; lastError?: string | null }[];
}

export function taskProblems(task: Task, status: ProblemStatusView): TaskProblem[] {
  const out: TaskProblem[] = [];
  if (task.failure) {
    out.push({
      kind: task.failure.action === "resume" ? "resume" : "start",
      message: `${task.failure.action} failed: ${task.failure.reason}`,
      since: task.failure.at,
      level: "failed",
    });
  }
  // a task not started assigns nothing; a paused one sends nothing: its links do not matter
  if (task.state === "configured") return out;
  for (const a of status.assignments ?? []) {
    if (a.task !== task.name || a.state === "assigned" || (a.state === "pending" && !a.error)) continue;
    const what = a.kind === "lsp"
      ? `volume ${a.volume} at agent ${a.agent}`
      : `the standby copy (RSP) of ${a.agent}/${a.volume} at ${a.site}`;
    out.push({
      kind: "assignment",
      message: a.state === "failed"
        ? `${what} cannot be assigned: ${a.error ?? "no reason given"}`
        : `${what} waits: ${a.error}`,
      since: a.since || null,
      level: a.state === "failed" ? "failed" : "waiting",
    });
  }
  if (task.state === "paused") return out;
  for (const r of task.group.remotes) {
    const s = status.sites?.find((x) => x.site === r.site);
    if (!s || s.connected) continue;
    out.push({
      kind: "link",
      message: `the link to ${r.site} is down${s.lastError ? `: ${s.lastError}` : ""}`,
      since: null,
      level: "waiting",
    });
  }
  return out;
}

/** Whether a task has something the operator can retry: a failed start or resume, or a failed assignment. */
export function retryable(problems: TaskProblem[]): boolean {
  return problems.some((p) => p.level === "failed");
}
