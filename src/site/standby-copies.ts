// The standby copies (RSP) each standby agent of this site must hold. The local sites' control
// planes send their whole desired state (`standbys`, on every (re)connection and change); this
// site reconciles each standby agent with it whenever it changes and whenever the agent
// connects (it then reports the copies it remembers): missing copies are assigned (and fed),
// copies no local site asks for are unassigned (and no longer fed), the agent's data left in
// place. A promoted standby serves the service: its copies are left as they are until its
// demotion.
import type { Assignment } from "../capture/assignments.ts";
import { logger } from "../log.ts";
import { reconcile } from "../tasks/control-plane.ts";
import type { SiteAnswerBody } from "../wire/control.ts";
import type { SiteContext } from "./context.ts";
import type { StandbyLink } from "./standby-link.ts";

const log = logger("remote-gateway");

/** Where a desired standby copy stands. */
type CopyAssignState = "pending" | "assigned" | "failed";
type CopyState = { state: CopyAssignState; error?: string };

export interface StandbyCopiesOptions extends SiteContext {
  link: StandbyLink;
  /** The local sites allowed to stream here: a copy is withdrawn only once each said what it wants. */
  localSites: string[];
}

export class StandbyCopies {
  /** Each local site's desired copies, per standby agent. */
  private readonly plans = new Map<string, Map<string, Assignment[]>>();
  private readonly states = new Map<string, Map<string, CopyState>>();
  private readonly reconciling = new Map<string, Promise<void>>();

  constructor(private readonly o: StandbyCopiesOptions) {
    // a standby agent connected and says what it remembers: reconcile it
    o.link.onReport((agent) => void this.reconcile(agent));
  }

  /** A local site's desired standby copies: reconciled now, answered with each copy's state. */
  async wanted(from: string, wanted: Record<string, Assignment[]>): Promise<SiteAnswerBody<"standbys">> {
    const plan = new Map(Object.entries(wanted));
    // connected standbys too: what they remember may be no task's any more
    const touched = new Set([
      ...(this.plans.get(from)?.keys() ?? []),
      ...plan.keys(),
      ...this.o.link.connectedAgents().filter((a) => this.o.link.remembered(a)),
    ]);
    const before = new Map([...touched].map((a) => [a, JSON.stringify(this.desired(a))]));
    const first = !this.plans.has(from);
    this.plans.set(from, plan);
    // the same state again (the local site refreshing its status) costs no order
    const todo = [...touched].filter((a) =>
      first || before.get(a) !== JSON.stringify(this.desired(a)) || !this.states.has(a) ||
      [...this.states.get(a)!.values()].some((x) => x.state !== "assigned") || !this.o.link.connected(a)
    );
    await Promise.all(todo.map((a) => this.reconcile(a)));
    const out: Record<string, ({ name: string } & CopyState)[]> = {};
    for (const [agent, list] of plan) {
      out[agent] = list.map((a) => ({
        name: a.name,
        ...(this.states.get(agent)?.get(a.name) ?? { state: "pending" }),
      }));
    }
    return { ok: true, agents: out };
  }

  /** Reconciles one standby agent (one run at a time per agent, each after the previous). */
  reconcile(agent: string): Promise<void> {
    const run = (this.reconciling.get(agent) ?? Promise.resolve()).then(() => this.once(agent)).catch((e) =>
      log.error("cannot reconcile a standby agent's copies", { agent, error: e })
    );
    this.reconciling.set(agent, run);
    return run;
  }

  private desired(agent: string): Assignment[] {
    const out = new Map<string, Assignment>();
    for (const p of this.plans.values()) for (const a of p.get(agent) ?? []) out.set(a.name, a);
    return [...out.values()];
  }

  private async once(agent: string): Promise<void> {
    const { link, feeders, site } = this.o;
    const promoted = this.o.replicas.promoted;
    const desired = this.desired(agent);
    const states = new Map<string, CopyState>();
    const mem = link.remembered(agent);
    if (!mem || !link.connected(agent) || promoted.has(agent)) {
      const error = promoted.has(agent)
        ? `standby agent ${agent} is promoted at site ${site}: it serves the service`
        : `standby agent ${agent} is not connected to site ${site}`;
      for (const a of desired) states.set(a.name, { state: "pending", error });
      this.states.set(agent, states);
      return;
    }
    // a copy is withdrawn only once every local site said what it wants (after a restart here)
    const everyone = this.o.localSites.every((s) => this.plans.has(s));
    for (const name of everyone ? reconcile(desired, [...mem]).unassign : []) {
      await feeders.feed(agent, name, true);
      const r = await link.ask(agent, { type: "unassign", name });
      if (r.ok === true) link.remembered(agent)?.delete(name);
      else {
        // a copy the standby keeps (its --volume) is fed as before
        await feeders.feed(agent, name, false);
        log.warn("the standby keeps a copy no task asks for", { agent, volume: name, error: r.error });
      }
    }
    if (desired.length) {
      for (const a of desired) await feeders.feed(agent, a.name, false);
      const r = await link.ask(agent, { type: "assign", volumes: desired });
      for (const a of desired) {
        const x = (r.results ?? []).find((y) => y.name === a.name);
        if (x?.ok === true) {
          link.remembered(agent)?.add(a.name);
          states.set(a.name, { state: "assigned" });
        } else {
          // what the standby does not hold must not be fed to it
          await feeders.feed(agent, a.name, true);
          const error = x?.error ?? r.error ?? "no answer";
          states.set(a.name, {
            state: x ? "failed" : "pending",
            error: x ? `standby agent ${agent} cannot hold ${a.name}: ${error}` : error,
          });
        }
      }
    }
    this.states.set(agent, states);
  }
}
