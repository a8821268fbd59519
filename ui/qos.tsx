// The QoS parts of the UI: the targets a task promises (a fieldset of the task wizard), each agent
// link's detector (targets, the settings derived from them, what they guarantee on the link as
// measured, and what was observed so far), and a task's failover drills (run one, schedule them,
// the graded history).
import { useEffect, useState } from "preact/hooks";
import { isAdmin, post } from "./api.ts";
import {
  Badge,
  ConfirmDialog,
  Empty,
  ErrorBox,
  Field,
  issueAt,
  Loading,
  useResource,
} from "./components.tsx";
import { dateTime, duration } from "./format.ts";
import { status } from "./live.ts";
import type { Drill } from "../src/drills/drills.ts";
import type { TaskView } from "./types.ts";
import type { Targets } from "../src/tasks/model.ts";

const ms = (x: number | null | undefined) => duration(x);
const every = (x: number | null | undefined) =>
  x === null || x === undefined ? "—" : x >= 1e12 ? "> 30 years" : duration(x);

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000 };

/** "500ms", "1.5s", "2m", "1h", "30d" → milliseconds; NaN when it is not a duration. */
export function parseDuration(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*$/i.exec(text);
  return m ? Number(m[1]) * UNITS[m[2].toLowerCase()] : NaN;
}

export interface TargetsInput {
  detection: string;
  recurrence: string;
  mistake: string;
  rto: string;
  rpo: string;
}

export const NO_TARGETS: TargetsInput = { detection: "", recurrence: "", mistake: "", rto: "", rpo: "" };

/** The task body's `targets` from the fields, or a message saying which field is wrong. */
export function targetsBody(v: TargetsInput): { targets?: Targets; error?: string } {
  const ms = (text: string) => text.trim() === "" ? undefined : parseDuration(text);
  const [td, tmr, tm, rto, rpo] = [v.detection, v.recurrence, v.mistake, v.rto, v.rpo].map(ms);
  for (
    const [x, name] of [
      [td, "detection"],
      [tmr, "false-detection interval"],
      [tm, "false-detection length"],
      [rto, "RTO"],
      [rpo, "RPO"],
    ] as const
  ) {
    if (x !== undefined && !Number.isFinite(x)) {
      return { error: `The ${name} is not a duration (e.g. 500ms, 2s, 5m, 30d).` };
    }
  }
  const given = [td, tmr, tm].filter((x) => x !== undefined).length;
  if (given !== 0 && given !== 3) return { error: "Give all three detection targets, or none." };
  const targets: Targets = {};
  if (given) targets.detection = { detectionMs: td!, mistakeRecurrenceMs: tmr!, mistakeDurationMs: tm! };
  if (rto !== undefined) targets.rtoMs = rto;
  if (rpo !== undefined) targets.rpoMs = rpo;
  return Object.keys(targets).length ? { targets } : {};
}

/** Targets for people: "detect within 1.0 s, a false detection at most every 720.0 h lasting 2.0 s; RTO 5 min". */
export function targetsSummary(t: Targets | undefined): string {
  const parts: string[] = [];
  const d = t?.detection;
  if (d) {
    parts.push(
      `detect within ${ms(d.detectionMs)}, a false detection at most every ${
        every(d.mistakeRecurrenceMs)
      } lasting ${ms(d.mistakeDurationMs)}`,
    );
  }
  if (t?.rtoMs !== undefined) parts.push(`RTO ${ms(t.rtoMs)}`);
  if (t?.rpoMs !== undefined) parts.push(`RPO ${ms(t.rpoMs)}`);
  return parts.length ? parts.join("; ") : "none";
}

