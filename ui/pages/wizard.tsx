// The task wizard: centers → hosts and devices → the group (a partition for each role, sizes
// checked) → mirror and recovery strategies → review and create. Sites, hosts and volumes can
// be added on the way; the strategies step also takes the QoS targets (ui/qos.tsx). The server
// checks everything again and its messages name the field.
import { Fragment } from "preact";
import { useState } from "preact/hooks";
import { isAdmin, post } from "../api.ts";
import { Empty, ErrorBox, Field, issueAt, Loading, useResource } from "../components.tsx";
import { bytes, parseSize } from "../format.ts";
import { navigate } from "../router.ts";
import type { Host, PartitionRef, Site, Stored, TaskView, Volume } from "../types.ts";
import { HostForm, SiteForm, VolumeForm } from "./inventory.tsx";
import { NO_TARGETS, targetsBody, TargetsFields, targetsSummary } from "../qos.tsx";

const STEPS = ["Centers", "Hosts and devices", "Group", "Strategies", "Review"];

interface Slot {
  key: string;
  label: string;
  site: string;
  role: Host["role"];
  data: boolean;
}

function slotsFor(local: string, remotes: string[]): Slot[] {
  return [
    {
      key: "lsp",
      label: "LSP — application server's partition",
      site: local,
      role: "application",
      data: true,
    },
    { key: "lgp", label: "LGP — local gateway's mirror", site: local, role: "gateway", data: true },
    { key: "buffer", label: "Buffer — local gateway's journal", site: local, role: "gateway", data: false },
    ...remotes.flatMap((r): Slot[] => [
      {
        key: `rgp@${r}`,
        label: `RGP at ${r} — remote gateway's replica`,
        site: r,
        role: "gateway",
        data: true,
      },
      {
        key: `rsp@${r}`,
        label: `RSP at ${r} — standby server's partition`,
        site: r,
        role: "application",
        data: true,
      },
    ]),
  ];
}

const refKey = (r: PartitionRef) => `${r.host}\u0000${r.device}`;

