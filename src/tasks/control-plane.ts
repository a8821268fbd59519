// The local gateway's control plane: it turns the tasks into the agents' work. The task store is
// the source of truth; an agent started with only its identity learns its volumes from the
// orders sent over its authenticated link (typed and checked by src/wire/control.ts):
//   {type: "assign", id, volumes: [{name, path, size}]}   answered {type: "assigned", id, results}
//   {type: "unassign", id, name}                          answered {type: "unassigned", id, ok, error?}
// and reports the assignments it remembers after every connection ({type: "assignments", names}),
// which the gateway answers with the assignments the tasks ask for and an unassign for each name
// no task asks for any more (a task deleted while the agent was away).
//
// A task asks for its LSP (host + device, with the partition's name and size) on the host's
// agent from the moment it is started until it is deleted. Pausing keeps the assignment (the
// service keeps running) but retires the volume from the senders; resuming carries it again.
//
// Each remote center's RSPs are desired state, per site: {type: "standbys", agents: {AGENT:
// [{name, path, size}]}} is the whole set the site's standby agents must hold (the standby agent
// of the protected agent holds the copy under the LSP volume's name). It is sent when the tasks
// change, whenever the site's link comes up, and again while the site's answer (each copy
// assigned, pending or failed, with the reason) leaves a copy pending, and every few seconds for
// the status; the site reconciles its standby agents with it (src/site/standby-copies.ts). A
// start sends it before assigning the LSP, so the standby holds its copy before the stream
// reaches the site, and is refused when a standby refuses its copy.
//
// The tasks' mirror strategies (M) are read at every refresh too and handed to the gateway
// (applyMirror) when they change: see mirrorPlan.
import { logger } from "../log.ts";
import type { Assignment } from "../capture/assignments.ts";
import type { Host, Mirror, Task, Volume } from "./model.ts";
import { DesiredState } from "./desired-state.ts";
import type { TaskStore } from "./store.ts";
import { PendingRequests } from "../wire/requests.ts";
import type { AgentOrder, AgentReport, SiteAnswerTo, SiteRequest, Unsent } from "../wire/control.ts";

const log = logger("control-plane");

/** A task's LSP as an agent's assignment. */
export interface LspAssignment {
  task: string;
  agent: string;
  volume: Assignment;
}

/** The LSP assignment of a task, or a message saying which part of the inventory is missing. */
export function lspAssignment(task: Task, hosts: Host[], volumes: Volume[]): LspAssignment | string {
  const lsp = task.group.local.lsp;
  const host = hosts.find((h) => h.name === lsp.host);
  if (!host) return `task "${task.name}": unknown host "${lsp.host}"`;
  const vol = volumes.find((v) => v.host === lsp.host && v.device === lsp.device);
  if (!vol) return `task "${task.name}": no volume registered at ${lsp.host}:${lsp.device}`;
  return {
    task: task.name,
    agent: host.agent ?? host.name,
    volume: { name: vol.name, path: vol.device, size: vol.size },
  };
}

/** The standby copies (RSPs) of a task: per remote center, the copy its standby agent holds. */
export function rspAssignments(
  task: Task,
  hosts: Host[],
  volumes: Volume[],
): { site: string; agent: string; volume: Assignment }[] | string {
  const lsp = lspAssignment(task, hosts, volumes);
  if (typeof lsp === "string") return lsp;
  const out = [];
  for (const r of task.group.remotes) {
    const vol = volumes.find((v) => v.host === r.rsp.host && v.device === r.rsp.device);
    if (!vol) return `task "${task.name}": no volume registered at ${r.rsp.host}:${r.rsp.device}`;
    // the remote gateway feeds the standby the protected agent's volumes, by their names
    out.push({
      site: r.site,
      agent: lsp.agent,
      volume: { name: lsp.volume.name, path: vol.device, size: vol.size },
    });
  }
  return out;
}

