// The service switch: on FAILURE of a protected service's server (never on
// SUSPECT alone) the chosen remote site promotes its standby, then a DNAT rule
// sends the service's traffic there; the old primary is fenced (read-only) so
// the two sites never both accept writes. `failback` removes the rule. The
// recorded state (services table) is what the rules are reconciled to at start,
// and it is written before the rules change, so a crash never leaves a rule the
// state does not name.
import { eq } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { fences, services } from "../db/schema.ts";
import type { Targets } from "../tasks/model.ts";
import type { Audit } from "../audit/audit.ts";
import { logger } from "../log.ts";
import { applySwitches, type SwitchOptions } from "../switch/iptables.ts";
import { reconcile } from "../switch/reconcile.ts";
import { type Switch, validateSwitch } from "../switch/rules.ts";

const log = logger("failover");

export interface ServiceConfig {
  name: string;
  /** The agent whose server runs the service. */
  agent: string;
  protocol: "tcp" | "udp";
  /** The service address clients use (held by this gateway). */
  service: { address: string; port: number };
  /** The remote site that takes over, and where its backup server answers. */
  site: string;
  target: { address: string; port: number };
  /** QoS targets given with the service (td, tmr, tm, rto, rpo), as a task's. */
  targets?: Targets;
}

export type ServiceState = "protected" | "failing-over" | "failed-over";

export interface ControllerOptions {
  db: Db;
  audit: Audit;
  services: ServiceConfig[];
  /** Asks the site to promote its standby of the agent; resolves once its service is healthy there. */
  promote: (site: string, agent: string, point?: number | string) => Promise<void>;
  /** No service of the agent runs at the site any more (failback): its failover there is over. */
  failedBack?: (site: string, agent: string) => Promise<void>;
  /** Makes the agent's volumes read-only (told now if connected, and at every connection). */
  fence: (agent: string, reason: string) => void;
  unfence: (agent: string) => void;
  /** Why the agent's side is not healthy (not trusted, or its service failing), or undefined when it is. */
  unhealthy: (agent: string) => string | undefined;
  switchOptions?: SwitchOptions;
  /** Whether the DNAT rules are managed at all (tests without root turn it off). */
  manageRules: boolean;
}

interface Entry {
  config: ServiceConfig;
  state: ServiceState;
  rule: Switch | null;
  since: number;
}

export class FailoverController {
  private entries = new Map<string, Entry>();
  private fenced = new Map<string, string>();
  private busy = new Set<string>();
  /** A data failback's current phase, per service. */
  private phases = new Map<string, string>();
  /** Stopped: a failed automatic failover is no longer tried again. */
  private closed = false;
  /** Automatic failovers that failed, waiting for their next attempt. */
  private retries = new Map<string, { timer: ReturnType<typeof setTimeout>; attempt: number }>();

  constructor(private readonly o: ControllerOptions) {}

  /** Loads the recorded state and makes the rules match it exactly. */
  async start(): Promise<void> {
    const rows = new Map((await this.o.db.select().from(services)).map((r) => [r.name, r]));
    for (const c of this.o.services) {
      const row = rows.get(c.name);
      const rule = row?.rule ? validateSwitch(JSON.parse(row.rule)) : null;
      this.entries.set(c.name, {
        config: c,
        state: (row?.state as ServiceState) ?? "protected",
        rule,
        since: row?.updatedAt ?? Date.now(),
      });
    }
    for (const f of await this.o.db.select().from(fences)) this.fenced.set(f.agent, f.reason);
    for (const [agent, reason] of this.fenced) this.o.fence(agent, reason);
    if (this.o.manageRules) {
      const summary = await reconcile(this.desired(), this.o.switchOptions);
      if (summary.added.length || summary.removed.length) {
        await this.o.audit.record({
          subject: "switch",
          kind: "reconcile",
          cause: "rules made to match the recorded state at start",
          detail: { added: summary.added, removed: summary.removed },
        });
      }
    }
    // a switch interrupted by a crash: its rule is in place only if the promotion had completed
    for (const e of this.entries.values()) {
      if (e.state === "failing-over") {
        log.warn(
          "a failover was interrupted by a restart; run failover again or fail back (--auto-failover resumes it)",
          {
            service: e.config.name,
          },
        );
      }
    }
  }

  private desired(): Switch[] {
    return [...this.entries.values()].flatMap((e) => e.rule ? [e.rule] : []);
  }

