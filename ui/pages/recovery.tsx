// Recovery of a task: the recovery point, the policy's candidate list (every copy with its
// state, last sequence number, age, data to move, throughput, cost, validity and why), the
// chosen source and the explanation; then the recovery itself, confirmed.
import { useEffect, useState } from "preact/hooks";
import { isAdmin, post } from "../api.ts";
import { Badge, ConfirmDialog, Empty, ErrorBox, Field, Loading, useResource } from "../components.tsx";
import { bytes, dateTime, duration, rate, seconds } from "../format.ts";
import { navigate } from "../router.ts";
import type { CandidateList, TaskView } from "../types.ts";
import { events } from "../live.ts";
import { methodText, type RecoveryRow, shares, sourceName, summary } from "../recovery-progress.ts";

/** The gateway's recoveries, newest first, with each running one's live progress. */
function Recoveries() {
  const list = useResource<RecoveryRow[]>("/api/recoveries");
  const [live, setLive] = useState(new Map<number, RecoveryRow["progress"]>());
  const last = events.value[events.value.length - 1];
  useEffect(() => {
    const d = last?.kind === "recovery"
      ? last.data as { id: number; status: string; progress: RecoveryRow["progress"] }
      : undefined;
    if (!d) return;
    setLive((m) => new Map(m).set(d.id, d.progress));
    // a recovery started since the list was read (elsewhere: API, ctl, policy) needs its row
    if (d.status !== "running" || !list.data?.some((r) => r.id === d.id)) list.reload();
  }, [last?.id]);
  const rows = [...(list.data ?? [])].sort((a, b) => b.id - a.id).slice(0, 10);
  return (
    <section class="panel" aria-labelledby="h-recoveries" data-testid="recoveries">
      <h2 id="h-recoveries">Recoveries</h2>
      {list.loading && !list.data && <Loading what="the recoveries" />}
      <ErrorBox error={list.error} retry={list.reload} />
      {list.data && rows.length === 0 && <Empty>No recovery yet.</Empty>}
      {rows.map((r) => {
        const p = live.get(r.id) ?? r.progress;
        return (
          <div key={r.id} class="stack" data-testid={`recovery-${r.id}`}>
            <div>
              <strong>#{r.id}</strong> {r.volume} → {r.target} from{" "}
              <span class="mono">{[r.source, ...r.also].map(sourceName).join(" + ")}</span>{" "}
              <Badge state={r.status} />
            </div>
            <div class="small">
              Method: {methodText(p?.method ?? r.method)}
              {r.methodReason ? ` — ${r.methodReason}` : ""}
            </div>
            {p && r.status === "running" && (
              <>
                <progress
                  max={Math.max(1, p.bytesToMove)}
                  value={p.bytesMoved}
                  aria-label={`recovery ${r.id}`}
                />
                <div class="small">{summary(p)}</div>
                <ul class="small">
                  {shares(p).map((s) => <li key={s}>{s}</li>)}
                </ul>
              </>
            )}
            {r.status !== "running" && (
              <div class="small muted">
                moved {bytes(r.bytesMoved)}, started {dateTime(r.createdAt)}
                {r.error ? `; ${r.error}` : ""}
              </div>
            )}
          </div>
        );
      })}
    </section>
  );
}

function pointQuery(kind: string, seq: string, time: string): string | undefined {
  if (kind === "latest") return "latest";
  if (kind === "seq") return /^\d+$/.test(seq) ? `seq:${seq}` : undefined;
  const t = Date.parse(time);
  return Number.isFinite(t) ? `time:${t}` : undefined;
}

