// A task's page: its state and the actions the state machine allows (each confirmed), its running
// failover test, live lag and throughput per remote center with a chart, the group, the
// strategies, schedules, and the task's events and audit log.
import { useEffect, useMemo, useState } from "preact/hooks";
import { del, isAdmin, post } from "../api.ts";
import { Badge, ConfirmDialog, Empty, ErrorBox, Field, Loading, useResource } from "../components.tsx";
import { LineChart } from "../chart.tsx";
import { bytes, clock, dateTime, rate, seconds } from "../format.ts";
import { events, history, status } from "../live.ts";
import { navigate } from "../router.ts";
import type { AuditRow, Host, Schedule, Stored, TaskView } from "../types.ts";
import { LiveDot } from "./dashboard.tsx";
import { ProblemBadge, TaskProblems } from "../problems.tsx";
import { DetectorPanel, DrillsPanel, targetsSummary } from "../qos.tsx";
import { PointsPanel } from "../points.tsx";

interface ActionDef {
  action: string;
  event: string;
  label: string;
  danger?: boolean;
  explain: string;
}

const ACTIONS: ActionDef[] = [
  {
    action: "start",
    event: "start",
    label: "Start",
    explain: "Configures the copies and starts the first synchronisation.",
  },
  {
    action: "pause",
    event: "pause",
    label: "Pause",
    explain: "Stops replicating: the remote copies stay consistent but fall behind.",
  },
  {
    action: "resume",
    event: "resume",
    label: "Resume",
    explain: "Replicates again; the remote copies are brought level first.",
  },
  {
    action: "failover-test",
    event: "failover-test",
    label: "Failover test",
    explain: "Exports a writable copy of a remote center's replica there, to start the service on it and " +
      "check it; the running service, the replication and the replica are not touched.",
  },
  {
    action: "end-test",
    event: "test-done",
    label: "End test",
    explain: "Discards the test copy at the remote center; what was written to it is lost.",
  },
  {
    action: "failover",
    event: "failover",
    label: "Failover",
    danger: true,
    explain: "Moves the service to a remote center now. Clients are switched; the local server is fenced.",
  },
  {
    action: "failback",
    event: "failback",
    label: "Failback",
    danger: true,
    explain: "Rebuilds the local copies from the remote center, then moves the service back.",
  },
];

/** The agent of the task's LSP host (the host's agent id, else its name). */
function lspAgent(t: TaskView, hosts: Host[] | undefined): string {
  const h = hosts?.find((x) => x.name === t.group.local.lsp.host);
  return h?.agent ?? t.group.local.lsp.host;
}

function relevantSubjects(t: TaskView, hosts: Host[] | undefined): Set<string> {
  const out = new Set<string>([`task:${t.name}`]);
  for (const r of t.group.remotes) out.add(`site:${r.site}`);
  const lspHost = hosts?.find((h) => h.name === t.group.local.lsp.host);
  out.add(`agent:${lspHost?.agent ?? t.group.local.lsp.host}`);
  if (t.service) out.add(`service:${t.service}`);
  return out;
}