  /** Whether a service of the agent runs at the site, or is moving there. */
  away(agent: string, site: string): boolean {
    return [...this.entries.values()].some((e) =>
      e.config.agent === agent && e.config.site === site && e.state !== "protected"
    );
  }

  /** Services whose server is this agent. */
  servicesOf(agent: string): string[] {
    return [...this.entries.values()].filter((e) => e.config.agent === agent).map((e) => e.config.name);
  }

  /** A service's agent, site and whether it runs at the site now. */
  describe(name: string): { agent: string; site: string; failedOver: boolean } | undefined {
    const e = this.entries.get(name);
    return e && { agent: e.config.agent, site: e.config.site, failedOver: e.state === "failed-over" };
  }

  setPhase(name: string, phase: string | undefined): void {
    if (phase) this.phases.set(name, phase);
    else this.phases.delete(name);
  }

  isFenced(agent: string): string | undefined {
    return this.fenced.get(agent);
  }

  private async persist(e: Entry): Promise<void> {
    const row = {
      state: e.state,
      site: e.state === "protected" ? null : e.config.site,
      rule: e.rule ? JSON.stringify(e.rule) : null,
    };
    e.since = Date.now();
    await serialized(
      this.o.db,
      () =>
        this.o.db.insert(services).values({ name: e.config.name, ...row, updatedAt: e.since })
          .onConflictDoUpdate({ target: services.name, set: { ...row, updatedAt: e.since } }),
    );
  }

  private async setFence(agent: string, reason: string | undefined): Promise<void> {
    if (reason) {
      this.fenced.set(agent, reason);
      await serialized(
        this.o.db,
        () =>
          this.o.db.insert(fences).values({ agent, reason, since: Date.now() }).onConflictDoUpdate({
            target: fences.agent,
            set: { reason },
          }),
      );
      this.o.fence(agent, reason);
    } else {
      this.fenced.delete(agent);
      await serialized(this.o.db, () => this.o.db.delete(fences).where(eq(fences.agent, agent)));
      this.o.unfence(agent);
    }
  }

  /** Moves a service to its remote site: promote, fence the old primary, then redirect traffic. */
  async failover(
    name: string,
    cause: string,
    detail: Record<string, unknown> = {},
    point?: number | string,
  ): Promise<void> {
    const e = this.entries.get(name);
    if (!e) throw new Error(`no protected service "${name}"`);
    if (e.state === "failed-over") return;
    if (this.busy.has(name)) return;
    this.busy.add(name);
    const started = performance.now();
    try {
      const c = e.config;
      await this.o.audit.record({
        subject: `service:${name}`,
        kind: "switch",
        from: e.state,
        to: "failing-over",
        cause,
        detail,
      });
      e.state = "failing-over";
      await this.persist(e);
      // the old primary must not take writes from now on, whatever happens next
      await this.setFence(c.agent, `service ${name} failed over to ${c.site}`);
      await this.o.promote(c.site, c.agent, point);
      const rule: Switch = { id: name, protocol: c.protocol, service: c.service, target: c.target };
      validateSwitch(rule);
      e.rule = rule;
      e.state = "failed-over";
      await this.persist(e); // recorded before the rule exists: a crash now is repaired at start
      if (this.o.manageRules) await applySwitches(this.desired(), this.o.switchOptions);
      await this.o.audit.record({
        subject: `service:${name}`,
        kind: "switch",
        from: "failing-over",
        to: "failed-over",
        cause:
          `traffic for ${c.service.address}:${c.service.port} goes to ${c.site} (${c.target.address}:${c.target.port})`,
        detail: { tookMs: Math.round(performance.now() - started) },
      });
    } catch (err) {
      await this.o.audit.record({
        subject: `service:${name}`,
        kind: "switch",
        from: "failing-over",
        to: e.state,
        cause: `failover failed: ${(err as Error).message}`,
      });
      throw err;
    } finally {
      this.busy.delete(name);
    }
  }