/** The wizard's targets: detection (T_D^U, T_MR^L, T_M^U) and the RTO and RPO drills are graded against. */
export function TargetsFields(
  { value, onChange, error }: { value: TargetsInput; onChange: (v: TargetsInput) => void; error?: unknown },
) {
  const field = (key: keyof TargetsInput, label: string, hint: string, path: string) => (
    <Field label={label} hint={hint} error={issueAt(error, path)}>
      <input
        name={`target-${key}`}
        value={value[key]}
        placeholder="e.g. 2s"
        onInput={(e) =>
          onChange({ ...value, [key]: e.currentTarget.value })}
      />
    </Field>
  );
  const bad = targetsBody(value).error;
  return (
    <fieldset class="panel" data-testid="targets">
      <legend>Targets (optional)</legend>
      <div class="stack">
        <p class="small muted">
          The local gateway derives its failure detector's heartbeat period and margin for the task's server
          from the link it measures; give all three detection targets, or none.
        </p>
        <div class="fields">
          {field(
            "detection",
            "Detect a failed server within",
            "T_D, e.g. 1s",
            "targets.detection.detectionMs",
          )}
          {field(
            "recurrence",
            "A false detection at most once every",
            "T_MR, e.g. 30d",
            "targets.detection.mistakeRecurrenceMs",
          )}
          {field(
            "mistake",
            "A false detection lasts at most",
            "T_M, e.g. 2s",
            "targets.detection.mistakeDurationMs",
          )}
        </div>
        <div class="fields">
          {field("rto", "Service back at a remote center within (RTO)", "e.g. 5m", "targets.rtoMs")}
          {field("rpo", "Recent writes it may lack (RPO)", "e.g. 10s, 0", "targets.rpoMs")}
        </div>
        {bad && <span class="err" role="alert">{bad}</span>}
      </div>
    </fieldset>
  );
}