/** Whether a task in this state has its LSP assigned: from its start until it is deleted. */
export function assigned(task: Task): boolean {
  return task.state !== "configured";
}

/** What one agent must serve: the assignments of every started task whose LSP host runs it. */
export function desiredFor(
  agent: string,
  tasks: Task[],
  hosts: Host[],
  volumes: Volume[],
  active: (t: Task) => boolean = assigned,
): Assignment[] {
  const out: Assignment[] = [];
  for (const t of tasks) {
    if (!active(t)) continue;
    const a = lspAssignment(t, hosts, volumes);
    if (typeof a !== "string" && a.agent === agent) out.push(a.volume);
  }
  return out;
}

/** What one remote site's standby agents must hold: per agent, the RSPs of the started tasks. */
export function standbysFor(
  site: string,
  tasks: Task[],
  hosts: Host[],
  volumes: Volume[],
  active: (t: Task) => boolean = assigned,
): Record<string, Assignment[]> {
  const out: Record<string, Assignment[]> = {};
  for (const t of tasks) {
    if (!active(t)) continue;
    const rsps = rspAssignments(t, hosts, volumes);
    if (typeof rsps === "string") continue;
    for (const r of rsps) if (r.site === site) (out[r.agent] ??= []).push(r.volume);
  }
  return out;
}

/** What the tasks' mirror strategies (M) ask of the gateway. */
export interface MirrorPlan {
  /** AGENT/NAME of each started task's LSP volume → its M. */
  volumes: Record<string, Mirror>;
  /**
   * Per remote site some carried task replicates to: the bandwidth its tasks allow (bytes/s, 0:
   * no limit). One sender streams a site's volumes in one ordered stream, so the limit is the
   * site's: the sum of its tasks' limits, none as soon as one task has none (see siteLimit).
   */
  siteBandwidth: Record<string, number>;
}

/**
 * A site sender's bandwidth limit: the stricter of the link's (--remote-bandwidth, a cap set
 * for the link) and what the site's tasks allow; 0 on either side is no limit from that side.
 */
export function siteLimit(flag: number, tasks: number | undefined): number {
  if (!tasks) return flag;
  return flag === 0 ? tasks : Math.min(flag, tasks);
}

export function mirrorPlan(
  tasks: Task[],
  hosts: Host[],
  volumes: Volume[],
  active: (t: Task) => boolean = assigned,
): MirrorPlan {
  const plan: MirrorPlan = { volumes: {}, siteBandwidth: {} };
  for (const t of tasks) {
    if (!active(t)) continue;
    const a = lspAssignment(t, hosts, volumes);
    if (typeof a === "string") continue;
    plan.volumes[`${a.agent}/${a.volume.name}`] = t.mirror;
    if (t.state === "paused") continue; // not carried: its limit does not count
    for (const r of t.group.remotes) {
      const now = plan.siteBandwidth[r.site];
      const mine = t.mirror.bandwidthLimit;
      plan.siteBandwidth[r.site] = now === undefined ? mine : now === 0 || mine === 0 ? 0 : now + mine;
    }
  }
  return plan;
}

/**
 * What to tell an agent that reports the assignments it remembers: assign everything desired
 * (the agent keeps what it already serves as it is) and unassign what it remembers that no
 * task asks for.
 */
export function reconcile(
  desired: Assignment[],
  remembered: string[],
): { assign: Assignment[]; unassign: string[] } {
  const want = new Set(desired.map((a) => a.name));
  return { assign: desired, unassign: [...new Set(remembered)].filter((n) => !want.has(n)).sort() };
}

/** A site's answer to its desired standby copies: per agent, each copy's state. */
export type StandbyReport = Record<
  string,
  { name: string; state: AssignmentState["state"]; error?: string }[]
>;

