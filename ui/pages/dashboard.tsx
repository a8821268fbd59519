// The dashboard: the local center (gateway, journal), its agents with their detector states,
// the links to the remote centers (lag, throughput, copies), volumes, services and tasks —
// all live from the event stream, without reloading.
import { useEffect } from "preact/hooks";
import { Badge, Empty, ErrorBox, Loading, Meter, useResource } from "../components.tsx";
import { AttentionPanel, ProblemBadge } from "../problems.tsx";
import { connection, events, status } from "../live.ts";
import { bytes, clock, duration, rate, seconds } from "../format.ts";
import type { Host, Site, Stored, TaskView } from "../types.ts";
import { DetectorPanel } from "../qos.tsx";

export function LiveDot() {
  const c = connection.value;
  const label = c === "live"
    ? "live"
    : c === "retrying"
    ? "reconnecting…"
    : c === "connecting"
    ? "connecting…"
    : "offline";
  return (
    <span class="live" role="status" aria-live="polite" data-connection={c}>
      <span
        class={`dot ${c === "live" ? "on" : c === "off" || c === "retrying" ? "off" : ""}`}
        aria-hidden="true"
      />
      {label}
    </span>
  );
}

/** The agents of this gateway: connected, heard from, or registered on a local center's host. */
function agentsOf(hosts: (Host & Stored)[] | undefined, sites: (Site & Stored)[] | undefined) {
  const s = status.value;
  const local = new Set((sites ?? []).filter((x) => x.role === "local").map((x) => x.name));
  const byAgent = new Map<string, string>();
  for (const h of hosts ?? []) {
    // a remote center's application hosts are standby servers: their gateway is the remote one
    if (h.role === "application" && local.has(h.site)) byAgent.set(h.agent ?? h.name, h.name);
  }
  const names = new Set<string>([
    ...(s?.agents ?? []),
    ...(s?.liveness ?? []).map((l) => l.agent),
    ...byAgent.keys(),
  ]);
  return [...names].sort().map((agent) => ({
    agent,
    host: byAgent.get(agent),
    connected: (s?.agents ?? []).includes(agent),
    live: s?.liveness?.find((l) => l.agent === agent),
  }));
}

