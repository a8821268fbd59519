// The local gateway's discovery: what it can see by itself enters the inventory, marked
// discovered, with when it was last seen.
//   sites    its own (--id) and every --remote site (seen while its link is up);
//   hosts    its own gateway, each remote gateway, the server of every agent that connects
//            here and of every standby agent its remote sites know (seen while connected);
//   devices  its journal and mirrors, each remote site's journal and replicas, and what every
//            agent and standby agent reports it may serve (its --device-prefix directories).
// Agents report their devices in a control message (src/capture/devices.ts); each remote site
// is asked for its inventory (site-inventory.ts) every few seconds while linked. Every refresh
// turns the observation into inventory changes (discovery-plan.ts, applied by the store). The
// discovery also proposes groups for new tasks (proposal.ts) with the gateways' real paths.
import { resolve } from "node:path";
import { logger } from "../log.ts";
import type { DeviceInfo } from "../capture/devices.ts";
import type { Group, PartitionRef, Volume } from "./model.ts";
import type { TaskStore } from "./store.ts";
import { deviceName, gatewayHostOf, type Observation, type ObservedHost } from "./discovery-plan.ts";
import { type GatewayView, type Proposal, propose } from "./proposal.ts";
import type { SiteInventory } from "./site-inventory.ts";
import type { SiteRequester } from "../wire/control.ts";

const log = logger("discovery");

export interface DiscoveryDeps {
  store: TaskStore;
  /** This gateway's site (--id). */
  site: string;
  journal: DeviceInfo;
  /** The mirror images the gateway holds now. */
  mirrors: () => (DeviceInfo & { agent: string; name: string })[];
  /** Where the gateway keeps its mirror of AGENT/NAME. */
  mirrorPath: (agent: string, name: string) => string;
  /** The agents connected now. */
  agents: () => string[];
  /** The --remote sites and whether their links are up. */
  remotes: () => { site: string; connected: boolean }[];
  /** A request to a remote site (its answer). */
  siteRequest: SiteRequester;
  refreshMs?: number;
  /** How often a linked remote site is asked for its inventory. */
  siteEveryMs?: number;
}

interface SiteState {
  inventory?: SiteInventory;
  /** When it was last asked (performance.now()). */
  askedAt: number;
  /** Wall clock of the answer. */
  at?: number;
  error?: string;
}

export class Discovery {
  /** Each local agent's last device report, and when it came (monotonic). */
  private reports = new Map<string, { devices: DeviceInfo[]; at: number }>();
  private sites = new Map<string, SiteState>();
  private conflicts: string[] = [];
  private timer: ReturnType<typeof setInterval> | undefined;
  private running: Promise<void> | undefined;
  private closed = false;

  constructor(private readonly d: DiscoveryDeps) {}

  run(): void {
    this.timer ??= setInterval(() => void this.refresh(), this.d.refreshMs ?? 2000);
    void this.refresh();
  }

  /** Stops refreshing; resolves once a refresh in flight is done (the database closes after). */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** A local agent's device report (its `devices` control message). */
  onDevices(agent: string, devices: DeviceInfo[]): void {
    this.reports.set(agent, { devices, at: performance.now() });
    void this.refresh();
  }

  /** Observes and updates the inventory (one run at a time: a call meanwhile waits for it). */
  refresh(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.running ??= this.refreshOnce().catch((e) => log.warn("discovery failed", { error: e }))
      .finally(() => this.running = undefined);
    return this.running;
  }

  private async refreshOnce(): Promise<void> {
    await this.askSites();
    const conflicts = await this.d.store.applyDiscovery(this.observe());
    for (const c of conflicts) {
      if (!this.conflicts.includes(c)) log.warn("discovery conflict", { conflict: c });
    }
    this.conflicts = conflicts;
  }

  /** Asks every linked remote site whose inventory is due. */
  private async askSites(): Promise<void> {
    const now = performance.now();
    await Promise.all(
      this.d.remotes().map(async ({ site, connected }) => {
        const s = this.sites.get(site) ?? { askedAt: -Infinity };
        this.sites.set(site, s);
        if (!connected || now - s.askedAt < (this.d.siteEveryMs ?? 5000)) return;
        s.askedAt = now;
        try {
          // a malformed answer is refused by the site link (src/wire/control.ts): the request fails
          const a = await this.d.siteRequest(site, { type: "inventory" }, 5000);
          if (!a.ok) throw new Error(`site ${site}: ${a.error ?? "no inventory given"}`);
          const inventory: SiteInventory = {
            site: a.site,
            journal: a.journal,
            replicaDir: a.replicaDir,
            replicas: a.replicas,
            agents: a.agents,
          };
          Object.assign(s, { inventory, at: Date.now(), error: undefined });
        } catch (e) {
          s.error = (e as Error).message;
        }
      }),
    );
  }