export function WizardPage() {
  const sites = useResource<(Site & Stored)[]>("/api/sites");
  const hosts = useResource<(Host & Stored)[]>("/api/hosts");
  const volumes = useResource<(Volume & Stored)[]>("/api/volumes");
  const [step, setStep] = useState(0);
  const [local, setLocal] = useState("");
  const [remotes, setRemotes] = useState<string[]>([]);
  const [picks, setPicks] = useState<Record<string, string>>({});
  const [mirror, setMirror] = useState({
    ackPoint: "lgp",
    congestion: "block",
    bufferBound: "",
    bandwidth: "",
    compression: false,
  });
  const [recovery, setRecovery] = useState({
    strategy: "fast",
    mode: "policy",
    source: "",
    time: "02:00",
    method: "fast",
  });
  const [targets, setTargets] = useState(NO_TARGETS);
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [service, setService] = useState("");
  const [error, setError] = useState<unknown>(undefined);
  const [busy, setBusy] = useState(false);

  if (!isAdmin()) {
    return (
      <>
        <h1 tabIndex={-1}>New task</h1>
        <div class="alert info">Creating tasks needs the admin role; you are logged in as a viewer.</div>
      </>
    );
  }
  if (
    (sites.loading && !sites.data) || (hosts.loading && !hosts.data) || (volumes.loading && !volumes.data)
  ) {
    return <Loading what="the inventory" />;
  }
  const loadError = sites.error ?? hosts.error ?? volumes.error;
  if (loadError) {
    return (
      <ErrorBox
        error={loadError}
        retry={() => {
          sites.reload();
          hosts.reload();
          volumes.reload();
        }}
      />
    );
  }
  const allSites = sites.data ?? [], allHosts = hosts.data ?? [], allVolumes = volumes.data ?? [];
  const chosenSites = [local, ...remotes].filter(Boolean);
  const slots = slotsFor(local, remotes);
  const volumeByKey = new Map(allVolumes.map((v) => [refKey(v), v]));
  const hostByName = new Map(allHosts.map((h) => [h.name, h]));
  const candidates = (slot: Slot) =>
    allVolumes.filter((v) => {
      const h = hostByName.get(v.host);
      return h && h.site === slot.site && h.role === slot.role;
    });
  const picked = (slot: Slot) => volumeByKey.get(picks[slot.key] ?? "");
  const dataSizes = slots.filter((s) => s.data).map((s) => picked(s)?.size).filter((n): n is number =>
    n !== undefined
  );
  const sizeMismatch = new Set(dataSizes).size > 1;
  const lspSize = picked(slots[0])?.size;
  const dupes = (() => {
    const seen = new Map<string, number>();
    for (const s of slots) if (picks[s.key]) seen.set(picks[s.key], (seen.get(picks[s.key]) ?? 0) + 1);
    return new Set([...seen].filter(([, n]) => n > 1).map(([k]) => k));
  })();
  const groupComplete = slots.every((s) => picked(s)) && !sizeMismatch && dupes.size === 0;
  const reloadAll = () => {
    sites.reload();
    hosts.reload();
    volumes.reload();
  };
  const ref = (slot: Slot): PartitionRef => {
    const v = picked(slot)!;
    return { host: v.host, device: v.device };
  };
  const bufferBound = parseSize(mirror.bufferBound);
  const bandwidth = parseSize(mirror.bandwidth || "0");
  const chosenTargets = targetsBody(targets);
  const strategiesOk = (mirror.bufferBound === "" || Number.isFinite(bufferBound)) &&
    Number.isFinite(bandwidth) &&
    (recovery.mode === "policy" || recovery.source !== "") &&
    !chosenTargets.error;
  const body = () => ({
    name,
    description,
    ...(service ? { service } : {}),
    ...(chosenTargets.targets ? { targets: chosenTargets.targets } : {}),
    group: {
      local: { site: local, lsp: ref(slots[0]), lgp: ref(slots[1]), buffer: ref(slots[2]) },
      remotes: remotes.map((r) => ({
        site: r,
        rgp: ref(slots.find((s) => s.key === `rgp@${r}`)!),
        rsp: ref(slots.find((s) => s.key === `rsp@${r}`)!),
      })),
    },
    mirror: {
      ackPoint: mirror.ackPoint,
      congestion: mirror.congestion,
      ...(mirror.bufferBound ? { bufferBound } : {}),
      bandwidthLimit: bandwidth,
      compression: mirror.compression,
    },
    recovery: {
      strategy: recovery.strategy,
      mode: recovery.mode,
      ...(recovery.mode === "manual" && recovery.source ? { source: recovery.source } : {}),
      ...(recovery.strategy === "scheduled"
        ? { schedule: { time: recovery.time, method: recovery.method } }
        : {}),
    },
  });
  const create = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const t = await post<TaskView>("/api/tasks", body());
      navigate(`/tasks/${encodeURIComponent(t.name)}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const canNext = [
    local !== "" && remotes.length > 0,
    true,
    groupComplete,
    strategiesOk,
    false,
  ][step];
  const whyNot = [
    "Pick the local center and at least one remote center.",
    "",
    sizeMismatch
      ? "Every data partition (LSP, LGP, RGP, RSP) must have the same size."
      : dupes.size
      ? "A partition is picked twice."
      : "Pick a partition for every role.",
    recovery.mode === "manual" && !recovery.source
      ? "Manual recovery needs a default source."
      : chosenTargets.error ?? "A size is not valid (e.g. 512M, 10G).",
    "",
  ][step];

  return (
    <>
      <div class="page-head">
        <h1 tabIndex={-1}>New protection task</h1>
      </div>
      <ol class="steps" aria-label="wizard steps">
        {STEPS.map((s, i) => (
          <li key={s} aria-current={i === step ? "step" : undefined} class={i < step ? "done" : ""}>
            {i + 1}. {s}
          </li>
        ))}
      </ol>

      {step === 0 && (
        <div class="grid">
          <section class="panel" aria-labelledby="h-local">
            <h2 id="h-local">Local center (production)</h2>
            {allSites.filter((s) => s.role === "local").length === 0 && (
              <Empty>No local site yet: add one below.</Empty>
            )}
            <fieldset>
              <legend>The local center</legend>
              {allSites.filter((s) => s.role === "local").map((s) => (
                <label class="check" key={s.name}>
                  <input
                    type="radio"
                    name="local-site"
                    value={s.name}
                    checked={local === s.name}
                    onChange={() => setLocal(s.name)}
                  />
                  {s.name}
                </label>
              ))}
            </fieldset>
            <h3>Add a local site</h3>
            <SiteForm role="local" onCreated={(s) => (setLocal(s.name), sites.reload())} />
          </section>
          <section class="panel" aria-labelledby="h-remote">
            <h2 id="h-remote">Remote centers (recovery)</h2>
            {allSites.filter((s) => s.role === "remote").length === 0 && (
              <Empty>No remote site yet: add one below.</Empty>
            )}
            <fieldset>
              <legend>One or more remote centers</legend>
              {allSites.filter((s) => s.role === "remote").map((s) => (
                <label class="check" key={s.name}>
                  <input
                    type="checkbox"
                    name="remote-site"
                    value={s.name}
                    checked={remotes.includes(s.name)}
                    onChange={(e) =>
                      setRemotes(
                        e.currentTarget.checked ? [...remotes, s.name] : remotes.filter((r) => r !== s.name),
                      )}
                  />
                  {s.name}
                </label>
              ))}
            </fieldset>
            <h3>Add a remote site</h3>
            <SiteForm role="remote" onCreated={(s) => (setRemotes([...remotes, s.name]), sites.reload())} />
          </section>
        </div>
      )}

      {step === 1 && (
        <div class="grid">
          <section class="panel" aria-labelledby="h-hosts">
            <h2 id="h-hosts">Hosts at these centers</h2>
            <p class="small muted">
              Each center needs a gateway host and an application host (the local application server, the
              remote standby server).
            </p>
            {chosenSites.map((site) => (
              <div key={site}>
                <h3>{site}</h3>
                {allHosts.filter((h) => h.site === site).length === 0
                  ? <Empty>No host at {site} yet.</Empty>
                  : (
                    <ul>
                      {allHosts.filter((h) => h.site === site).map((h) => (
                        <li key={h.name}>{h.name} ({h.role})</li>
                      ))}
                    </ul>
                  )}
              </div>
            ))}
            <h3>Add a host</h3>
            <HostForm
              sites={allSites.filter((s) => chosenSites.includes(s.name))}
              onCreated={() => hosts.reload()}
            />
          </section>
          <section class="panel" aria-labelledby="h-devs">
            <h2 id="h-devs">Devices (volumes)</h2>
            {allVolumes.filter((v) => chosenSites.includes(hostByName.get(v.host)?.site ?? "")).length === 0
              ? <Empty>No device registered at these centers yet.</Empty>
              : (
                <div class="table-wrap">
                  <table>
                    <thead>
                      <tr>
                        <th>Host</th>
                        <th>Device</th>
                        <th class="num">Size</th>
                      </tr>
                    </thead>
                    <tbody>
                      {allVolumes.filter((v) => chosenSites.includes(hostByName.get(v.host)?.site ?? "")).map(
                        (v) => (
                          <tr key={v.name}>
                            <td>{v.host}</td>
                            <td class="mono">{v.device}</td>
                            <td class="num">{bytes(v.size)}</td>
                          </tr>
                        ),
                      )}
                    </tbody>
                  </table>
                </div>
              )}
            <h3>Register a device</h3>
            <VolumeForm
              hosts={allHosts.filter((h) => chosenSites.includes(h.site))}
              onCreated={() => volumes.reload()}
            />
          </section>
        </div>
      )}

      {step === 2 && (
        <section class="panel" aria-labelledby="h-group">
          <h2 id="h-group">The group: a partition for each role</h2>
          <div class="fields">
            {slots.map((slot) => {
              const list = candidates(slot);
              const v = picked(slot);
              const wrongSize = slot.data && v && lspSize !== undefined && v.size !== lspSize;
              const dupe = picks[slot.key] && dupes.has(picks[slot.key]);
              return (
                <Field
                  key={slot.key}
                  label={slot.label}
                  hint={v ? `${bytes(v.size)} (${v.size} bytes)` : `${slot.role} hosts at ${slot.site}`}
                  error={wrongSize
                    ? `size ${bytes(v!.size)} differs from the LSP's ${bytes(lspSize)}`
                    : dupe
                    ? "picked for another role too"
                    : list.length === 0
                    ? `no device on a ${slot.role} host at ${slot.site}: go back and register one`
                    : undefined}
                >
                  <select
                    name={`slot-${slot.key}`}
                    value={picks[slot.key] ?? ""}
                    aria-invalid={wrongSize || dupe ? "true" : undefined}
                    onChange={(e) => setPicks({ ...picks, [slot.key]: e.currentTarget.value })}
                  >
                    <option value="">— choose —</option>
                    {list.map((x) => (
                      <option key={x.name} value={refKey(x)}>{x.host}:{x.device} ({bytes(x.size)})</option>
                    ))}
                  </select>
                </Field>
              );
            })}
          </div>
          {sizeMismatch && (
            <div class="alert error" role="alert">
              The data partitions differ in size ({[...new Set(dataSizes)].map(bytes).join(", ")}): every LSP,
              LGP, RGP and RSP of a group must have the same size.
            </div>
          )}
          {!sizeMismatch && dataSizes.length > 1 && (
            <div class="alert ok" data-testid="sizes-ok">
              All data partitions chosen so far are {bytes(dataSizes[0])}.
            </div>
          )}
        </section>
      )}

      {step === 3 && (
        <div class="grid">
          <fieldset class="panel">
            <legend>Mirror strategy</legend>
            <div class="stack">
              <Field label="Acknowledge a write once it is" hint="lgp: asynchronous to the remote centers">
                <select
                  name="ack-point"
                  value={mirror.ackPoint}
                  onChange={(e) => setMirror({ ...mirror, ackPoint: e.currentTarget.value })}
                >
                  <option value="lgp">durable at the local gateway (LGP)</option>
                  <option value="rgp">durable at every remote gateway (RGP)</option>
                  <option value="rsp">applied by every standby server (RSP)</option>
                </select>
              </Field>
              <Field label="When a slow center fills the buffer">
                <select
                  name="congestion"
                  value={mirror.congestion}
                  onChange={(e) => setMirror({ ...mirror, congestion: e.currentTarget.value })}
                >
                  <option value="block">block the writers</option>
                  <option value="pull-ahead">pull ahead (copy its missed chunks later)</option>
                </select>
              </Field>
              <Field
                label="Buffer bound (optional)"
                hint="most of the buffer partition the journal uses, e.g. 512M"
                error={mirror.bufferBound && !Number.isFinite(bufferBound) ? "not a size" : undefined}
              >
                <input
                  name="buffer-bound"
                  value={mirror.bufferBound}
                  onInput={(e) => setMirror({ ...mirror, bufferBound: e.currentTarget.value })}
                />
              </Field>
              <Field
                label="Bandwidth limit per remote center"
                hint="bytes per second, e.g. 50M; empty or 0: no limit"
                error={!Number.isFinite(bandwidth) ? "not a size" : undefined}
              >
                <input
                  name="bandwidth"
                  value={mirror.bandwidth}
                  onInput={(e) => setMirror({ ...mirror, bandwidth: e.currentTarget.value })}
                />
              </Field>
              <label class="check">
                <input
                  type="checkbox"
                  name="compression"
                  checked={mirror.compression}
                  onChange={(e) => setMirror({ ...mirror, compression: e.currentTarget.checked })}
                />
                Compress the stream to the remote centers
              </label>
            </div>
          </fieldset>
          <fieldset class="panel">
            <legend>Recovery strategy</legend>
            <div class="stack">
              <Field label="Strategy">
                <select
                  name="strategy"
                  value={recovery.strategy}
                  onChange={(e) => setRecovery({ ...recovery, strategy: e.currentTarget.value })}
                >
                  <option value="fast">fast: copy only the chunks that differ</option>
                  <option value="full">full: copy everything</option>
                  <option value="scheduled">scheduled: at a set time of day</option>
                </select>
              </Field>
              {recovery.strategy === "scheduled" && (
                <div class="fields">
                  <Field label="Time of day">
                    <input
                      type="time"
                      name="schedule-time"
                      value={recovery.time}
                      onInput={(e) => setRecovery({ ...recovery, time: e.currentTarget.value })}
                    />
                  </Field>
                  <Field label="Method">
                    <select
                      name="schedule-method"
                      value={recovery.method}
                      onChange={(e) => setRecovery({ ...recovery, method: e.currentTarget.value })}
                    >
                      <option value="fast">fast</option>
                      <option value="full">full</option>
                    </select>
                  </Field>
                </div>
              )}
              <Field label="Source chosen by">
                <select
                  name="mode"
                  value={recovery.mode}
                  onChange={(e) => setRecovery({ ...recovery, mode: e.currentTarget.value })}
                >
                  <option value="policy">the policy (valid copy of lowest cost)</option>
                  <option value="manual">the operator (default source below)</option>
                </select>
              </Field>
              {recovery.mode === "manual" && (
                <Field label="Default source">
                  <select
                    name="source"
                    value={recovery.source}
                    onChange={(e) => setRecovery({ ...recovery, source: e.currentTarget.value })}
                  >
                    <option value="">— choose —</option>
                    <option value="lgp">lgp (local gateway's mirror)</option>
                    {remotes.flatMap((r) => [
                      <option key={`rgp@${r}`} value={`rgp@${r}`}>rgp@{r}</option>,
                      <option key={`rsp@${r}`} value={`rsp@${r}`}>rsp@{r}</option>,
                    ])}
                  </select>
                </Field>
              )}
            </div>
          </fieldset>
          <TargetsFields value={targets} onChange={setTargets} error={error} />
        </div>
      )}

      {step === 4 && (
        <form class="panel stack" onSubmit={create} aria-labelledby="h-review">
          <h2 id="h-review">Review and create</h2>
          <div class="fields">
            <Field label="Task name" error={issueAt(error, "name")}>
              <input name="task-name" required value={name} onInput={(e) => setName(e.currentTarget.value)} />
            </Field>
            <Field
              label="Protected service (optional)"
              hint="a --service of this gateway switched by failover"
              error={issueAt(error, "service")}
            >
              <input name="service" value={service} onInput={(e) => setService(e.currentTarget.value)} />
            </Field>
          </div>
          <Field label="Description (optional)" error={issueAt(error, "description")}>
            <textarea
              name="description"
              rows={2}
              value={description}
              onInput={(e) => setDescription(e.currentTarget.value)}
            />
          </Field>
          <dl class="kv">
            <dt>Local center</dt>
            <dd>{local}</dd>
            <dt>Remote centers</dt>
            <dd>{remotes.join(", ")}</dd>
            {slots.map((s) => (
              <Fragment key={s.key}>
                <dt>{s.key.toUpperCase()}</dt>
                <dd class="mono">
                  {picked(s) ? `${picked(s)!.host}:${picked(s)!.device} (${bytes(picked(s)!.size)})` : "—"}
                </dd>
              </Fragment>
            ))}
            <dt>Mirror</dt>
            <dd>
              ack at {mirror.ackPoint}, {mirror.congestion}, {mirror.bufferBound || "whole buffer"}, bandwidth
              {" "}
              {bandwidth ? `${bytes(bandwidth)}/s` : "unlimited"}, compression{" "}
              {mirror.compression ? "on" : "off"}
            </dd>
            <dt>Recovery</dt>
            <dd>
              {recovery.strategy}
              {recovery.strategy === "scheduled" ? ` at ${recovery.time} (${recovery.method})` : ""},{" "}
              {recovery.mode}
              {recovery.mode === "manual" ? ` from ${recovery.source}` : ""}
            </dd>
            <dt>Targets</dt>
            <dd data-testid="review-targets">
              {targetsSummary(chosenTargets.targets)}
            </dd>
          </dl>
          <ErrorBox error={error} />
          <div class="row">
            <button type="button" onClick={() => setStep(3)}>Back</button>
            <button type="submit" class="primary" disabled={busy || !name}>
              {busy ? "Creating…" : "Create task"}
            </button>
          </div>
        </form>
      )}

      {step < 4 && (
        <div class="row">
          {step > 0 && <button type="button" onClick={() => setStep(step - 1)}>Back</button>}
          <button
            type="button"
            class="primary"
            disabled={!canNext}
            aria-describedby={!canNext ? "why-not" : undefined}
            onClick={() => {
              reloadAll();
              setStep(step + 1);
            }}
          >
            Next: {STEPS[step + 1]}
          </button>
          {!canNext && whyNot && <span id="why-not" class="small muted">{whyNot}</span>}
        </div>
      )}
    </>
  );
}