export function DashboardPage() {
  const s = status.value;
  const hosts = useResource<(Host & Stored)[]>("/api/hosts");
  const sites = useResource<(Site & Stored)[]>("/api/sites");
  const tasks = useResource<TaskView[]>("/api/tasks");
  // tasks change state and fail: their list follows the task events
  const lastTaskEvent = events.value.filter((e) => e.kind === "task").at(-1)?.id;
  useEffect(() => {
    if (lastTaskEvent !== undefined) tasks.reload();
  }, [lastTaskEvent]);
  const j = s?.journal;
  const recent = events.value.filter((e) => e.kind !== "audit").slice(-8).reverse();
  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Dashboard</h1>
        <LiveDot />
      </div>
      {!s ? <Loading what="the live status" /> : (
        <div class="grid">
          <section class="panel" aria-labelledby="h-local" data-testid="local-gateway">
            <h2 id="h-local">Local center {s.site && <span class="muted">· {s.site}</span>}</h2>
            <dl class="kv">
              <dt>Gateway</dt>
              <dd>
                <Badge state="up" label="running" />{" "}
                <span class="muted small">up {duration(s.uptimeMs)}</span>
              </dd>
              <dt>Journal</dt>
              <dd>
                <Meter value={j?.capacity ? (j.used ?? 0) / j.capacity : 0} label="journal use" />
                <span class="small" data-testid="journal-use">
                  {bytes(j?.used ?? 0)} of {bytes(j?.capacity)} used
                  {j?.capacity ? ` (${(((j.used ?? 0) / j.capacity) * 100).toFixed(1)} %)` : ""}
                </span>
              </dd>
              <dt>Agents</dt>
              <dd>{(s.agents ?? []).length} connected</dd>
              <dt>Remote centers</dt>
              <dd>
                {(s.sites ?? []).filter((x) => x.connected).length} of {(s.sites ?? []).length} linked
              </dd>
            </dl>
          </section>

          <section class="panel" aria-labelledby="h-tasks">
            <h2 id="h-tasks">Tasks</h2>
            {tasks.loading && !tasks.data
              ? <Loading what="tasks" />
              : <ErrorBox error={tasks.error} retry={tasks.reload} />}
            {tasks.data && tasks.data.length === 0 && (
              <Empty>
                No protection task yet. <a href="/tasks/new">Create one with the wizard</a>.
              </Empty>
            )}
            {tasks.data && tasks.data.length > 0 && (
              <ul class="nav">
                {tasks.data.map((t) => (
                  <li key={t.name}>
                    <a href={`/tasks/${encodeURIComponent(t.name)}`}>
                      {t.name} <Badge state={t.state} /> <ProblemBadge task={t} />
                    </a>
                  </li>
                ))}
              </ul>
            )}
            <p class="small muted">
              {sites.data
                ? `${sites.data.length} site(s), ${hosts.data?.length ?? 0} host(s) registered. `
                : ""}
              <a href="/inventory">Inventory</a>
            </p>
          </section>
        </div>
      )}

      {s && (
        <>
          {tasks.data && <AttentionPanel tasks={tasks.data} onChange={tasks.reload} />}
          <section class="panel" aria-labelledby="h-agents" data-testid="agents">
            <h2 id="h-agents">Application servers (agents)</h2>
            {agentsOf(hosts.data, sites.data).length === 0
              ? <Empty>No agent has connected yet and no application host is registered.</Empty>
              : (
                <div class="table-wrap">
                  <table>
                    <thead>
                      <tr>
                        <th>Agent</th>
                        <th>Host</th>
                        <th>Link</th>
                        <th>Detector</th>
                        <th>Service check</th>
                        <th class="num">Last heartbeat</th>
                      </tr>
                    </thead>
                    <tbody>
                      {agentsOf(hosts.data, sites.data).map((a) => (
                        <tr key={a.agent} data-agent={a.agent}>
                          <td class="mono">{a.agent}</td>
                          <td>{a.host ?? <span class="muted">not registered</span>}</td>
                          <td>
                            <Badge state={a.connected ? "connected" : "disconnected"} />
                          </td>
                          <td>
                            {a.live
                              ? <Badge state={a.live.state} />
                              : <span class="muted small" title="no heartbeat received">no heartbeats</span>}
                          </td>
                          <td>
                            {a.live
                              ? (a.live.serviceHealthy === false
                                ? <Badge state="failed" label={a.live.serviceDetail ?? "failing"} />
                                : <span class="small">{a.live.serviceDetail ?? "ok"}</span>)
                              : "—"}
                          </td>
                          <td class="num">{a.live ? duration(a.live.sinceLastHeartbeatMs) : "—"}</td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                </div>
              )}
          </section>

          <DetectorPanel />

          <section class="panel" aria-labelledby="h-links" data-testid="links">
            <h2 id="h-links">Links to remote centers</h2>
            {(s.sites ?? []).length === 0
              ? <Empty>This gateway replicates to no remote center (no --remote given).</Empty>
              : (
                <div class="table-wrap">
                  <table>
                    <thead>
                      <tr>
                        <th>Center</th>
                        <th>Link</th>
                        <th class="num">Lag</th>
                        <th class="num">Lag age</th>
                        <th class="num">Records behind</th>
                        <th class="num">Throughput</th>
                        <th class="num">RTT</th>
                        <th>Copies (RGP/RSP)</th>
                      </tr>
                    </thead>
                    <tbody>
                      {(s.sites ?? []).map((x) => (
                        <tr key={x.site} data-site={x.site}>
                          <td>{x.site}</td>
                          <td>
                            <Badge state={x.connected ? "connected" : "disconnected"} />
                            {x.lastError && !x.connected && <div class="small muted">{x.lastError}</div>}
                          </td>
                          <td class="num">{bytes(x.lagBytes)}</td>
                          <td class="num">{seconds(x.lagSeconds)}</td>
                          <td class="num">
                            {(x.volumes ?? []).reduce((n, v) => n + (v.lagRecords ?? 0), 0)}
                          </td>
                          <td class="num">{rate(s.rates?.sites?.[x.site]?.bps)}</td>
                          <td class="num">
                            {x.rttMs === null || x.rttMs === undefined ? "—" : `${x.rttMs.toFixed(1)} ms`}
                          </td>
                          <td>
                            {(x.volumes ?? []).length === 0
                              ? <span class="muted">none yet</span>
                              : (x.volumes ?? []).map((v) => (
                                <span key={`${v.agent}/${v.name}`} class="row">
                                  <span class="mono small">{v.agent}/{v.name}</span> <Badge state={v.state} />
                                </span>
                              ))}
                          </td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                </div>
              )}
          </section>

          <div class="grid">
            <section class="panel" aria-labelledby="h-volumes">
              <h2 id="h-volumes">Protected volumes</h2>
              {(s.volumes ?? []).length === 0
                ? <Empty>No volume has been announced by an agent yet.</Empty>
                : (
                  <div class="table-wrap">
                    <table>
                      <thead>
                        <tr>
                          <th>Volume</th>
                          <th class="num">Size</th>
                          <th class="num">Last seq</th>
                          <th class="num">Mirror (LGP)</th>
                        </tr>
                      </thead>
                      <tbody>
                        {(s.volumes ?? []).map((v) => (
                          <tr key={`${v.agent}/${v.name}`}>
                            <td class="mono">{v.agent}/{v.name}</td>
                            <td class="num">{bytes(v.size)}</td>
                            <td class="num">{v.lastSeq ?? 0}</td>
                            <td class="num">{v.mirrorSeq ?? 0}</td>
                          </tr>
                        ))}
                      </tbody>
                    </table>
                  </div>
                )}
            </section>
            <section class="panel" aria-labelledby="h-services">
              <h2 id="h-services">Protected services</h2>
              {(s.services ?? []).length === 0
                ? <Empty>No service is switched by this gateway (--service).</Empty>
                : (
                  <div class="table-wrap">
                    <table>
                      <thead>
                        <tr>
                          <th>Service</th>
                          <th>State</th>
                          <th>Fails over to</th>
                        </tr>
                      </thead>
                      <tbody>
                        {(s.services ?? []).map((v) => (
                          <tr key={v.name}>
                            <td>{v.name}</td>
                            <td>
                              <Badge state={v.state} />
                            </td>
                            <td>{v.site}</td>
                          </tr>
                        ))}
                      </tbody>
                    </table>
                  </div>
                )}
            </section>
          </div>

          <section class="panel" aria-labelledby="h-events">
            <h2 id="h-events">Latest events</h2>
            {recent.length === 0 ? <Empty>No event since this page opened.</Empty> : (
              <ul class="log">
                {recent.map((e) => (
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
        </>
      )}
    </>
  );
}
