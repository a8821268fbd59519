// A task's recovery points (issue 15): per remote center its retention window and size, a
// timeline of the points it holds (checkpoints named), adding a checkpoint, and the search for
// the last good point.
import { useState } from "preact/hooks";
import { isAdmin, post } from "./api.ts";
import { Empty, ErrorBox, Field, Loading, useResource } from "./components.tsx";
import { bytes, dateTime } from "./format.ts";
import type { TaskView } from "./types.ts";

interface SitePoint {
  seq: number;
  time: number;
  kind: string;
  names?: string[];
}

interface SitePoints {
  site: string;
  ok: boolean;
  error?: string;
  points?: SitePoint[];
  windowMs?: number;
  retention?: { bytes: number; points: number; forcedExpiries: number };
}

interface PointsView {
  volume: string;
  checkpoints: { name: string; seq: number; createdAt: number; createdBy: string }[];
  sites: SitePoints[];
}

interface SearchView {
  lastGood: SitePoint;
  firstBad?: SitePoint;
  searched: number;
  probes: { seq: number; passed: boolean; timedOut: boolean; ms: number }[];
}

function hours(ms: number): string {
  return ms >= 3_600_000
    ? `${(ms / 3_600_000).toFixed(ms % 3_600_000 ? 1 : 0)} h`
    : `${Math.round(ms / 60_000)} min`;
}

/** The window as a bar: each point a tick by its time, checkpoints tall and labelled. */
function Timeline({ s }: { s: SitePoints }) {
  const pts = s.points ?? [];
  const now = Date.now();
  const from = now - (s.windowMs ?? 0);
  const x = (t: number) => Math.max(0, Math.min(100, ((t - from) / Math.max(1, now - from)) * 100));
  return (
    <svg
      class="timeline"
      viewBox="0 0 100 14"
      preserveAspectRatio="none"
      role="img"
      aria-label={`${pts.length} points at ${s.site} over the last ${hours(s.windowMs ?? 0)}`}
      style="width:100%;height:2.5em"
    >
      <rect x="0" y="6" width="100" height="2" fill="currentColor" opacity="0.2" />
      {pts.map((p) => (
        <rect
          key={`${p.seq}-${p.kind}`}
          x={x(p.time)}
          y={p.names ? 1 : 4}
          width="0.3"
          height={p.names ? 12 : 6}
          fill="currentColor"
          opacity={p.names ? 1 : 0.6}
        >
          <title>
            {`sequence ${p.seq}, ${dateTime(p.time)}${p.names ? ` — ${p.names.join(", ")}` : ""}`}
          </title>
        </rect>
      ))}
    </svg>
  );
}

