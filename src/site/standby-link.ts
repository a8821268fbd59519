// The remote gateway's link to this site's standby agents (src/link/gateway-listener.ts): the
// stream goes to the feeders (src/site/standby-feeders.ts); the control messages of the standby
// link (src/wire/control.ts) are handled here: orders sent and their answers matched by id
// (bounded by a timeout; a refused order fails at once with the agent's reason), the devices
// each agent reports (for the local sites' inventories), and the copies each agent remembers
// (its report after every connection, which the reconciliation of its copies waits for:
// src/site/standby-copies.ts).
import type { Journal, VolumeInfo } from "../journal/journal.ts";
import type { Address } from "../link/address.ts";
import { GatewayListener, type StandbyHandler } from "../link/gateway-listener.ts";
import { logger } from "../log.ts";
import type { ChunkLink } from "../recovery/chunk-ops.ts";
import { StandbyDevices } from "../tasks/site-inventory.ts";
import { receiver, type StandbyOrder, standbyReports, type Unsent } from "../wire/control.ts";
import { PendingRequests } from "../wire/requests.ts";

const log = logger("remote-gateway");

export interface StandbyLinkOptions {
  listen: Address[];
  journal: Journal;
  secrets: Map<string, Uint8Array>;
  mirrorPath: (agent: string, volume: string) => string;
  onVolume: (v: VolumeInfo) => void;
  /** The stream half (the feeders). */
  stream: StandbyHandler;
}

/** A standby agent's answer to an order: done or not, with the reason (assign: per volume). */
export interface StandbyAnswer {
  ok?: boolean;
  error?: string;
  results?: { name?: string; ok?: boolean; error?: string }[];
  checkMs?: number;
}

/** What the standby agents report: their answers, devices and remembered copies. */
class StandbyReports {
  readonly devices = new StandbyDevices();
  readonly answers = new PendingRequests<StandbyAnswer>();
  /** What each connected standby agent said it remembers (its copies), after connecting. */
  readonly remembered = new Map<string, Set<string>>();
  readonly listeners: ((agent: string) => void)[] = [];

  private readonly answer = (m: { id: number } & StandbyAnswer) => void this.answers.answer(m.id, m);
  readonly receive = receiver(
    standbyReports,
    {
      devices: (m, agent) => this.devices.report(agent, m.devices),
      assignments: (m, agent) => {
        this.remembered.set(agent, new Set(m.names));
        for (const l of this.listeners) l(agent);
      },
      assigned: this.answer,
      unassigned: this.answer,
      promoted: this.answer,
      demoted: this.answer,
      "rollback-set": this.answer,
      "drill-ready": this.answer,
      "drill-stopped": this.answer,
      refused: (m, agent) =>
        void this.answers.fail(m.id, new Error(`standby agent ${agent} refused the order: ${m.error}`)),
    },
    log,
    (agent, id, error) => void this.answers.fail(id, new Error(`standby agent ${agent}: ${error}`)),
  );
}

export class StandbyLink {
  private constructor(private readonly listener: GatewayListener, private readonly reports: StandbyReports) {}

  static async listen(o: StandbyLinkOptions): Promise<StandbyLink> {
    const reports = new StandbyReports();
    const listener = await GatewayListener.listen({
      listen: o.listen,
      journal: o.journal,
      secrets: o.secrets,
      mirrorPath: o.mirrorPath,
      onVolume: o.onVolume,
      standby: {
        ...o.stream,
        closed: (agent) => {
          reports.remembered.delete(agent);
          o.stream.closed(agent);
        },
      },
      onControl: (agent, msg) => reports.receive(agent, msg),
    });
    return new StandbyLink(listener, reports);
  }

  get devices(): StandbyDevices {
    return this.reports.devices;
  }

  /**
   * Calls `fn` whenever a standby agent reported the copies it remembers (after connecting),
   * and now for each connected one that did already.
   */
  onReport(fn: (agent: string) => void): void {
    this.reports.listeners.push(fn);
    for (const agent of this.reports.remembered.keys()) fn(agent);
  }

  /** The copies a connected standby agent remembers; undefined until it said. */
  remembered(agent: string): Set<string> | undefined {
    return this.reports.remembered.get(agent);
  }

  connected(agent: string): boolean {
    return this.listener.connectedAgents().includes(agent);
  }

  connectedAgents(): string[] {
    return this.listener.connectedAgents();
  }

  /** Chunk operations on a connected standby's copies. */
  chunks(agent: string): ChunkLink | undefined {
    return this.listener.chunks(agent);
  }

  /**
   * Sends an order to a standby agent and waits (bounded) for its answer: an order that times
   * out or is refused is an answer like any other, not done, with the reason.
   */
  async ask(agent: string, order: Unsent<StandbyOrder>, timeoutMs = 60_000): Promise<StandbyAnswer> {
    return await this.reports.answers.request(
      (id) => this.listener.sendControl(agent, { ...order, id }),
      timeoutMs,
      () => new Error(`the agent did not finish its ${order.type} within ${Math.round(timeoutMs / 1000)} s`),
      () => new Error(`standby agent ${agent} is not connected`),
    ).catch((e): StandbyAnswer => ({ ok: false, error: (e as Error).message }));
  }

  describe() {
    return this.listener.describe();
  }

  close(): Promise<void> {
    return this.listener.close();
  }
}
