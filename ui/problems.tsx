// What keeps a task from being protected (its `problems`, from the API): a failed start or
// resume, a copy that cannot be assigned, a site away. Shown on the task page, as a badge in the
// task list and on the dashboard until resolved; a failure is retried with one click.
import { useState } from "preact/hooks";
import { isAdmin, post } from "./api.ts";
import { Badge, ErrorBox } from "./components.tsx";
import { ago } from "./format.ts";
import type { TaskProblem, TaskView } from "./types.ts";

const KIND: Record<TaskProblem["kind"], string> = {
  start: "start failed",
  resume: "resume failed",
  assignment: "copy not assigned",
  link: "site unreachable",
};

/** The task's worst problem as a badge (nothing when it has none). */
export function ProblemBadge({ task }: { task: TaskView }) {
  const failed = task.problems.find((p) => p.level === "failed");
  const shown = failed ?? task.problems[0];
  if (!shown) return null;
  return (
    <span data-testid="problem-badge" title={shown.message}>
      <Badge state={failed ? "failed" : "waiting"} label={KIND[shown.kind]} />
    </span>
  );
}

/** Runs the failed step again: POST /api/tasks/NAME/retry (admins only). */
export function RetryButton({ task, onDone }: { task: TaskView; onDone: (message: string) => void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(undefined);
  if (!isAdmin() || !task.problems.some((p) => p.level === "failed")) return null;
  return (
    <>
      <button
        type="button"
        class="primary"
        data-action="retry"
        disabled={busy}
        onClick={async () => {
          setBusy(true);
          setError(undefined);
          try {
            const r = await post<{ to: string; message?: string }>(
              `/api/tasks/${encodeURIComponent(task.name)}/retry`,
            );
            onDone(`Retried: now ${r.to}${r.message ? ` — ${r.message}` : ""}`);
          } catch (e) {
            setError(e);
            onDone("");
          } finally {
            setBusy(false);
          }
        }}
      >
        {busy ? "Retrying…" : "Retry"}
      </button>
      <ErrorBox error={error} />
    </>
  );
}

/** The task page's list of problems, with the retry. */
export function TaskProblems({ task, onChange }: { task: TaskView; onChange: (message: string) => void }) {
  if (task.problems.length === 0) return null;
  const failed = task.problems.some((p) => p.level === "failed");
  return (
    <section
      class={`alert ${failed ? "error" : "info"}`}
      aria-labelledby="h-problems"
      data-testid="task-problems"
    >
      <h2 id="h-problems">{failed ? "This task needs attention" : "Waiting"}</h2>
      <ul>
        {task.problems.map((p, i) => (
          <li key={i} data-kind={p.kind}>
            {p.message} {p.since ? <span class="small muted">({ago(p.since)})</span> : null}
          </li>
        ))}
      </ul>
      <p class="small">
        {failed
          ? "Fix the cause (the reason says what), then retry."
          : "The gateway goes on trying by itself."}
      </p>
      <RetryButton task={task} onDone={onChange} />
    </section>
  );
}

/** The dashboard's list of tasks with problems. */
export function AttentionPanel({ tasks, onChange }: { tasks: TaskView[]; onChange: () => void }) {
  const troubled = tasks.filter((t) => t.problems.length > 0);
  if (troubled.length === 0) return null;
  return (
    <section class="panel" aria-labelledby="h-attention" data-testid="attention">
      <h2 id="h-attention">Needs attention</h2>
      <ul class="log">
        {troubled.flatMap((t) =>
          t.problems.map((p, i) => (
            <li key={`${t.name}-${i}`}>
              <a href={`/tasks/${encodeURIComponent(t.name)}`}>{t.name}</a>
              <span class="kind">
                <Badge state={p.level === "failed" ? "failed" : "waiting"} label={KIND[p.kind]} />
              </span>
              <span class="msg">
                {p.message} {i === 0 && <RetryButton task={t} onDone={onChange} />}
              </span>
            </li>
          ))
        )}
      </ul>
    </section>
  );
}
