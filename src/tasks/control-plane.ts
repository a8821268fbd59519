// The local gateway's control plane: it turns the tasks into the agents' work. The task store is
// the source of truth; an agent started with only its identity learns its volumes from the
// orders sent over its authenticated link:
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
// Each remote center's RSP is assigned through that site's link before the LSP (so the standby
// holds its copy before the stream reaches the site): {type: "assign-standby", agent, volumes}
// and, on deletion, {type: "unassign-standby", agent, name}; the remote gateway relays them to the
// standby agent of the protected agent (same agent id, the copy under the LSP volume's name).
import { logger } from "../log.ts";
import type { Assignment } from "../capture/assignments.ts";
import type { Host, Task, Volume } from "./model.ts";
import type { TaskStore } from "./store.ts";

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
export function desiredFor(agent: string, tasks: Task[], hosts: Host[], volumes: Volume[]): Assignment[] {
  const out: Assignment[] = [];
  for (const t of tasks) {
    if (!assigned(t)) continue;
    const a = lspAssignment(t, hosts, volumes);
    if (typeof a !== "string" && a.agent === agent) out.push(a.volume);
  }
  return out;
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

/** The state of one task's assignment, for status and errors. */
export interface AssignmentState {
  task: string;
  agent: string;
  volume: string;
  state: "pending" | "assigned" | "failed";
  error?: string;
  since: number;
}

export interface ControlPlaneDeps {
  store: TaskStore;
  /** Sends a control message to a connected agent; false when it is not connected. */
  send: (agent: string, msg: Record<string, unknown>) => boolean;
  /** Stops (true) or resumes (false) sending a volume (AGENT/NAME) to the remote sites. */
  retire: (agent: string, name: string, retired: boolean) => Promise<void>;
  /** A control request to a remote site (its answer); rejects when the site is not connected. */
  siteRequest: (site: string, msg: Record<string, unknown>) => Promise<Answer>;
  answerTimeoutMs?: number;
}

type Answer = Record<string, unknown>;

export class ControlPlane {
  private answers = new Map<number, (m: Answer) => void>();
  private nextId = 1;
  private states = new Map<string, AssignmentState>();

  constructor(private readonly d: ControlPlaneDeps) {}

  /** Every task's assignment state (status, and the reason a start was refused). */
  status(): AssignmentState[] {
    return [...this.states.values()];
  }

  /** An agent connected: send it what the tasks ask of it (its report of what it remembers follows). */
  async onAgent(agent: string): Promise<void> {
    const { tasks, hosts, volumes } = await this.inventory();
    for (const t of tasks) {
      const a = assigned(t) ? lspAssignment(t, hosts, volumes) : undefined;
      if (!a || typeof a === "string" || a.agent !== agent || this.states.has(t.name)) continue;
      this.states.set(t.name, {
        task: t.name,
        agent,
        volume: a.volume.name,
        state: "pending",
        since: Date.now(),
      });
    }
    const want = desiredFor(agent, tasks, hosts, volumes);
    // a refusal is recorded in the task's assignment state (status) by assign()
    if (want.length) {
      await this.assign(agent, want).catch((e) => log.error("assignment failed", { agent, error: e }));
    }
  }

  /** A control message from an agent: answers to orders, and its report after connecting. */
  onControl(agent: string, msg: unknown): void {
    const m = msg as Answer;
    if (m?.type === "assigned" || m?.type === "unassigned") {
      const done = this.answers.get(Number(m.id));
      this.answers.delete(Number(m.id));
      done?.(m);
    } else if (m?.type === "assignments" && Array.isArray(m.names)) {
      const names = m.names.filter((n): n is string => typeof n === "string");
      this.withdrawExtra(agent, names).catch((e) =>
        log.error("cannot reconcile an agent's assignments", { agent, error: e })
      );
    }
  }

  private async withdrawExtra(agent: string, remembered: string[]): Promise<void> {
    const { tasks, hosts, volumes } = await this.inventory();
    const plan = reconcile(desiredFor(agent, tasks, hosts, volumes), remembered);
    for (const name of plan.unassign) {
      log.info("withdrawing a volume no task assigns any more", { agent, volume: name });
      await this.unassign(agent, name).catch((e) => log.warn("unassign failed", { agent, error: e }));
    }
  }

  /**
   * Assigns a task's LSP to its agent and waits for the answer; throws with the agent's reason
   * when it cannot serve it. `connected` is false when the agent is away: it gets the
   * assignment when it connects.
   */
  async start(task: Task): Promise<{ assignment: LspAssignment; connected: boolean }> {
    const a = await this.lsp(task);
    const key = `${a.agent}/${a.volume.name}`;
    const state: AssignmentState = {
      task: task.name,
      agent: a.agent,
      volume: a.volume.name,
      state: "pending",
      since: Date.now(),
    };
    this.states.set(task.name, state);
    try {
      await this.assignStandbys(task);
      const connected = await this.assign(a.agent, [a.volume]);
      if (connected) state.state = "assigned";
      await this.d.retire(a.agent, a.volume.name, false);
      return { assignment: a, connected };
    } catch (e) {
      state.state = "failed";
      state.error = (e as Error).message;
      log.error("assignment failed", { task: task.name, volume: key, error: state.error });
      // the task stays configured: its standby copies (those assigned) are not kept either
      await this.unassignStandbys(task);
      throw e;
    }
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
   * The task is deleted: the remote sites stop receiving its volume and its agent stops
   * exporting it; every copy's data stays in place. An agent away now is told when it
   * reconnects (it reports the assignment, no task asks for it).
   */
  async remove(task: Task): Promise<void> {
    this.states.delete(task.name);
    // a task never started assigned nothing (its volume may be an agent's --volume, left alone)
    if (!assigned(task)) return;
    const { hosts, volumes } = await this.hostsAndVolumes();
    const a = lspAssignment(task, hosts, volumes);
    if (typeof a === "string") return;
    await this.d.retire(a.agent, a.volume.name, true);
    await this.unassign(a.agent, a.volume.name).catch((e) =>
      log.warn("the agent is told when it reconnects", { agent: a.agent, volume: a.volume.name, error: e })
    );
    await this.unassignStandbys(task);
  }

  /** Unassigns the task's RSPs at every remote center (best effort: a refusal is logged). */
  private async unassignStandbys(task: Task): Promise<void> {
    const { hosts, volumes } = await this.hostsAndVolumes();
    const rsps = rspAssignments(task, hosts, volumes);
    for (const r of typeof rsps === "string" ? [] : rsps) {
      const msg = { type: "unassign-standby", agent: r.agent, name: r.volume.name };
      const answer = await this.d.siteRequest(r.site, msg).catch((e) => ({
        ok: false,
        error: (e as Error).message,
      }));
      if (answer.ok !== true) {
        // the site no longer feeds it either way; the standby keeps remembering the copy until told
        log.warn("the standby copy stays assigned", {
          site: r.site,
          agent: r.agent,
          volume: r.volume.name,
          error: answer.error,
        });
      }
    }
  }

  /**
   * Assigns the task's RSPs at every remote center; throws with the site's reason when one
   * cannot (site or standby agent not connected, device missing or of another size).
   */
  private async assignStandbys(task: Task): Promise<void> {
    const { hosts, volumes } = await this.hostsAndVolumes();
    const rsps = rspAssignments(task, hosts, volumes);
    if (typeof rsps === "string") throw new Error(rsps);
    for (const r of rsps) {
      const msg = { type: "assign-standby", agent: r.agent, volumes: [r.volume] };
      const answer = await this.d.siteRequest(r.site, msg).catch((e) => ({
        ok: false,
        error: (e as Error).message,
      }));
      if (answer.ok !== true) {
        throw new Error(
          `site ${r.site} cannot assign the standby copy (RSP): ${answer.error ?? "no reason given"}`,
        );
      }
    }
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
  private async ask(agent: string, msg: Answer): Promise<Answer | undefined> {
    const id = this.nextId++;
    if (!this.d.send(agent, { ...msg, id })) return undefined;
    // the answer comes in a later frame: waiting starts in time after the (synchronous) send
    return await new Promise<Answer>((resolve, reject) => {
      const t = setTimeout(() => {
        this.answers.delete(id);
        reject(new Error(`agent ${agent} did not answer ${msg.type} within ${this.timeout / 1000} s`));
      }, this.timeout);
      this.answers.set(id, (m) => {
        clearTimeout(t);
        resolve(m);
      });
    });
  }

  private get timeout(): number {
    return this.d.answerTimeoutMs ?? 30_000;
  }

  /** Assigns volumes to an agent; false when it is not connected. Throws with the agent's reasons. */
  private async assign(agent: string, volumes: Assignment[]): Promise<boolean> {
    const r = await this.ask(agent, { type: "assign", volumes });
    if (!r) return false;
    const results = Array.isArray(r.results)
      ? r.results as { name?: string; ok?: boolean; error?: string }[]
      : [];
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
        failed.map((x) =>
          `agent ${agent} cannot serve volume ${x.name ?? "?"}: ${x.error ?? "no reason given"}`
        )
          .join("; "),
      );
    }
    return true;
  }

  private async unassign(agent: string, name: string): Promise<void> {
    const r = await this.ask(agent, { type: "unassign", name });
    if (!r) throw new Error(`agent ${agent} is not connected`);
    if (r.ok !== true) throw new Error(`agent ${agent} did not unassign ${name}: ${r.error ?? "no reason"}`);
  }
}