/** The state of one task's assignment (its LSP at its agent, or an RSP at a remote site), for status and errors. */
export interface AssignmentState {
  task: string;
  kind: "lsp" | "rsp";
  /** The remote site of an RSP. */
  site?: string;
  agent: string;
  volume: string;
  state: "pending" | "assigned" | "failed";
  error?: string;
  /** The task's start was refused with this failure: the task stays configured (its own failure says why). */
  atStart?: boolean;
  since: number;
}

export interface ControlPlaneDeps {
  store: TaskStore;
  /** Sends a control message to a connected agent; false when it is not connected. */
  send: (agent: string, msg: AgentOrder) => boolean;
  /** Stops (true) or resumes (false) sending a volume (AGENT/NAME) to the remote sites. */
  retire: (agent: string, name: string, retired: boolean) => Promise<void>;
  /** A control request to a remote site (its answer); rejects when the site is not connected. */
  siteRequest: (
    site: string,
    msg: Unsent<Extract<SiteRequest, { type: "standbys" }>>,
  ) => Promise<SiteAnswerTo<"standbys">>;
  /** The remote sites this gateway replicates to (--remote). */
  sites: () => string[];
  /** Applies the tasks' mirror strategies (called at the first refresh and whenever they change). */
  applyMirror?: (plan: MirrorPlan) => void | Promise<void>;
  answerTimeoutMs?: number;
  /** How often the tasks are read and the desired state reconciled (ms). */
  refreshMs?: number;
}

/** An agent's answer to an order: done (per volume, with the reasons), or refused as a whole. */
type AgentAnswer = Extract<AgentReport, { type: "assigned" | "unassigned" | "refused" }>;