/** Each agent link's detector: its targets, settings, guarantees and what it delivered. */
export function DetectorPanel({ agents }: { agents?: string[] }) {
  const links = (status.value?.detectorQos ?? [])
    .filter((l) => !agents || agents.includes(l.agent));
  return (
    <section class="panel" aria-labelledby="h-detector" data-testid="detector-qos">
      <h2 id="h-detector">Failure detection</h2>
      {links.length === 0
        ? <Empty>No heartbeats from {agents ? agents.join(", ") : "any agent"} yet.</Empty>
        : (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Agent</th>
                  <th>Configuration</th>
                  <th>Targets (T_D, T_MR, T_M)</th>
                  <th>Heartbeats η, margin α</th>
                  <th>Guaranteed on this link</th>
                  <th>Link</th>
                  <th>Observed</th>
                </tr>
              </thead>
              <tbody>
                {links.map((l) => (
                  <tr key={l.agent} data-agent={l.agent}>
                    <td>{l.agent}</td>
                    <td>
                      <Badge state={l.state} />
                      {l.reason && <div class="small" data-testid="qos-reason">{l.reason}</div>}
                      {l.best && (
                        <div class="small">
                          best achievable: detection{" "}
                          {ms(l.best.predicted.detectionMs)}, false detections every{" "}
                          {every(l.best.predicted.mistakeRecurrenceMs)}
                        </div>
                      )}
                    </td>
                    <td data-testid="qos-targets">
                      {l.targets
                        ? `${ms(l.targets.detectionMs)}, ${every(l.targets.mistakeRecurrenceMs)}, ${
                          ms(l.targets.mistakeDurationMs)
                        }`
                        : "none (the flags' η and α)"}
                      {l.targetsFrom.length > 0 && (
                        <div class="small muted">from {l.targetsFrom.join(", ")}</div>
                      )}
                    </td>
                    <td data-testid="qos-setting">
                      η {ms(l.running.etaMs)}, α {ms(l.running.alphaMs)}
                      {l.derived &&
                        (l.derived.etaMs !== l.running.etaMs || l.derived.alphaMs !== l.running.alphaMs) && (
                        <div class="small muted">
                          derived η {ms(l.derived.etaMs)}, α {ms(l.derived.alphaMs)}: the agent is told
                        </div>
                      )}
                    </td>
                    <td data-testid="qos-predicted">
                      {l.predicted
                        ? `T_D ≤ ${ms(l.predicted.detectionMs)}, T_MR ≥ ${
                          every(l.predicted.mistakeRecurrenceMs)
                        }, T_M ≤ ${ms(l.predicted.mistakeDurationMs)}`
                        : "measuring…"}
                    </td>
                    <td>
                      {l.link
                        ? `loss ${(l.link.lossProbability * 100).toFixed(2)} %, delay ${
                          ms(l.link.meanDelayMs)
                        } ± ${ms(l.link.delayStdDevMs)}`
                        : "measuring…"}
                    </td>
                    <td data-testid="qos-observed">
                      {l.observed.mistakes} false detection{l.observed.mistakes === 1 ? "" : "s"} in{" "}
                      {ms(l.observed.watchedMs)}
                      {l.observed.mistakeDurationMs !== null &&
                        `, lasting ${ms(l.observed.mistakeDurationMs)}`}
                      {`; ${l.observed.suspicions} suspicion${l.observed.suspicions === 1 ? "" : "s"}`}
                      {l.observed.detections.length > 0 && (
                        <div class="small">
                          failures detected in {l.observed.detections.map((d) => ms(d.ms)).join(", ")}
                        </div>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
    </section>
  );
}

/** A task's drills: run one (confirmed), schedule them, and the graded history. */
export function DrillsPanel({ task }: { task: TaskView }) {
  const path = `/api/tasks/${encodeURIComponent(task.name)}/drills`;
  const list = useResource<Drill[]>(path);
  const [asking, setAsking] = useState(false);
  const [at, setAt] = useState("");
  const [everyHours, setEveryHours] = useState("");
  const [error, setError] = useState<unknown>(undefined);
  const running = list.data?.some((d) => d.status === "running");
  useEffect(() => {
    if (!running) return;
    const timer = setInterval(list.reload, 1000);
    return () => clearInterval(timer);
  }, [running]);
  const schedule = async (e: Event) => {
    e.preventDefault();
    setError(undefined);
    try {
      const when = new Date(at).getTime();
      await post(path, { at: when, ...(everyHours ? { everyHours: Number(everyHours) } : {}) });
      setAt("");
      setEveryHours("");
      list.reload();
    } catch (err) {
      setError(err);
    }
  };
  const t = task.targets;
  return (
    <section class="panel" aria-labelledby="h-drills" data-testid="drills">
      <h2 id="h-drills">Failover drills</h2>
      <p class="small">
        A drill brings the service up on a test copy at a remote center (the standby's promotion hook with the
        copy's export), checks it, measures the RTO and the RPO and grades them against the targets: RTO{" "}
        <strong>{t?.rtoMs !== undefined ? ms(t.rtoMs) : "not set"}</strong>, RPO{" "}
        <strong>{t?.rpoMs !== undefined ? ms(t.rpoMs) : "not set"}</strong>. Production is not touched.
      </p>
      {isAdmin() && (
        <div class="row">
          <button
            type="button"
            class="primary"
            disabled={task.state !== "protected" || running}
            title={task.state !== "protected" ? "a drill needs the task protected" : undefined}
            onClick={() => setAsking(true)}
          >
            Run drill
          </button>
          <form class="row" onSubmit={schedule} aria-label="schedule a drill">
            <Field label="Schedule at">
              <input
                type="datetime-local"
                name="drill-at"
                required
                value={at}
                onInput={(e) => setAt(e.currentTarget.value)}
              />
            </Field>
            <Field label="Repeat every (hours)">
              <input
                name="drill-every"
                inputMode="numeric"
                value={everyHours}
                onInput={(e) => setEveryHours(e.currentTarget.value)}
              />
            </Field>
            <button type="submit">Schedule</button>
          </form>
        </div>
      )}
      <ErrorBox error={error} />
      {asking && (
        <ConfirmDialog
          title={`Run a failover drill of ${task.name}?`}
          confirmLabel="Run drill"
          onClose={() => setAsking(false)}
          onConfirm={async () => {
            await post(path, {});
            list.reload();
          }}
        >
          <p>
            The service is started on a test copy at a remote center and stopped again; the copy is discarded.
            The task is <em>testing</em> meanwhile.
          </p>
        </ConfirmDialog>
      )}
      {list.loading && !list.data
        ? <Loading what="the drills" />
        : list.error && !list.data
        ? <ErrorBox error={list.error} retry={list.reload} />
        : !list.data?.length
        ? <Empty>No drill yet.</Empty>
        : (
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>#</th>
                  <th>Grade</th>
                  <th>Site</th>
                  <th>Started</th>
                  <th>RTO</th>
                  <th>RPO</th>
                  <th>Why</th>
                </tr>
              </thead>
              <tbody>
                {list.data.map((d) => (
                  <tr key={d.id} data-drill={d.id}>
                    <td>{d.id}</td>
                    <td data-testid="drill-grade">
                      <Badge state={d.status} />
                    </td>
                    <td>{d.site ?? "—"}</td>
                    <td>
                      {d.status === "scheduled"
                        ? `${dateTime(d.scheduledAt)}${d.everyMs ? `, every ${ms(d.everyMs)}` : ""}`
                        : dateTime(d.startedAt)}
                    </td>
                    <td>{ms(d.rtoMs)}</td>
                    <td>{ms(d.rpoMs)}</td>
                    <td class="small">{[...d.reasons, ...d.notes].join("; ") || "—"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
    </section>
  );
}