export function PointsPanel({ task }: { task: TaskView }) {
  const path = `/api/tasks/${encodeURIComponent(task.name)}/points?limit=2000`;
  const list = useResource<PointsView>(path);
  const [name, setName] = useState("");
  const [check, setCheck] = useState("");
  const [site, setSite] = useState(task.group.remotes[0]?.site ?? "");
  const [good, setGood] = useState("");
  const [searching, setSearching] = useState(false);
  const [found, setFound] = useState<SearchView | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  const admin = isAdmin();
  const addCheckpoint = async (e: Event) => {
    e.preventDefault();
    setError(undefined);
    try {
      await post(`/api/tasks/${encodeURIComponent(task.name)}/checkpoints`, { name });
      setName("");
      list.reload();
    } catch (err) {
      setError(err);
    }
  };
  const search = async (e: Event) => {
    e.preventDefault();
    setError(undefined);
    setFound(undefined);
    setSearching(true);
    try {
      const argv = check.trim().split(/\s+/);
      const g = good.trim();
      setFound(
        await post<SearchView>(`/api/tasks/${encodeURIComponent(task.name)}/point-search`, {
          site,
          check: argv,
          ...(g ? { good: /^\d+$/.test(g) ? Number(g) : g } : {}),
        }),
      );
    } catch (err) {
      setError(err);
    } finally {
      setSearching(false);
    }
  };
  return (
    <section class="panel" aria-labelledby="h-points" data-testid="points">
      <h2 id="h-points">Recovery points</h2>
      <p class="small">
        Each remote center started with <code>--retention</code>{" "}
        keeps every point of its window: a failover test or a failover can use any of them (a sequence number
        or a checkpoint name).
      </p>
      {list.loading && !list.data && <Loading what="the recovery points" />}
      <ErrorBox error={list.error} retry={list.reload} />
      {list.data?.sites.map((s) => (
        <div key={s.site} data-testid={`points-${s.site}`}>
          <h3>{s.site}</h3>
          {!s.ok ? <p class="small muted">{s.error}</p> : (
            <>
              <p class="small">
                Window {hours(s.windowMs ?? 0)}, {s.retention ? bytes(s.retention.bytes) : "?"} held,{" "}
                {s.points?.length ?? 0} points
                {s.points?.length
                  ? ` from ${dateTime(s.points[0].time)} (sequence ${s.points[0].seq}) to ${
                    dateTime(s.points[s.points.length - 1].time)
                  } (sequence ${s.points[s.points.length - 1].seq})`
                  : ""}
                {s.retention?.forcedExpiries ? ` — full: ${s.retention.forcedExpiries} early expiries` : ""}
              </p>
              <Timeline s={s} />
            </>
          )}
        </div>
      ))}
      {list.data && list.data.checkpoints.length === 0 && <Empty>No checkpoint named yet.</Empty>}
      {list.data && list.data.checkpoints.length > 0 && (
        <ul class="small">
          {list.data.checkpoints.map((c) => (
            <li key={c.name}>
              <strong>{c.name}</strong>: sequence {c.seq}, {dateTime(c.createdAt)} by {c.createdBy}
            </li>
          ))}
        </ul>
      )}
      {admin && (
        <form class="row" onSubmit={addCheckpoint}>
          <Field label="Checkpoint name">
            <input
              name="checkpoint"
              pattern="[A-Za-z0-9._\-]{1,64}"
              value={name}
              required
              onInput={(e) => setName(e.currentTarget.value)}
            />
          </Field>
          <button type="submit">Add checkpoint</button>
        </form>
      )}
      {admin && (
        <form onSubmit={search}>
          <h3>Find the last good point</h3>
          <p class="small">
            Bisects the points of a remote center: each probe brings up a test copy and runs the check on the
            gateway with the copy's NBD URI (<code>{"{uri}"}</code>,{" "}
            <code>$CONTINUUM_NBD_URI</code>); exit code 0 is good.
          </p>
          <div class="row">
            <Field label="Remote center">
              <select name="search-site" value={site} onChange={(e) => setSite(e.currentTarget.value)}>
                {task.group.remotes.map((r) => <option key={r.site} value={r.site}>{r.site}</option>)}
              </select>
            </Field>
            <Field label="Check command">
              <input
                name="check"
                required
                value={check}
                placeholder="/usr/local/bin/check-db {uri}"
                onInput={(e) => setCheck(e.currentTarget.value)}
              />
            </Field>
            <Field label="Known good (optional)">
              <input name="good" value={good} onInput={(e) => setGood(e.currentTarget.value)} />
            </Field>
            <button type="submit" disabled={searching}>{searching ? "Searching…" : "Search"}</button>
          </div>
        </form>
      )}
      {found && (
        <div class="alert ok" role="status" data-testid="search-result">
          Last good point: sequence {found.lastGood.seq} ({dateTime(found.lastGood.time)})
          {found.firstBad ? `; the check fails from sequence ${found.firstBad.seq}` : " (the newest)"};{" "}
          {found.probes.length} probes over {found.searched} points.
        </div>
      )}
      <ErrorBox error={error} />
    </section>
  );
}