  /**
   * An automatic failover (the detector's FAILURE). One that fails (the site's link lost, its
   * standby not yet healthy) is tried again after a growing pause (1 s, doubling, at most 30 s)
   * for as long as the service is still failing over: the old primary is fenced from the first
   * attempt on, so the service is down until one succeeds or the operator fails back.
   */
  failoverAutomatically(name: string, cause: string, detail: Record<string, unknown> = {}): void {
    const attempt = (this.retries.get(name)?.attempt ?? 0) + 1;
    this.retries.delete(name);
    this.failover(name, cause, { ...detail, ...(attempt > 1 ? { attempt } : {}) }).catch((err) => {
      const e = this.entries.get(name);
      if (e?.state !== "failing-over" || this.closed) return;
      const delayMs = Math.min(30_000, 1000 * 2 ** (attempt - 1));
      log.error("automatic failover failed; trying again", {
        service: name,
        attempt,
        inMs: delayMs,
        error: err,
      });
      const timer = setTimeout(() => {
        if (this.entries.get(name)?.state === "failing-over") this.failoverAutomatically(name, cause, detail);
        else this.retries.delete(name);
      }, delayMs);
      this.retries.set(name, { timer, attempt });
    });
  }

  /**
   * Failovers that a restart interrupted are tried again (with --auto-failover): their old
   * primary is fenced already, so nothing serves until one completes.
   */
  resumeInterrupted(): void {
    for (const e of this.entries.values()) {
      if (e.state === "failing-over") {
        this.failoverAutomatically(e.config.name, "a failover interrupted by a restart");
      }
    }
  }

  /** Stops the pending retries (the process is stopping). */
  close(): void {
    this.closed = true;
    for (const r of this.retries.values()) clearTimeout(r.timer);
    this.retries.clear();
  }

  /** Fences an agent (a recovery rebuilds its volumes; nobody may write them meanwhile). */
  async fence(agent: string, reason: string): Promise<void> {
    await this.setFence(agent, reason);
    await this.o.audit.record({
      subject: `agent:${agent}`,
      kind: "fence",
      from: "writable",
      to: "fenced",
      cause: reason,
    });
  }

  /** Lifts the fence of an agent once recovery made its volumes current again. */
  async unfence(agent: string, cause: string): Promise<void> {
    if (!this.fenced.has(agent)) return;
    await this.setFence(agent, undefined);
    await this.o.audit.record({
      subject: `agent:${agent}`,
      kind: "fence",
      from: "fenced",
      to: "writable",
      cause,
    });
  }

  /** Sends traffic back to the local service; the old primary stays read-only until recovery. */
  async failback(name: string, cause = "operator"): Promise<void> {
    const e = this.entries.get(name);
    if (!e) throw new Error(`no protected service "${name}"`);
    if (e.state === "protected" && !e.rule) return;
    if (this.busy.has(name)) throw new Error(`service ${name} is being switched; try again`);
    const why = this.o.unhealthy(e.config.agent);
    if (why) throw new Error(`the local side of ${name} is not healthy yet (${why}); fail back once it is`);
    this.busy.add(name);
    const from = e.state;
    try {
      e.rule = null;
      e.state = "protected";
      await this.persist(e); // recorded first: a crash before the rule is gone is repaired at start
      if (this.o.manageRules) await applySwitches(this.desired(), this.o.switchOptions);
    } finally {
      this.busy.delete(name);
    }
    const { agent, site } = e.config;
    if (!this.away(agent, site)) {
      // traffic moved already: a failure here leaves a stale map, dropped at the next start
      await this.o.failedBack?.(site, agent).catch((err) =>
        log.error("the end of a failover was not recorded", { service: name, error: err })
      );
    }
    // the old primary stays fenced until recovery brings its data back (unfence)
    await this.o.audit.record({
      subject: `service:${name}`,
      kind: "switch",
      from,
      to: "protected",
      cause:
        `failback (${cause}): traffic for ${e.config.service.address}:${e.config.service.port} goes to the local server again`,
    });
  }

  status() {
    return [...this.entries.values()].map((e) => ({
      name: e.config.name,
      agent: e.config.agent,
      // failed-over is recorded before the rule is applied (crash repair), but the API must not
      // announce the switch until traffic really moved: while it is applied it is still failing-over
      // (found by the fault runner, tests/faults/; regression: tests/unit-failover-state.test.ts)
      state: this.busy.has(e.config.name) && e.state === "failed-over" ? "failing-over" : e.state,
      site: e.config.site,
      service: `${e.config.service.address}:${e.config.service.port}`,
      target: `${e.config.target.address}:${e.config.target.port}`,
      rule: e.rule !== null,
      since: e.since,
      fenced: this.fenced.get(e.config.agent) ?? null,
      failback: this.phases.get(e.config.name) ?? null,
    }));
  }
}