export function RecoveryPage({ name }: { name: string }) {
  const task = useResource<TaskView>(`/api/tasks/${encodeURIComponent(name)}`);
  const [kind, setKind] = useState("latest");
  const [seq, setSeq] = useState("");
  const [time, setTime] = useState("");
  const [strategy, setStrategy] = useState("fast");
  const [asked, setAsked] = useState<string | undefined>("point=latest&strategy=fast");
  const list = useResource<CandidateList>(
    asked ? `/api/tasks/${encodeURIComponent(name)}/recovery-candidates?${asked}` : undefined,
  );
  const [mode, setMode] = useState<"policy" | "manual">("policy");
  const [source, setSource] = useState("");
  const [target, setTarget] = useState("lsp");
  const [force, setForce] = useState(false);
  const [method, setMethod] = useState("auto");
  const [confirm, setConfirm] = useState(false);
  const [done, setDone] = useState("");
  const point = pointQuery(kind, seq, time);
  const t = task.data;
  const ask = (e: Event) => {
    e.preventDefault();
    if (point) setAsked(`point=${encodeURIComponent(point)}&strategy=${strategy}`);
  };
  const chosen = list.data?.chosen ?? null;
  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>Recovery of {name}</h1>
        <a href={`/tasks/${encodeURIComponent(name)}`}>Back to the task</a>
      </div>
      {task.loading && !t && <Loading what={`task ${name}`} />}
      <ErrorBox error={task.error} retry={task.reload} />
      {t && (
        <p>
          State <Badge state={t.state} />; default strategy {t.recovery.strategy}, source chosen by{" "}
          {t.recovery.mode}
          {t.recovery.source ? ` (default ${t.recovery.source})` : ""}.
        </p>
      )}
      <form class="panel stack" onSubmit={ask} aria-labelledby="h-point">
        <h2 id="h-point">Recovery point</h2>
        <div class="fields">
          <Field label="Recover to">
            <select name="point-kind" value={kind} onChange={(e) => setKind(e.currentTarget.value)}>
              <option value="latest">the newest data</option>
              <option value="seq">a sequence number</option>
              <option value="time">a time</option>
            </select>
          </Field>
          {kind === "seq" && (
            <Field label="Sequence number" error={seq && !/^\d+$/.test(seq) ? "a whole number" : undefined}>
              <input
                name="point-seq"
                inputMode="numeric"
                value={seq}
                onInput={(e) =>
                  setSeq(e.currentTarget.value)}
              />
            </Field>
          )}
          {kind === "time" && (
            <Field label="Time" error={time && !Number.isFinite(Date.parse(time)) ? "not a time" : undefined}>
              <input
                type="datetime-local"
                step="1"
                name="point-time"
                value={time}
                onInput={(e) =>
                  setTime(e.currentTarget.value)}
              />
            </Field>
          )}
          <Field label="Method">
            <select
              name="point-strategy"
              value={strategy}
              onChange={(e) => setStrategy(e.currentTarget.value)}
            >
              <option value="fast">fast (only differing chunks)</option>
              <option value="full">full (everything)</option>
            </select>
          </Field>
        </div>
        <div>
          <button type="submit" disabled={!point}>Assess the candidates</button>
        </div>
      </form>

      <section class="panel" aria-labelledby="h-cands" data-testid="candidates">
        <h2 id="h-cands">Candidates</h2>
        {list.loading && <Loading what="the candidates" />}
        <ErrorBox error={list.error} retry={list.reload} />
        {list.data && list.data.candidates.length === 0 && (
          <Empty>No copy of this task's volume can be reached.</Empty>
        )}
        {list.data && list.data.candidates.length > 0 && (
          <>
            <div class="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th>Source</th>
                    <th>Center</th>
                    <th>State</th>
                    <th class="num">Last seq</th>
                    <th>Newest data</th>
                    <th class="num">Age vs point</th>
                    <th class="num">To move</th>
                    <th class="num">Throughput</th>
                    <th class="num">Cost</th>
                    <th>Valid</th>
                  </tr>
                </thead>
                <tbody>
                  {list.data.candidates.map((c) => (
                    <tr
                      key={c.source}
                      class={c.source === chosen ? "chosen" : ""}
                      aria-current={c.source === chosen ? "true" : undefined}
                    >
                      <td class="mono">
                        {c.source}
                        {c.source === chosen && (
                          <>
                            <Badge state="valid" label="chosen" />
                          </>
                        )}
                      </td>
                      <td>{c.site ?? "local"}</td>
                      <td>
                        <Badge state={c.state} />
                      </td>
                      <td class="num">{c.lastSeq}</td>
                      <td>{dateTime(c.lastTime)}</td>
                      <td class="num">
                        {c.ageMs === null ? "—" : `${c.ageMs >= 0 ? "+" : "−"}${duration(Math.abs(c.ageMs))}`}
                      </td>
                      <td class="num">{bytes(c.bytesToMove)}</td>
                      <td class="num">{rate(c.throughputBps)}</td>
                      <td class="num">{seconds(c.costSeconds)}</td>
                      <td>
                        <Badge state={c.valid ? "valid" : "invalid"} label={c.valid ? "yes" : "no"} />
                        <div class="small muted">{c.reason}</div>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            <div class={`alert ${chosen ? "ok" : "error"}`} data-testid="explanation">
              <strong>{chosen ? `The policy chooses ${chosen}. ` : "No valid source. "}</strong>
              {list.data.explanation}
            </div>
          </>
        )}
      </section>

      <Recoveries />

      {isAdmin() && t && (
        <form
          class="panel stack"
          aria-labelledby="h-recover"
          onSubmit={(e) => {
            e.preventDefault();
            setConfirm(true);
          }}
        >
          <h2 id="h-recover">Recover</h2>
          <div class="fields">
            <Field label="Source chosen by">
              <select
                name="recover-mode"
                value={mode}
                onChange={(e) => setMode(e.currentTarget.value as "policy" | "manual")}
              >
                <option value="policy">the policy{chosen ? ` (now ${chosen})` : ""}</option>
                <option value="manual">me</option>
              </select>
            </Field>
            {mode === "manual" && (
              <Field label="Source">
                <select
                  name="recover-source"
                  required
                  value={source}
                  onChange={(e) => setSource(e.currentTarget.value)}
                >
                  <option value="">— choose —</option>
                  {(list.data?.candidates ?? []).map((c) => (
                    <option key={c.source} value={c.source}>{c.source}{c.valid ? "" : " (not valid)"}</option>
                  ))}
                </select>
              </Field>
            )}
            {strategy === "fast" && (
              <Field label="Finding what differs">
                <select
                  name="recover-method"
                  value={method}
                  onChange={(e) => setMethod(e.currentTarget.value)}
                >
                  {["auto", "tracked", "scan"].map((m) => <option key={m} value={m}>{methodText(m)}</option>)}
                </select>
              </Field>
            )}
            <Field label="Copy to rebuild">
              <select name="recover-target" value={target} onChange={(e) => setTarget(e.currentTarget.value)}>
                <option value="lsp">the application server's (LSP)</option>
                <option value="lgp">the local gateway's mirror (LGP)</option>
              </select>
            </Field>
          </div>
          <label class="check">
            <input
              type="checkbox"
              name="force"
              checked={force}
              onChange={(e) => setForce(e.currentTarget.checked)}
            />
            Use a source the policy finds not valid
          </label>
          {done && <div class="alert ok" role="status">{done}</div>}
          <div>
            <button
              type="submit"
              class="danger"
              disabled={!t.allowed.includes("recover") || (mode === "manual" && !source)}
            >
              Recover…
            </button>
            {!t.allowed.includes("recover") && <span class="small muted">not possible while {t.state}</span>}
          </div>
          {confirm && (
            <ConfirmDialog
              title={`Recover task ${name}?`}
              confirmLabel="Recover"
              danger
              onClose={() => setConfirm(false)}
              onConfirm={async () => {
                const r = await post<{ to: string; message?: string }>(
                  `/api/tasks/${encodeURIComponent(name)}/actions/recover`,
                  {
                    mode,
                    strategy,
                    target,
                    force,
                    ...(strategy === "fast" ? { method } : {}),
                    ...(mode === "manual" ? { source } : {}),
                    ...(mode === "policy" && point && point !== "latest"
                      ? {
                        point: point.startsWith("seq:")
                          ? { seq: Number(point.slice(4)) }
                          : { time: Number(point.slice(5)) },
                      }
                      : {}),
                  },
                );
                setDone(`Recovery started: the task is ${r.to}.`);
                task.reload();
                setTimeout(() => navigate(`/tasks/${encodeURIComponent(name)}`), 800);
              }}
            >
              <p>
                The {target === "lsp" ? "application server's partition" : "gateway's mirror"}{" "}
                is rewritten from{" "}
                {mode === "manual" ? source : `the policy's choice${chosen ? ` (${chosen})` : ""}`} using the
                {" "}
                {strategy} method. Writes to the volume are held while it runs.
              </p>
            </ConfirmDialog>
          )}
        </form>
      )}
    </>
  );
}