  /** What the gateway sees now. */
  observe(): Observation {
    const connected = new Set(this.d.agents());
    const remotes = this.d.remotes();
    const hosts: ObservedHost[] = [{
      site: this.d.site,
      role: "gateway",
      seen: true,
      devices: [
        { path: resolve(this.d.journal.path), size: this.d.journal.size, name: `${this.d.site}-journal` },
        ...this.d.mirrors().map((m) => ({ path: resolve(m.path), size: m.size, name: `${m.name}-lgp` })),
      ],
    }];
    for (const agent of new Set([...connected, ...this.reports.keys()])) {
      hosts.push({
        site: this.d.site,
        role: "application",
        agent,
        seen: connected.has(agent),
        devices: (this.reports.get(agent)?.devices ?? []).map((d) => ({ ...d, name: deviceName(d.path) })),
      });
    }
    for (const r of remotes) {
      const inv = this.sites.get(r.site)?.inventory;
      if (!inv) continue;
      hosts.push({
        site: r.site,
        role: "gateway",
        seen: r.connected,
        devices: [
          { ...inv.journal, name: `${r.site}-journal` },
          ...inv.replicas.map((x) => ({ path: x.path, size: x.size, name: `${x.name}-rgp-${r.site}` })),
        ],
      });
      for (const a of inv.agents) {
        hosts.push({
          site: r.site,
          role: "application",
          agent: a.agent,
          seen: r.connected && a.connected,
          devices: a.devices.map((d) => ({ ...d, name: `${deviceName(d.path)}-rsp-${r.site}` })),
        });
      }
    }
    return {
      sites: [
        { name: this.d.site, role: "local", seen: true },
        ...remotes.map((r) => ({ name: r.site, role: "remote" as const, seen: r.connected })),
      ],
      hosts,
    };
  }

  /**
   * The gateways as the proposals see them: their hosts in the inventory and their paths (this
   * gateway's only for its own site: another local center's gateway is not known here).
   */
  private async gateways(
    site: string,
    remotes?: string[],
  ): Promise<{ local: GatewayView; remotes: GatewayView[] }> {
    const hosts = await this.d.store.listHosts();
    const local: GatewayView = site !== this.d.site ? { site } : {
      site,
      host: gatewayHostOf(hosts, site),
      journal: resolve(this.d.journal.path),
      copyPath: (agent, name) => resolve(this.d.mirrorPath(agent, name)),
    };
    const known = this.d.remotes().map((r) => r.site);
    return {
      local,
      remotes: (remotes ?? known).map((site) => {
        const inv = this.sites.get(site)?.inventory;
        return {
          site,
          host: inv ? gatewayHostOf(hosts, site) : undefined,
          copyPath: inv
            ? (agent: string, name: string) => `${inv.replicaDir}/${agent}/${name}.img`
            : undefined,
        };
      }),
    };
  }

  /**
   * A proposed group: at local center `local` (else this gateway's), for `lsp` (else the only
   * free one), at `remotes` (else every --remote site).
   */
  async propose(o: { local?: string; lsp?: PartitionRef; remotes?: string[] } = {}): Promise<Proposal> {
    const g = await this.gateways(o.local ?? this.d.site, o.remotes);
    return propose({
      sites: await this.d.store.listSites(),
      hosts: await this.d.store.listHosts(),
      volumes: await this.d.store.listVolumes(),
      tasks: await this.d.store.listTasks(),
    }, { ...g, lsp: o.lsp });
  }

  /** The gateways' copies a group names that are not registered yet: the task registers them. */
  async adoptable(group: Group): Promise<Volume[]> {
    if (group.local.site !== this.d.site) return [];
    const p = await this.propose({
      local: group.local.site,
      lsp: group.local.lsp,
      remotes: group.remotes.map((r) => r.site),
    });
    const refs = [group.local.lgp, ...group.remotes.map((r) => r.rgp)];
    return p.adopt.filter((v) => refs.some((r) => r.host === v.host && r.device === v.device));
  }

  /** What the discovery knows, for the API: each remote site's last answer, and the agents' reports. */
  status() {
    const now = performance.now();
    return {
      site: this.d.site,
      remotes: this.d.remotes().map((r) => {
        const s = this.sites.get(r.site);
        return {
          site: r.site,
          connected: r.connected,
          answeredAt: s?.at ?? null,
          error: s?.error ?? null,
          standbyAgents: (s?.inventory?.agents ?? []).map((a) => ({
            agent: a.agent,
            connected: r.connected && a.connected,
            // as old as the site's answer, plus how long before it the agent was last connected
            seenMsAgo: Math.round(a.agoMs + now - s!.askedAt),
            devices: a.devices,
          })),
        };
      }),
      agents: [...this.reports].map(([agent, r]) => ({
        agent,
        connected: this.d.agents().includes(agent),
        reportedMsAgo: Math.round(now - r.at),
        devices: r.devices,
      })),
      conflicts: this.conflicts,
    };
  }
}
