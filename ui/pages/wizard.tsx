// The task wizard: centers → hosts and devices → the group (a partition for each role) →
// mirror and recovery strategies → review and create. What the gateway discovered is offered
// as the choices and pre-selected: the local center, every linked remote center, and the
// group the gateway proposes (/api/discovery/proposal: the LSP when only one is free, the
// gateways' mirror, journal and replicas, a standby device of the LSP's size); a choice that
// is the only possible one is selected too. Typing stays possible for what is not connected
// (the forms of step 2). Every step is checked by the server (POST /api/tasks/check) as it is
// filled in, and each problem is shown at its field with the field's label; a button that
// cannot be used says why. The strategies step also takes the QoS targets (ui/qos.tsx).
import { NAME_RE } from "../../src/names.ts";
import { Fragment } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { get, isAdmin, type Issue, post } from "../api.ts";
import { Empty, ErrorBox, Field, Loading, useResource } from "../components.tsx";
import { bytes, parseSize, sizeProblem } from "../format.ts";
import { status } from "../live.ts";
import { navigate } from "../router.ts";
import type { Host, ProposalView, Site, Stored, TaskView, Volume } from "../types.ts";
import { Found, HostForm, SiteForm, VolumeForm } from "./inventory.tsx";
import { NO_TARGETS, targetsBody, TargetsFields, targetsSummary } from "../qos.tsx";
import {
  fieldLabels,
  type Option,
  optionsFor,
  partitionsNeeded,
  proposedPicks,
  type Slot,
  slotsFor,
  stepOf,
  STEPS,
} from "../wizard-model.ts";