function ActionBar({ task, onDone }: { task: TaskView; onDone: (msg: string) => void }) {
  const [open, setOpen] = useState<ActionDef | undefined>(undefined);
  const [site, setSite] = useState(task.group.remotes[0]?.site ?? "");
  const [reason, setReason] = useState("");
  const [duration, setDuration] = useState("600");
  const [source, setSource] = useState("");
  const [strategy, setStrategy] = useState("fast");
  const [point, setPoint] = useState("");
  const admin = isAdmin();
  // a recovery point: a sequence number or a checkpoint name; empty: now
  const at = () =>
    point.trim() ? { point: /^\d+$/.test(point.trim()) ? Number(point.trim()) : point.trim() } : {};
  const body = (a: ActionDef): Record<string, unknown> => {
    switch (a.action) {
      case "pause":
        return reason ? { reason } : {};
      case "failover-test":
        return { site, durationSeconds: Number(duration), ...at() };
      case "failover":
        return { site, ...(reason ? { reason } : {}), ...at() };
      case "failback":
        return { strategy, ...(source ? { source } : {}) };
      default:
        return {};
    }
  };
  if (!admin) {
    return (
      <p class="small muted" data-testid="read-only">
        You are logged in as a viewer: the actions need the admin role.{" "}
        <a href={`/tasks/${encodeURIComponent(task.name)}/recovery`}>Recovery candidates…</a>
      </p>
    );
  }
  return (
    <div class="row" role="toolbar" aria-label="task actions">
      {ACTIONS.map((a) => {
        const allowed = task.allowed.includes(a.event);
        return (
          <button
            type="button"
            key={a.action}
            class={a.danger && allowed ? "danger" : ""}
            disabled={!allowed}
            title={allowed ? a.explain : `not possible while ${task.state}`}
            data-action={a.action}
            onClick={() => setOpen(a)}
          >
            {a.label}
          </button>
        );
      })}
      <a class="button" href={`/tasks/${encodeURIComponent(task.name)}/recovery`}>Recovery…</a>
      {open && (
        <ConfirmDialog
          title={`${open.label} task ${task.name}?`}
          confirmLabel={open.label}
          danger={open.danger}
          onClose={() => setOpen(undefined)}
          onConfirm={async () => {
            const r = await post<{ to: string; message?: string }>(
              `/api/tasks/${encodeURIComponent(task.name)}/actions/${open.action}`,
              body(open),
            );
            onDone(`${open.label}: now ${r.to}${r.message ? ` — ${r.message}` : ""}`);
          }}
        >
          <p>{open.explain}</p>
          {(open.action === "failover" || open.action === "failover-test") && (
            <Field label="Remote center">
              <select name="action-site" value={site} onChange={(e) => setSite(e.currentTarget.value)}>
                {task.group.remotes.map((r) => <option key={r.site} value={r.site}>{r.site}</option>)}
              </select>
            </Field>
          )}
          {(open.action === "failover" || open.action === "failover-test") && (
            <Field label="Recovery point (optional: sequence or checkpoint; empty: now)">
              <input name="point" value={point} onInput={(e) => setPoint(e.currentTarget.value)} />
            </Field>
          )}
          {open.action === "failover-test" && (
            <Field label="Test duration (seconds)">
              <input
                type="number"
                min={60}
                max={86400}
                name="duration"
                value={duration}
                onInput={(e) => setDuration(e.currentTarget.value)}
              />
            </Field>
          )}
          {(open.action === "failover" || open.action === "pause") && (
            <Field label="Reason (optional)">
              <input
                name="reason"
                maxLength={200}
                value={reason}
                onInput={(e) => setReason(e.currentTarget.value)}
              />
            </Field>
          )}
          {open.action === "failback" && (
            <div class="fields">
              <Field label="Rebuild local copies from">
                <select
                  name="failback-source"
                  value={source}
                  onChange={(e) => setSource(e.currentTarget.value)}
                >
                  <option value="">the center that served</option>
                  {task.group.remotes.flatMap((r) => [
                    <option key={`rgp@${r.site}`} value={`rgp@${r.site}`}>rgp@{r.site}</option>,
                    <option key={`rsp@${r.site}`} value={`rsp@${r.site}`}>rsp@{r.site}</option>,
                  ])}
                </select>
              </Field>
              <Field label="Method">
                <select
                  name="failback-strategy"
                  value={strategy}
                  onChange={(e) => setStrategy(e.currentTarget.value)}
                >
                  <option value="fast">fast</option>
                  <option value="full">full</option>
                </select>
              </Field>
            </div>
          )}
        </ConfirmDialog>
      )}
    </div>
  );
}