export class ControlPlane {
  private requests = new PendingRequests<Exclude<AgentAnswer, { type: "refused" }>>();
  private states = new Map<string, AssignmentState>();
  /** Each remote site's desired standby copies (per agent), re-sent until the site answered. */
  private plans: DesiredState<Record<string, Assignment[]>>;
  /** The last answer of each site: per agent, the state of each copy. */
  private reports = new Map<string, { report: StandbyReport; at: number }>();
  private rsps: { task: string; site: string; agent: string; volume: string }[] = [];
  /** Tasks being started: their copies are desired before the store records the start. */
  private starting = new Set<string>();
  private pushing = new Map<string, Promise<void>>();
  private mirrorText = "";
  private refreshing: Promise<void> | undefined;
  private again = false;
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly d: ControlPlaneDeps) {
    // pending copies are asked about every 2 s, settled ones every 5 s (status)
    this.plans = new DesiredState(2000, 5000);
  }

  /** Starts the reconciliation loop (the tasks are read again every refreshMs). */
  run(): void {
    this.timer ??= setInterval(() => this.refresh(), this.d.refreshMs ?? 1000);
    this.refresh();
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private active = (t: Task) => {
    if (t.state !== "configured") this.starting.delete(t.name);
    return assigned(t) || this.starting.has(t.name);
  };

  /**
   * Reads the tasks and reconciles: the mirror strategies are applied when they changed, each
   * site's desired standby copies are updated and sent where due. Never runs twice at once (a
   * call meanwhile runs once more after it).
   */
  refresh(): Promise<void> {
    if (this.refreshing) {
      this.again = true;
      return this.refreshing;
    }
    this.refreshing = (async () => {
      do {
        this.again = false;
        await this.reconcileOnce().catch((e) => log.error("cannot reconcile the tasks", { error: e }));
      } while (this.again);
    })().finally(() => this.refreshing = undefined);
    return this.refreshing;
  }

  private async reconcileOnce(): Promise<void> {
    const { tasks, hosts, volumes } = await this.inventory();
    const plan = mirrorPlan(tasks, hosts, volumes, this.active);
    const text = JSON.stringify(plan);
    if (text !== this.mirrorText && this.d.applyMirror) {
      await this.d.applyMirror(plan);
      this.mirrorText = text;
    }
    const rsps = [];
    for (const t of tasks) {
      if (!this.active(t)) continue;
      const list = rspAssignments(t, hosts, volumes);
      if (typeof list === "string") continue;
      for (const r of list) rsps.push({ task: t.name, site: r.site, agent: r.agent, volume: r.volume.name });
    }
    this.rsps = rsps;
    for (const site of this.d.sites()) {
      this.plans.set(site, standbysFor(site, tasks, hosts, volumes, this.active));
    }
    for (const due of this.plans.due(performance.now())) this.push(due.peer);
  }

  /** A remote site's link came up (its desired standby copies are sent again) or went down. */
  onSite(site: string, up: boolean): void {
    this.plans.connected(site, up);
    if (up) this.refresh();
  }

  /** Sends a site its desired standby copies (after any send in flight); resolves with its answer recorded. */
  private push(site: string): Promise<void> {
    const run = (this.pushing.get(site) ?? Promise.resolve()).then(async () => {
      const current = this.plans.get(site);
      if (!current) return;
      const { desired, version } = current;
      this.plans.sent(site);
      // a malformed answer is refused by the site link (src/wire/control.ts): the request fails
      const answer = await this.d.siteRequest(site, { type: "standbys", agents: desired }).catch((
        e,
      ) => ({ ok: false as const, error: (e as Error).message }));
      if (!answer.ok) {
        this.plans.failed(site, performance.now());
        const error = answer.error ?? "the site did not say why";
        this.reports.set(site, { report: pendingAll(desired, error), at: Date.now() });
        return;
      }
      const report: StandbyReport = answer.agents;
      this.reports.set(site, { report, at: Date.now() });
      const settled = Object.values(report).every((l) => l.every((x) => x.state !== "pending"));
      this.plans.acked(site, version, settled, performance.now());
    });
    this.pushing.set(site, run);
    return run;
  }

  /** Every task's assignment states: its LSP, and its RSP at each remote site. */
  status(): AssignmentState[] {
    const out = [...this.states.values()];
    for (const r of this.rsps) {
      const rep = this.reports.get(r.site);
      const mine = rep?.report[r.agent]?.find((x) => x.name === r.volume);
      out.push({
        task: r.task,
        kind: "rsp",
        site: r.site,
        agent: r.agent,
        volume: r.volume,
        state: mine?.state ?? "pending",
        ...(mine?.error ? { error: mine.error } : {}),
        since: rep?.at ?? 0,
      });
    }
    return out;
  }

  /** An agent connected: send it what the tasks ask of it (its report of what it remembers follows). */
  async onAgent(agent: string): Promise<void> {
    const { tasks, hosts, volumes } = await this.inventory();
    for (const t of tasks) {
      const a = this.active(t) ? lspAssignment(t, hosts, volumes) : undefined;
      if (!a || typeof a === "string" || a.agent !== agent || this.states.has(t.name)) continue;
      this.states.set(t.name, {
        task: t.name,
        kind: "lsp",
        agent,
        volume: a.volume.name,
        state: "pending",
        since: Date.now(),
      });
    }
    const want = desiredFor(agent, tasks, hosts, volumes, this.active);
    // a refusal is recorded in the task's assignment state (status) by assign()
    if (want.length) {
      await this.assign(agent, want).catch((e) => log.error("assignment failed", { agent, error: e }));
    }
  }

  /** An agent's answer to an order (assign, unassign), matched to the order by its id. */
  onAnswer(m: AgentAnswer): void {
    // a refused order fails now with the agent's reason: the task shows it (no wait for the timeout)
    if (m.type === "refused") this.requests.fail(m.id, new Error(`the agent refused the order: ${m.error}`));
    else this.requests.answer(m.id, m);
  }

  /** An agent connected and reports the assignments it remembers: withdraw what no task asks for. */
  onAssignments(agent: string, names: string[]): void {
    this.withdrawExtra(agent, names).catch((e) =>
      log.error("cannot reconcile an agent's assignments", { agent, error: e })
    );
  }

  private async withdrawExtra(agent: string, remembered: string[]): Promise<void> {
    const { tasks, hosts, volumes } = await this.inventory();
    const plan = reconcile(desiredFor(agent, tasks, hosts, volumes, this.active), remembered);
    for (const name of plan.unassign) {
      log.info("withdrawing a volume no task assigns any more", { agent, volume: name });
      await this.unassign(agent, name).catch((e) => log.warn("unassign failed", { agent, error: e }));
    }
  }

  /**
   * Assigns a task's copies: each remote site's RSP first (so the standby holds its copy before
   * the stream reaches the site), then the LSP to its agent; waits for the answers and throws
   * with the reason when a copy is refused. A site or agent away gets its part when it is back
   * (`connected` is false when the agent is away).
   */
  async start(task: Task): Promise<{ assignment: LspAssignment; connected: boolean }> {
    const a = await this.lsp(task);
    const state: AssignmentState = {
      task: task.name,
      kind: "lsp",
      agent: a.agent,
      volume: a.volume.name,
      state: "pending",
      since: Date.now(),
    };
    this.states.set(task.name, state);
    this.starting.add(task.name);
    const sites = task.group.remotes.map((r) => r.site);
    try {
      await this.standbysRefused(task, sites);
      const connected = await this.assign(a.agent, [a.volume]);
      if (connected) state.state = "assigned";
      await this.d.retire(a.agent, a.volume.name, false);
      return { assignment: a, connected };
    } catch (e) {
      state.state = "failed";
      state.error = (e as Error).message;
      state.atStart = true;
      log.error("assignment failed", {
        task: task.name,
        volume: `${a.agent}/${a.volume.name}`,
        error: state.error,
      });
      // the task stays configured: the standby copies assigned meanwhile are withdrawn
      this.starting.delete(task.name);
      await this.syncSites(sites);
      throw e;
    }
  }

  /**
   * Assigns a started task's copies again (the operator fixed what was refused): each site's
   * standby copy, then the LSP; throws with the reason when one is still refused.
   */
  async reassign(task: Task): Promise<void> {
    const a = await this.lsp(task);
    await this.standbysRefused(task, task.group.remotes.map((r) => r.site));
    const state = this.states.get(task.name);
    if (state) Object.assign(state, { state: "pending", error: undefined, since: Date.now() });
    await this.assign(a.agent, [a.volume]);
  }

  /** Sends the task's sites their desired copies now; throws when one refused the task's RSP. */
  private async standbysRefused(task: Task, sites: string[]): Promise<void> {
    const { hosts, volumes } = await this.hostsAndVolumes();
    const rsps = rspAssignments(task, hosts, volumes);
    if (typeof rsps === "string") throw new Error(rsps);
    await this.syncSites(sites);
    for (const r of rsps) {
      const mine = this.reports.get(r.site)?.report[r.agent]?.find((x) => x.name === r.volume.name);
      if (mine?.state === "failed") {
        throw new Error(
          `site ${r.site} cannot assign the standby copy (RSP): ${mine.error ?? "no reason given"}`,
        );
      }
    }
  }

  /** Reconciles now and waits for these sites' answers. */
  private async syncSites(sites: string[]): Promise<void> {
    await this.refresh();
    await Promise.all([...new Set(sites)].map((s) => this.push(s)));
  }

  /** The task is paused: its volume stays exported, the remote sites stop receiving it. */
  async pause(task: Task): Promise<void> {
    const a = await this.lsp(task);
    await this.d.retire(a.agent, a.volume.name, true);
  }

  async resume(task: Task): Promise<void> {
    const a = await this.lsp(task);
    await this.d.retire(a.agent, a.volume.name, false);
  }

  /**
   * The task is deleted: the remote sites stop receiving its volume, its agent stops exporting
   * it and each site's standby forgets its copy; every copy's data stays in place. An agent or
   * a site away now is told when it is back (the desired state no longer holds the volume).
   */
  async remove(task: Task): Promise<void> {
    this.states.delete(task.name);
    this.starting.delete(task.name);
    const sites = task.group.remotes.map((r) => r.site);
    // a task never started assigned nothing (its volume may be an agent's --volume, left alone)
    if (!assigned(task)) return;
    const { hosts, volumes } = await this.hostsAndVolumes();
    const a = lspAssignment(task, hosts, volumes);
    if (typeof a === "string") return;
    await this.d.retire(a.agent, a.volume.name, true);
    await this.unassign(a.agent, a.volume.name).catch((e) =>
      log.warn("the agent is told when it reconnects", { agent: a.agent, volume: a.volume.name, error: e })
    );
    await this.syncSites(sites);
  }

  private async lsp(task: Task): Promise<LspAssignment> {
    const { hosts, volumes } = await this.hostsAndVolumes();
    const a = lspAssignment(task, hosts, volumes);
    if (typeof a === "string") throw new Error(a);
    return a;
  }

  private async hostsAndVolumes(): Promise<{ hosts: Host[]; volumes: Volume[] }> {
    return { hosts: await this.d.store.listHosts(), volumes: await this.d.store.listVolumes() };
  }

  private async inventory(): Promise<{ tasks: Task[]; hosts: Host[]; volumes: Volume[] }> {
    return { tasks: await this.d.store.listTasks(), ...await this.hostsAndVolumes() };
  }

  /** Sends an order and waits for its answer; undefined when the agent is not connected. */
  private async ask(
    agent: string,
    msg: Unsent<Extract<AgentOrder, { id: number }>>,
  ): Promise<AgentAnswer | undefined> {
    let connected = true;
    const answer = this.requests.request(
      (id) => connected = this.d.send(agent, { ...msg, id }),
      this.timeout,
      () => new Error(`agent ${agent} did not answer ${msg.type} within ${this.timeout / 1000} s`),
    );
    return await answer.catch((e) => {
      if (!connected) return undefined;
      throw e;
    });
  }

  private get timeout(): number {
    return this.d.answerTimeoutMs ?? 30_000;
  }

  /** Assigns volumes to an agent; false when it is not connected. Throws with the agent's reasons. */
  private async assign(agent: string, volumes: Assignment[]): Promise<boolean> {
    const r = await this.ask(agent, { type: "assign", volumes });
    if (!r) return false;
    const results = r.type === "assigned" ? r.results : [];
    const failed = results.filter((x) => x.ok !== true);
    for (const s of this.states.values()) {
      if (s.agent !== agent) continue;
      const mine = results.find((x) => x.name === s.volume);
      if (!mine) continue;
      s.state = mine.ok === true ? "assigned" : "failed";
      s.error = mine.ok === true ? undefined : mine.error;
      s.since = Date.now();
    }
    if (failed.length) {
      throw new Error(
        failed.map((x) => `agent ${agent} cannot serve volume ${x.name}: ${x.error ?? "no reason given"}`)
          .join("; "),
      );
    }
    return true;
  }

  private async unassign(agent: string, name: string): Promise<void> {
    const r = await this.ask(agent, { type: "unassign", name });
    if (!r) throw new Error(`agent ${agent} is not connected`);
    if (r.type !== "unassigned" || !r.ok) {
      throw new Error(
        `agent ${agent} did not unassign ${name}: ${
          (r.type === "unassigned" ? r.error : undefined) ?? "no reason"
        }`,
      );
    }
  }
}

/** Every desired copy pending, with the reason (the site did not answer). */
function pendingAll(desired: Record<string, Assignment[]>, error: string): StandbyReport {
  return Object.fromEntries(
    Object.entries(desired).map((
      [agent, list],
    ) => [agent, list.map((a) => ({ name: a.name, state: "pending" as const, error }))]),
  );
}