export function WizardPage() {
  const sites = useResource<(Site & Stored)[]>("/api/sites");
  const hosts = useResource<(Host & Stored)[]>("/api/hosts");
  const volumes = useResource<(Volume & Stored)[]>("/api/volumes");
  const tasks = useResource<TaskView[]>("/api/tasks");
  const [step, setStep] = useState(0);
  const [local, setLocal] = useState("");
  const [remotes, setRemotes] = useState<string[]>([]);
  const defaulted = useRef(false);
  const [picks, setPicks] = useState<Record<string, string>>({});
  const [proposal, setProposal] = useState<ProposalView | undefined>(undefined);
  /** The LSP the proposal was last applied for: a new LSP brings a new proposal for the rest. */
  const proposedFor = useRef<string | undefined>(undefined);
  const [issues, setIssues] = useState<Issue[]>([]);
  const [mirror, setMirror] = useState({
    ackPoint: "lgp",
    congestion: "block",
    bufferBound: "",
    bandwidth: "",
    compression: false,
    retentionHours: "",
    retentionSize: "",
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

  const allSites = sites.data ?? [], allHosts = hosts.data ?? [], allVolumes = volumes.data ?? [];
  const allTasks = tasks.data ?? [];
  const localSites = allSites.filter((s) => s.role === "local");
  const remoteSites = allSites.filter((s) => s.role === "remote");

  // the defaults, once the sites are known: the only (or this gateway's) local center, and every
  // remote center this gateway replicates to (else every discovered one, else the only one)
  useEffect(() => {
    if (defaulted.current || !sites.data) return;
    defaulted.current = true;
    const own = status.value?.site;
    const l = localSites.length === 1 ? localSites[0].name : localSites.find((s) => s.name === own)?.name;
    if (l) setLocal(l);
    const linked = (status.value?.sites ?? []).map((s) => s.site);
    const mine = remoteSites.filter((s) => linked.includes(s.name));
    const found = remoteSites.filter((s) => s.discovered);
    const pick = mine.length ? mine : found.length ? found : remoteSites.length === 1 ? remoteSites : [];
    setRemotes(pick.map((s) => s.name));
  }, [sites.data]);

  const slots = slotsFor(local, remotes);
  const labels = fieldLabels(slots);
  const lspVolume = () => {
    const o = optionsFor(slots[0], { hosts: allHosts, volumes: allVolumes, tasks: allTasks, proposal });
    const enabled = o.filter((x) => !x.disabled);
    return o.find((x) => x.key === picks.lsp) ?? (enabled.length === 1 ? enabled[0] : undefined);
  };
  const lsp = lspVolume();
  const options = (slot: Slot): Option[] =>
    optionsFor(slot, { hosts: allHosts, volumes: allVolumes, tasks: allTasks, proposal, lspSize: lsp?.size });
  /** The slot's partition: the one picked, else the only one possible. */
  const chosen = (slot: Slot): Option | undefined => {
    const list = options(slot);
    const enabled = list.filter((x) => !x.disabled);
    return list.find((x) => x.key === picks[slot.key]) ?? (enabled.length === 1 ? enabled[0] : undefined);
  };

  // the gateway's proposal on the group step, again when the LSP or the centers change
  useEffect(() => {
    if (step !== 2 || !local || remotes.length === 0) return;
    let live = true;
    const q = new URLSearchParams({ local, remotes: remotes.join(",") });
    if (lsp) {
      q.set("host", lsp.host);
      q.set("device", lsp.device);
    }
    get<ProposalView>(`/api/discovery/proposal?${q}`).then((p) => {
      if (!live) return;
      setProposal(p);
      const fresh = proposedFor.current !== lsp?.key;
      proposedFor.current = lsp?.key;
      const proposed = proposedPicks(p, remotes);
      setPicks((cur) => {
        const next = { ...cur };
        for (const [k, v] of Object.entries(proposed)) if (!next[k] || (fresh && k !== "lsp")) next[k] = v;
        return next;
      });
    }, () => live && setProposal(undefined)); // a gateway without discovery: the single choices only
    return () => {
      live = false;
    };
  }, [step, local, remotes.join(","), lsp?.key]);

  const bufferPart = chosen(slots[2]);
  const bufferBoundWrong = sizeProblem(mirror.bufferBound, {
    positive: true,
    max: bufferPart ? { bytes: bufferPart.size, what: "the buffer partition" } : undefined,
  });
  const bandwidthWrong = sizeProblem(mirror.bandwidth);
  const retentionWrong = mirror.retentionHours !== "" &&
      !(Number(mirror.retentionHours) > 0 && Number(mirror.retentionHours) <= 8760)
    ? "a number of hours, more than 0 and at most 8760"
    : undefined;
  const retentionSizeWrong = sizeProblem(mirror.retentionSize);
  const taken = allTasks.some((t) => t.name === name);
  const nameWrong = name === ""
    ? undefined
    : !NAME_RE.test(name)
    ? "use 1 to 64 letters, digits, '.', '_' or '-'"
    : taken
    ? `a task named ${name} exists already`
    : undefined;
  const serviceWrong = service && !NAME_RE.test(service)
    ? "use the name of a --service of this gateway"
    : undefined;
  const descriptionWrong = description.length > 500 ? "must be at most 500 characters" : undefined;

  const ref = (slot: Slot) => {
    const c = chosen(slot);
    return c ? { host: c.host, device: c.device } : undefined;
  };
  const chosenTargets = targetsBody(targets);
  const body = () => ({
    ...(name ? { name } : {}),
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
      ...(mirror.bufferBound ? { bufferBound: parseSize(mirror.bufferBound) } : {}),
      bandwidthLimit: parseSize(mirror.bandwidth || "0"),
      compression: mirror.compression,
      ...(Number(mirror.retentionHours) > 0 ? { retentionHours: Number(mirror.retentionHours) } : {}),
      ...(mirror.retentionSize ? { retentionBytes: parseSize(mirror.retentionSize) } : {}),
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

  /** The server's check of everything filled in so far; the problems of the steps up to `upTo`. */
  const check = async (upTo: number): Promise<Issue[]> => {
    try {
      const r = await post<{ issues: Issue[] }>("/api/tasks/check", body());
      // what is not filled in yet is said by the disabled button, not as a problem
      const found = r.issues.filter((i) => stepOf(i.path) <= upTo && i.message !== "is required");
      setIssues(found);
      return found;
    } catch (e) {
      setError(e);
      return [{ path: "body", message: (e as Error).message }];
    }
  };
  // the group is checked as it is chosen
  const groupText = JSON.stringify(slots.map((s) => ref(s)));
  useEffect(() => {
    if (step === 2 && local && remotes.length) void check(2);
  }, [step, groupText]);

  if (!isAdmin()) {
    return (
      <>
        <h1 tabIndex={-1}>New task</h1>
        <div class="alert info">Creating tasks needs the admin role; you are logged in as a viewer.</div>
      </>
    );
  }
  if ([sites, hosts, volumes, tasks].some((r) => r.loading && !r.data)) {
    return <Loading what="the inventory" />;
  }
  const loadError = sites.error ?? hosts.error ?? volumes.error ?? tasks.error;
  const reloadAll = () => {
    sites.reload();
    hosts.reload();
    volumes.reload();
    tasks.reload();
  };
  if (loadError) return <ErrorBox error={loadError} retry={reloadAll} />;

  const chosenSites = [local, ...remotes].filter(Boolean);
  const hostByName = new Map(allHosts.map((h) => [h.name, h]));
  const issueOf = (path: string) =>
    issues.find((i) => i.path === path || i.path.startsWith(`${path}.`))?.message;
  const stepIssues = issues.filter((i) => stepOf(i.path) === step);
  const missing = slots.filter((s) => !chosen(s));
  const create = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const t = await post<TaskView>("/api/tasks", body());
      navigate(`/tasks/${encodeURIComponent(t.name)}`);
    } catch (err) {
      setError(err);
      setIssues((err as { issues?: Issue[] }).issues ?? []);
    } finally {
      setBusy(false);
    }
  };
  const whyNot: string | undefined = [
    !local
      ? "Pick the local center."
      : remotes.length === 0
      ? "Pick at least one remote center."
      : stepIssues.length
      ? "Correct the marked choices."
      : undefined,
    undefined,
    missing.length
      ? `Pick a partition for: ${missing.map((s) => s.label.split(" — ")[0]).join(", ")}.`
      : stepIssues.length
      ? "Correct the marked partitions."
      : undefined,
    bufferBoundWrong || bandwidthWrong || retentionWrong || retentionSizeWrong ||
      (recovery.mode === "manual" && !recovery.source)
      ? "Correct the marked fields."
      : chosenTargets.error
      ? chosenTargets.error
      : stepIssues.length
      ? "Correct the marked fields."
      : undefined,
    !name
      ? "Type a name for the task."
      : nameWrong || serviceWrong || descriptionWrong
      ? "Correct the marked fields."
      : undefined,
  ][step];
  const next = async () => {
    setError(undefined);
    if ((await check(step)).some((i) => stepOf(i.path) === step)) return;
    reloadAll();
    setStep(step + 1);
  };

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
        <>
          <p class="small" data-testid="needed">
            The group of this task will have {partitionsNeeded(remotes)}
            {remotes.length ? "" : " at each remote center you pick"}.
          </p>
          <div class="grid">
            <section class="panel" aria-labelledby="h-local">
              <h2 id="h-local">Local center (production)</h2>
              {localSites.length === 0 && <Empty>No local site yet: add one below.</Empty>}
              <fieldset>
                <legend>The local center</legend>
                {localSites.map((s) => (
                  <label class="check" key={s.name}>
                    <input
                      type="radio"
                      name="local-site"
                      value={s.name}
                      checked={local === s.name}
                      onChange={() => setLocal(s.name)}
                    />
                    {s.name} <Found item={s} />
                  </label>
                ))}
              </fieldset>
              {issueOf("group.local.site") && (
                <span class="err" role="alert">{issueOf("group.local.site")}</span>
              )}
              <h3>Add a local site</h3>
              <SiteForm role="local" onCreated={(s) => (setLocal(s.name), sites.reload())} />
            </section>
            <section class="panel" aria-labelledby="h-remote">
              <h2 id="h-remote">Remote centers (recovery)</h2>
              {remoteSites.length === 0 && <Empty>No remote site yet: add one below.</Empty>}
              <fieldset>
                <legend>One or more remote centers</legend>
                {remoteSites.map((s) => (
                  <label class="check" key={s.name}>
                    <input
                      type="checkbox"
                      name="remote-site"
                      value={s.name}
                      checked={remotes.includes(s.name)}
                      onChange={(e) =>
                        setRemotes(
                          e.currentTarget.checked
                            ? remoteSites.map((x) => x.name).filter((n) =>
                              n === s.name || remotes.includes(n)
                            )
                            : remotes.filter((r) => r !== s.name),
                        )}
                    />
                    {s.name} <Found item={s} />
                  </label>
                ))}
              </fieldset>
              {issueOf("group.remotes") && <span class="err" role="alert">{issueOf("group.remotes")}</span>}
              <h3>Add a remote site</h3>
              <SiteForm role="remote" onCreated={(s) => (setRemotes([...remotes, s.name]), sites.reload())} />
            </section>
          </div>
        </>
      )}

      {step === 1 && (
        <div class="grid">
          <section class="panel" aria-labelledby="h-hosts">
            <h2 id="h-hosts">Hosts at these centers</h2>
            <p class="small muted">
              Each center needs a gateway host and an application host (the local application server, the
              remote standby server). Those that connected were found by themselves; add the others here.
            </p>
            {chosenSites.map((site) => (
              <div key={site}>
                <h3>{site}</h3>
                {allHosts.filter((h) => h.site === site).length === 0
                  ? <Empty>No host at {site} yet.</Empty>
                  : (
                    <ul>
                      {allHosts.filter((h) => h.site === site).map((h) => (
                        <li key={h.name}>
                          {h.name} ({h.role}
                          {h.role === "application" ? `, agent ${h.agent ?? h.name}` : ""}) <Found item={h} />
                        </li>
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
            <p class="small muted">
              The agents report the devices they may serve (their --device-prefix directories); the gateways
              make their mirrors and replicas themselves.
            </p>
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
                        <th>Found</th>
                      </tr>
                    </thead>
                    <tbody>
                      {allVolumes.filter((v) => chosenSites.includes(hostByName.get(v.host)?.site ?? "")).map(
                        (v) => (
                          <tr key={v.name}>
                            <td>{v.host}</td>
                            <td class="mono">{v.device}</td>
                            <td class="num">{bytes(v.size)}</td>
                            <td>
                              <Found item={v} />
                            </td>
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
          <p class="small muted">
            {partitionsNeeded(remotes)}. Every data partition (LSP, LGP, RGP, RSP) has the LSP's size; the
            buffer is the gateway's journal, which the tasks share.
          </p>
          <div class="stack">
            {slots.map((slot) => {
              const list = options(slot);
              const c = chosen(slot);
              const note = proposal?.notes.find((n) => n.path === slot.path)?.message;
              const problem = issueOf(slot.path) ??
                (list.length === 0
                  ? `no device on a ${slot.role} host at ${slot.site}: go back and register one`
                  : undefined);
              return (
                <Field
                  key={slot.key}
                  label={slot.label}
                  hint={c
                    ? `${bytes(c.size)} (${c.size} bytes)`
                    : note ?? `${slot.role} hosts at ${slot.site}`}
                  error={problem}
                >
                  <select
                    name={`slot-${slot.key}`}
                    value={c?.key ?? ""}
                    aria-invalid={problem ? "true" : undefined}
                    onChange={(e) => setPicks({ ...picks, [slot.key]: e.currentTarget.value })}
                  >
                    <option value="">— choose —</option>
                    {list.map((x) => (
                      <option key={x.key} value={x.key} disabled={x.disabled !== undefined}>
                        {x.label}
                        {x.disabled ? ` — ${x.disabled}` : ""}
                      </option>
                    ))}
                  </select>
                </Field>
              );
            })}
          </div>
          {missing.length === 0 && stepIssues.length === 0 && (
            <div class="alert ok" data-testid="sizes-ok">
              Every partition is chosen; the data partitions are {bytes(lsp?.size)}.
            </div>
          )}
        </section>
      )}

      {step === 3 && (
        <div class="grid">
          <fieldset class="panel">
            <legend>Mirror strategy</legend>
            <div class="stack">
              <Field label={labels["mirror.ackPoint"]} hint="lgp: asynchronous to the remote centers">
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
              <Field label={labels["mirror.congestion"]}>
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
                label={`${labels["mirror.bufferBound"]} (optional)`}
                hint={`most of the buffer partition${
                  bufferPart ? ` (${bytes(bufferPart.size)})` : ""
                } this task's records may use, e.g. 256M`}
                error={bufferBoundWrong ?? issueOf("mirror.bufferBound")}
              >
                <input
                  name="buffer-bound"
                  value={mirror.bufferBound}
                  aria-invalid={bufferBoundWrong ? "true" : undefined}
                  onInput={(e) => setMirror({ ...mirror, bufferBound: e.currentTarget.value })}
                />
              </Field>
              <Field
                label={labels["mirror.bandwidthLimit"]}
                hint="bytes per second, e.g. 50M; empty or 0: no limit"
                error={bandwidthWrong ?? issueOf("mirror.bandwidthLimit")}
              >
                <input
                  name="bandwidth"
                  value={mirror.bandwidth}
                  aria-invalid={bandwidthWrong ? "true" : undefined}
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
              <Field
                label={labels["mirror.retentionHours"]}
                hint="hours every point is kept at each remote center, e.g. 24; empty: the center's --retention"
                error={retentionWrong ?? issueOf("mirror.retentionHours")}
              >
                <input
                  name="retention-hours"
                  inputMode="decimal"
                  value={mirror.retentionHours}
                  aria-invalid={retentionWrong ? "true" : undefined}
                  onInput={(e) => setMirror({ ...mirror, retentionHours: e.currentTarget.value })}
                />
              </Field>
              <Field
                label={labels["mirror.retentionBytes"]}
                hint="e.g. 200G; empty: the center's --retention-size"
                error={retentionSizeWrong ?? issueOf("mirror.retentionBytes")}
              >
                <input
                  name="retention-size"
                  value={mirror.retentionSize}
                  aria-invalid={retentionSizeWrong ? "true" : undefined}
                  onInput={(e) => setMirror({ ...mirror, retentionSize: e.currentTarget.value })}
                />
              </Field>
            </div>
          </fieldset>
          <fieldset class="panel">
            <legend>Recovery strategy</legend>
            <div class="stack">
              <Field label={labels["recovery.strategy"]}>
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
                  <Field label={labels["recovery.schedule"]} error={issueOf("recovery.schedule")}>
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
              <Field label={labels["recovery.mode"]}>
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
                <Field
                  label={labels["recovery.source"]}
                  error={recovery.source
                    ? issueOf("recovery.source")
                    : "choose the copy recoveries start from"}
                >
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
            <Field label={labels.name} error={nameWrong ?? issueOf("name")} hint="e.g. orders-db">
              <input
                name="task-name"
                required
                value={name}
                aria-invalid={nameWrong ? "true" : undefined}
                onInput={(e) => setName(e.currentTarget.value)}
              />
            </Field>
            <Field
              label={`${labels.service} (optional)`}
              hint="a --service of this gateway switched by failover"
              error={serviceWrong ?? issueOf("service")}
            >
              <input
                name="service"
                value={service}
                aria-invalid={serviceWrong ? "true" : undefined}
                onInput={(e) => setService(e.currentTarget.value)}
              />
            </Field>
          </div>
          <Field
            label={`${labels.description} (optional)`}
            error={descriptionWrong ?? issueOf("description")}
            hint={`${description.length} of 500 characters`}
          >
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
                <dd class="mono">{chosen(s)?.label ?? "—"}</dd>
              </Fragment>
            ))}
            <dt>Mirror</dt>
            <dd>
              ack at {mirror.ackPoint}, {mirror.congestion}, {mirror.bufferBound || "whole buffer"}, bandwidth
              {" "}
              {parseSize(mirror.bandwidth || "0") ? `${bytes(parseSize(mirror.bandwidth))}/s` : "unlimited"},
              compression {mirror.compression ? "on" : "off"}, recovery points{" "}
              {mirror.retentionHours ? `${mirror.retentionHours} h` : "as the remote centers keep them"}
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
          <ErrorBox
            error={error}
            fields={{ name: labels.name, service: labels.service, description: labels.description }}
          />
          <div class="row">
            <button type="button" onClick={() => setStep(3)}>Back</button>
            <button
              type="submit"
              class="primary"
              disabled={busy || whyNot !== undefined}
              title={whyNot}
              aria-describedby={whyNot ? "why-not" : undefined}
            >
              {busy ? "Creating…" : "Create task"}
            </button>
            {whyNot && <span id="why-not" class="small muted">{whyNot}</span>}
          </div>
        </form>
      )}

      {step < 4 && (
        <div class="row">
          {step > 0 && <button type="button" onClick={() => setStep(step - 1)}>Back</button>}
          <button
            type="button"
            class="primary"
            disabled={whyNot !== undefined}
            title={whyNot}
            aria-describedby={whyNot ? "why-not" : undefined}
            onClick={next}
          >
            Next: {STEPS[step + 1]}
          </button>
          {whyNot && <span id="why-not" class="small muted">{whyNot}</span>}
        </div>
      )}
      {step < 4 && error ? <ErrorBox error={error} fields={labels} /> : null}
    </>
  );
}