function LivePanel({ task }: { task: TaskView }) {
  const s = status.value;
  const h = history.value;
  const remotes = task.group.remotes.map((r) => r.site);
  const lag = remotes.map((site) => ({
    label: `lag to ${site}`,
    format: bytes,
    points: h.filter((x) => x.sites[site]).map((x) => ({ t: x.t, v: x.sites[site].lagBytes })),
  }));
  const thr = remotes.map((site) => ({
    label: `throughput to ${site}`,
    format: rate,
    points: h.filter((x) => x.sites[site]).map((x) => ({ t: x.t, v: x.sites[site].bps })),
  }));
  const j = s?.journal;
  return (
    <section class="panel" aria-labelledby="h-live" data-testid="task-live">
      <div class="page-head">
        <h2 id="h-live">Replication, live</h2>
        <LiveDot />
      </div>
      {!s ? <Loading what="the live status" /> : (
        <>
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Remote center</th>
                  <th>Link</th>
                  <th class="num">Lag</th>
                  <th class="num">Lag age</th>
                  <th class="num">Records behind</th>
                  <th class="num">Throughput</th>
                  <th>Copies</th>
                </tr>
              </thead>
              <tbody>
                {remotes.map((site) => {
                  const x = s.sites?.find((y) => y.site === site);
                  return (
                    <tr key={site} data-site={site}>
                      <td>{site}</td>
                      <td>
                        {x
                          ? <Badge state={x.connected ? "connected" : "disconnected"} />
                          : <span class="muted small">not linked to this gateway</span>}
                      </td>
                      <td class="num" data-testid={`lag-${site}`}>{x ? bytes(x.lagBytes) : "—"}</td>
                      <td class="num">{x ? seconds(x.lagSeconds) : "—"}</td>
                      <td class="num">
                        {x ? (x.volumes ?? []).reduce((n, v) => n + (v.lagRecords ?? 0), 0) : "—"}
                      </td>
                      <td class="num" data-testid={`throughput-${site}`}>
                        {x ? rate(s.rates?.sites?.[site]?.bps) : "—"}
                      </td>
                      <td>
                        {(x?.volumes ?? []).map((v) => (
                          <span class="row" key={`${v.agent}/${v.name}`}>
                            <span class="mono small">{v.agent}/{v.name}</span> <Badge state={v.state} />
                          </span>
                        ))}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
          <p class="small muted">
            Journal: {bytes(j?.used ?? 0)} of {bytes(j?.capacity)} used.
          </p>
          <div class="grid">
            <LineChart id="lag-chart" title="Lag (bytes not yet acknowledged)" series={lag} />
            <LineChart id="throughput-chart" title="Throughput (acknowledged)" series={thr} />
          </div>
        </>
      )}
    </section>
  );
}

/** The task's running failover test (from the live status): where its copy is and until when. */
function TestPanel({ task }: { task: TaskView }) {
  const test = status.value?.tests?.find((x) => x.task === task.name);
  if (!test && task.state !== "testing") return null;
  return (
    <section class="panel" aria-labelledby="h-test" data-testid="failover-test">
      <h2 id="h-test">Failover test</h2>
      {!test ? <Loading what="the test's copy" /> : (
        <>
          <p class="small">
            A writable copy of the replica runs at site{" "}
            <strong>{test.site}</strong>. Start the service on it there to check it; the production service
            and the replication are not touched. End the test to discard the copy.
          </p>
          <dl class="kv">
            <dt>Remote center</dt>
            <dd data-testid="test-site">{test.site}</dd>
            <dt>Copy of</dt>
            <dd class="mono">{test.volume}, sequence {test.seq}</dd>
            <dt>NBD export</dt>
            <dd class="mono" data-testid="test-export">{test.export}</dd>
            <dt>Started</dt>
            <dd>{dateTime(test.started)}</dd>
            <dt>Discarded at the latest</dt>
            <dd>{dateTime(test.expires)}</dd>
          </dl>
        </>
      )}
    </section>
  );
}

function EventLog({ subjects }: { subjects: Set<string> }) {
  const [all, setAll] = useState(false);
  const list = events.value.filter((e) =>
    e.kind !== "audit" && (all || (e.subject && subjects.has(e.subject)))
  )
    .slice(-100).reverse();
  return (
    <section class="panel" aria-labelledby="h-events">
      <div class="page-head">
        <h2 id="h-events">Events</h2>
        <label class="check small">
          <input type="checkbox" checked={all} onChange={(e) => setAll(e.currentTarget.checked)} />{" "}
          all of the gateway
        </label>
      </div>
      {list.length === 0
        ? <Empty>No event for this task since the page opened.</Empty>
        : (
          <ul class="log" aria-live="polite">
            {list.map((e) => (
              <li key={e.id}>
                <time>{clock(e.time)}</time>
                <span class="kind">
                  <Badge state={e.kind} label={e.kind} />
                </span>
                <span class="msg">{e.message}</span>
              </li>
            ))}
          </ul>
        )}
    </section>
  );
}

function AuditLog({ subjects }: { subjects: Set<string> }) {
  const audit = useResource<AuditRow[]>("/api/audit?limit=500");
  const live = events.value.filter((e) => e.kind === "audit").map((e) => e.data as AuditRow);
  const rows = useMemo(() => {
    const byId = new Map<number, AuditRow>();
    for (const r of [...(audit.data ?? []), ...live]) if (subjects.has(r.subject)) byId.set(r.id, r);
    return [...byId.values()].sort((a, b) => b.id - a.id).slice(0, 100);
  }, [audit.data, live.length, subjects]);
  return (
    <section class="panel" aria-labelledby="h-audit">
      <h2 id="h-audit">Audit log</h2>
      {audit.loading && !audit.data && <Loading what="the audit log" />}
      <ErrorBox error={audit.error} retry={audit.reload} />
      {audit.data && rows.length === 0 && <Empty>Nothing recorded for this task yet.</Empty>}
      {rows.length > 0 && (
        <ul class="log">
          {rows.map((r) => (
            <li key={r.id}>
              <time title={dateTime(r.time)}>{clock(r.time)}</time>
              <span class="kind">
                {r.fromState || r.toState ? `${r.fromState ?? "·"} → ${r.toState ?? "·"}` : r.kind}
              </span>
              <span class="msg">
                <span class="mono small">{r.subject}</span> {r.cause}
              </span>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function Schedules({ task }: { task: TaskView }) {
  const list = useResource<Schedule[]>(`/api/tasks/${encodeURIComponent(task.name)}/schedules`);
  const [error, setError] = useState<unknown>(undefined);
  return (
    <section class="panel" aria-labelledby="h-sched">
      <h2 id="h-sched">Schedules</h2>
      {list.loading && !list.data && <Loading what="schedules" />}
      {list.error ? <ErrorBox error={list.error} /> : null}
      {list.data?.length === 0 && <Empty>Nothing scheduled.</Empty>}
      {list.data && list.data.length > 0 && (
        <ul>
          {list.data.map((s) => (
            <li key={s.id}>
              {s.action} at {dateTime(s.at)} <Badge state={s.status} /> {isAdmin() && (
                <button
                  type="button"
                  onClick={() =>
                    del(`/api/tasks/${encodeURIComponent(task.name)}/schedules/${encodeURIComponent(s.id)}`)
                      .then(list.reload, setError)}
                >
                  Cancel
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
      <ErrorBox error={error} />
    </section>
  );
}

export function TaskPage({ name }: { name: string }) {
  const path = `/api/tasks/${encodeURIComponent(name)}`;
  const task = useResource<TaskView>(path);
  const hosts = useResource<(Host & Stored)[]>("/api/hosts");
  const [note, setNote] = useState("");
  const [deleting, setDeleting] = useState(false);
  // the task's own events: reload when its state changes
  const lastTaskEvent = events.value.filter((e) => e.kind === "task" && e.subject === `task:${name}`).at(-1)
    ?.id;
  useEffect(() => {
    if (lastTaskEvent !== undefined) task.reload();
  }, [lastTaskEvent]);
  const subjects = useMemo(() => task.data ? relevantSubjects(task.data, hosts.data) : new Set<string>(), [
    task.data,
    hosts.data,
  ]);
  if (task.loading && !task.data) return <Loading what={`task ${name}`} />;
  if (task.error && !task.data) {
    return (
      <>
        <h1 tabIndex={-1}>Task {name}</h1>
        <ErrorBox error={task.error} retry={task.reload} />
      </>
    );
  }
  const t = task.data!;
  const g = t.group;
  const rows: [string, { host: string; device: string }][] = [
    ["LSP", g.local.lsp],
    ["LGP", g.local.lgp],
    ["Buffer", g.local.buffer],
    ...g.remotes.flatMap((
      r,
    ): [string, { host: string; device: string }][] => [[`RGP ${r.site}`, r.rgp], [`RSP ${r.site}`, r.rsp]]),
  ];
  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>
          Task {t.name} <Badge state={t.state} />
        </h1>
        <span class="small muted">since {dateTime(t.stateSince)}</span>
      </div>
      {t.description && <p>{t.description}</p>}
      <TaskProblems
        task={t}
        onChange={(m) => {
          setNote(m);
          task.reload();
        }}
      />
      <section class="panel" aria-label="actions">
        <ActionBar
          task={t}
          onDone={(m) => {
            setNote(m);
            task.reload();
          }}
        />
        {note && <div class="alert ok" role="status">{note}</div>}
        <p class="small muted">
          {(() => {
            // the operator's actions the state allows (the others are the gateway's own events)
            const mine = ACTIONS.filter((a) => t.allowed.includes(a.event)).map((a) => a.label.toLowerCase());
            if (t.allowed.includes("recover")) mine.push("recovery");
            return `Possible now: ${mine.length ? mine.join(", ") : "nothing (wait for the running step)"}`;
          })()}
        </p>
      </section>
      <TestPanel task={t} />
      <LivePanel task={t} />
      <DrillsPanel task={t} />
      <PointsPanel task={t} />
      <DetectorPanel agents={[lspAgent(t, hosts.data)]} />
      <div class="grid">
        <section class="panel" aria-labelledby="h-group">
          <h2 id="h-group">Group</h2>
          <p class="small">
            Local center <strong>{g.local.site}</strong>, remote {g.remotes.map((r) => r.site).join(", ")}
          </p>
          <div class="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>Role</th>
                  <th>Host</th>
                  <th>Device</th>
                </tr>
              </thead>
              <tbody>
                {rows.map(([role, r]) => (
                  <tr key={role}>
                    <td>{role}</td>
                    <td>{r.host}</td>
                    <td class="mono">{r.device}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </section>
        <section class="panel" aria-labelledby="h-strat">
          <h2 id="h-strat">Strategies</h2>
          <dl class="kv">
            <dt>Acknowledge at</dt>
            <dd>{t.mirror.ackPoint}</dd>
            <dt>Congestion</dt>
            <dd>{t.mirror.congestion}</dd>
            <dt>Buffer bound</dt>
            <dd>{t.mirror.bufferBound ? bytes(t.mirror.bufferBound) : "whole buffer"}</dd>
            <dt>Bandwidth</dt>
            <dd>{t.mirror.bandwidthLimit ? rate(t.mirror.bandwidthLimit) : "unlimited"}</dd>
            <dt>Compression</dt>
            <dd>{t.mirror.compression ? "on" : "off"}</dd>
            <dt>Recovery points</dt>
            <dd>
              {t.mirror.retentionHours ? `${t.mirror.retentionHours} h` : "as each remote center keeps them"}
              {t.mirror.retentionBytes ? `, at most ${bytes(t.mirror.retentionBytes)}` : ""}
            </dd>
            <dt>Recovery</dt>
            <dd>
              {t.recovery.strategy}
              {t.recovery.schedule ? ` at ${t.recovery.schedule.time} (${t.recovery.schedule.method})` : ""},
              {" "}
              {t.recovery.mode}
              {t.recovery.source ? ` from ${t.recovery.source}` : ""}
            </dd>
            {t.service && (
              <>
                <dt>Service</dt>
                <dd>{t.service}</dd>
              </>
            )}
            <dt>Targets</dt>
            <dd data-testid="task-targets">{targetsSummary(t.targets)}</dd>
          </dl>
        </section>
      </div>
      <div class="grid">
        <EventLog subjects={subjects} />
        <AuditLog subjects={subjects} />
      </div>
      <Schedules task={t} />
      {isAdmin() && (t.state === "configured" || t.state === "paused") && (
        <section class="panel">
          <button type="button" onClick={() => setDeleting(true)}>Delete task…</button>
          {deleting && (
            <ConfirmDialog
              title={`Delete task ${t.name}?`}
              confirmLabel="Delete"
              danger
              onClose={() => setDeleting(false)}
              onConfirm={async () => {
                await del(path);
                navigate("/tasks");
              }}
            >
              <p>The task's definition is removed; its hosts and volumes stay registered.</p>
            </ConfirmDialog>
          )}
        </section>
      )}
    </>
  );
}

export function TasksPage() {
  const tasks = useResource<TaskView[]>("/api/tasks");
  const lastTaskEvent = events.value.filter((e) => e.kind === "task").at(-1)?.id;
  useEffect(() => {
    if (lastTaskEvent !== undefined) tasks.reload();
  }, [lastTaskEvent]);
  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Tasks</h1>
        {isAdmin() && <a class="button primary" href="/tasks/new">New task</a>}
      </div>
      {tasks.loading && !tasks.data && <Loading what="tasks" />}
      <ErrorBox error={tasks.error} retry={tasks.reload} />
      {tasks.data?.length === 0 && (
        <Empty>
          No protection task yet.{isAdmin() ? " Create one with the wizard." : ""}
        </Empty>
      )}
      {tasks.data && tasks.data.length > 0 && (
        <div class="panel table-wrap">
          <table>
            <thead>
              <tr>
                <th>Task</th>
                <th>State</th>
                <th>Local</th>
                <th>Remote centers</th>
                <th>Since</th>
              </tr>
            </thead>
            <tbody>
              {tasks.data.map((t) => (
                <tr key={t.name}>
                  <td>
                    <a href={`/tasks/${encodeURIComponent(t.name)}`}>{t.name}</a>
                  </td>
                  <td>
                    <Badge state={t.state} /> <ProblemBadge task={t} />
                  </td>
                  <td>{t.group.local.site}</td>
                  <td>{t.group.remotes.map((r) => r.site).join(", ")}</td>
                  <td>{dateTime(t.stateSince)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </>
  );
}
