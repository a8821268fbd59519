// The remote sites as the local gateway sees them: per --remote, a Sender (a journal reader
// streaming the site's volumes) and a SiteClient (the TLS link carrying that stream, the control
// requests and the chunk operations on the site's copies), with the throughput measured on it.
// Everything else reaches a site through this: requests by name, the promotion and demotion of
// its standby, checkpoints, and the volumes its stream carries.
import type { SiteAnswerTo, SiteRequest, Unsent } from "../wire/control.ts";
import { ensurePrivateDir } from "../cli/common.ts";
import type { Journal, VolumeInfo } from "../journal/journal.ts";
import type { MirrorApplier } from "../mirror/applier.ts";
import { loadIdentity } from "../transport/identity.ts";
import { CursorStore } from "../replication/cursor-store.ts";
import { Sender } from "../replication/sender.ts";
import { SiteClient } from "../replication/site-link.ts";
import type { ChunkStore, CopyKind } from "../recovery/chunk-ops.ts";
import type { Part } from "../recovery/divergence.ts";
import { siteLimit } from "../tasks/control-plane.ts";
import type { SiteStatus } from "../web/gateway-status.ts";
import type { RemoteFlags, SiteFlags } from "./flags.ts";
import type { MirrorStrategies } from "./strategies.ts";

interface Remote {
  site: string;
  sender: Sender;
  client: SiteClient;
  /** The --remote-bandwidth limit (bytes/s), 0 if none: a cap on what the site's tasks allow. */
  bandwidth: number;
  /** Highest acknowledged throughput seen in one second (bytes/s). */
  peakBps: number;
  /** The sender's acknowledged bytes at the last sample. */
  sampledBytes: number;
}

/** A site's link came up (after its hello) or went down. */
export type LinkListener = (site: string, up: boolean) => void;

export class RemoteSites {
  private readonly linkListeners: LinkListener[] = [];
  private sampler: ReturnType<typeof setInterval> | undefined;

  private constructor(
    private readonly remotes: Remote[],
    private readonly journal: Journal,
    private readonly mirror: MirrorApplier,
  ) {}

  /**
   * Opens a sender per site, before the mirror applier moves (their stored positions hold the
   * journal); the links connect on start().
   */
  static async open(
    o: RemoteFlags,
    localSite: string,
    dataDir: string,
    journal: Journal,
    mirror: MirrorApplier,
    strategies: MirrorStrategies,
  ): Promise<RemoteSites> {
    const sites = new RemoteSites([], journal, mirror);
    if (o.sites.length === 0) return sites;
    const identity = await loadIdentity(o.keyDir);
    const store = new CursorStore(journal.database);
    ensurePrivateDir(`${dataDir}/sites`);
    for (const f of o.sites) {
      const sender = await Sender.open({
        name: `site:${f.site}`,
        journal,
        store,
        source: {
          imageFd: (id) => mirror.imageFd(id),
          appliedPos: () => mirror.appliedPos,
          changed: () => journal.changed(),
        },
        // a retired volume (its task paused or deleted) is not sent
        carries: (v) => !v.retired,
        windowBytes: o.windowBytes,
        syncChunk: o.syncChunk,
        bandwidth: f.bandwidth,
        // a task's strategy for its volume, else --congestion
        congestion: (v) => strategies.of(v)?.congestion ?? o.congestion,
        compress: (id) => {
          const v = journal.registered(id);
          return v !== undefined && strategies.of(v)?.compression === true;
        },
        stateDir: `${dataDir}/sites`,
      });
      sites.remotes.push(sites.remote(f, sender, localSite, identity, strategies));
    }
    strategies.onApply((plan, announced) => {
      for (const r of sites.remotes) {
        r.sender.setBandwidth(siteLimit(r.bandwidth, plan.siteBandwidth[r.site]));
        // acknowledgement points and retention travel in the hello: a new session announces them
        if (announced) r.client.reannounce();
      }
    });
    return sites;
  }

  private remote(
    f: SiteFlags,
    sender: Sender,
    localSite: string,
    identity: Awaited<ReturnType<typeof loadIdentity>>,
    strategies: MirrorStrategies,
  ): Remote {
    const client = new SiteClient({
      site: f.site,
      hostname: f.hostname,
      port: f.port,
      fingerprint: f.fingerprint,
      identity,
      localSite,
      sender,
      volumes: () => this.journal.volumes(),
      // rgp: the site acknowledges once its replica holds a record; rsp: also its standby; lgp
      // (the site is asynchronous to the writers either way) leaves it to the site's --ack-after
      ackPoint: (v) => {
        const a = strategies.of(v)?.ackPoint;
        return a === "rgp" || a === "rsp" ? a : undefined;
      },
      retention: (v) => {
        const m = strategies.of(v);
        if (!m?.retentionHours) return undefined;
        return {
          windowMs: Math.round(m.retentionHours * 3_600_000),
          ...(m.retentionBytes ? { maxBytes: m.retentionBytes } : {}),
        };
      },
      onLink: (up) => {
        for (const l of this.linkListeners) l(f.site, up);
      },
    });
    return { site: f.site, sender, client, bandwidth: f.bandwidth, peakBps: 0, sampledBytes: 0 };
  }

  /** The links connect (and reconnect until close); their throughput is sampled every second. */
  start(): void {
    for (const r of this.remotes) r.client.start();
    this.sampler = setInterval(() => {
      for (const r of this.remotes) {
        r.peakBps = Math.max(r.peakBps * 0.999, r.sender.ackedBytes - r.sampledBytes);
        r.sampledBytes = r.sender.ackedBytes;
      }
    }, 1000);
    Deno.unrefTimer(this.sampler); // a measurement never keeps the process alive
  }

  close(): void {
    clearInterval(this.sampler);
    for (const r of this.remotes) {
      r.client.close();
      r.sender.close();
    }
  }

  /** Registers a listener: told at once of each site connected now, then of every change. */
  onLink(l: LinkListener): void {
    this.linkListeners.push(l);
    for (const r of this.remotes) if (r.client.connected) l(r.site, true);
  }

  /** The --remote sites. */
  names(): string[] {
    return this.remotes.map((r) => r.site);
  }

  connected(site: string): boolean {
    return this.find(site)?.client.connected ?? false;
  }

  links(): { site: string; connected: boolean }[] {
    return this.remotes.map((r) => ({ site: r.site, connected: r.client.connected }));
  }

  /** A control request to a site (its answer); rejects when it is not a --remote or not connected. */
  request<M extends Unsent<SiteRequest>>(
    site: string,
    msg: M,
    timeoutMs: number,
  ): Promise<SiteAnswerTo<M["type"]>> {
    const r = this.find(site);
    if (!r) return Promise.reject(new Error(`no --remote ${site} on this gateway`));
    return r.client.request(msg, timeoutMs);
  }

  /** Asks the site to promote its standby of the agent (at a recovery point, if given). */
  async promote(site: string, agent: string, point?: number | string): Promise<void> {
    const r = this.get(site);
    // from the promotion the site drops this gateway's records (acknowledged): the sender keeps what it lacks
    await r.sender.failedOver(agent);
    // a rollback to a point rebuilds the standby's differing chunks first: give it time
    const answer = await r.client.request(
      { type: "promote", agent, ...(point === undefined ? {} : { point }) },
      point === undefined ? 90_000 : 900_000,
    );
    if (answer.ok !== true) {
      throw new Error(`site ${site} could not promote ${agent}: ${answer.error ?? "no reason given"}`);
    }
  }

  /** Asks the site to stop the agent's service and be its standby again, holding all it wrote. */
  async demote(site: string, agent: string): Promise<void> {
    const answer = await this.get(site).client.request({ type: "demote", agent }, 90_000);
    if (answer.ok !== true) {
      throw new Error(`site ${site} could not demote ${agent}: ${answer.error ?? "no reason given"}`);
    }
  }

  /** No service of the agent runs at the site any more: the sender forgets what it kept for failback. */
  async failedBack(site: string, agent: string): Promise<void> {
    await this.find(site)?.sender.failedBack(agent);
  }

  /** Ends the failovers a previous run left that are over (`away`: whether one still runs there). */
  async endFinishedFailovers(away: (agent: string, site: string) => boolean): Promise<void> {
    for (const r of this.remotes) {
      for (const agent of r.sender.promotedAgents()) {
        if (!away(agent, r.site)) await r.sender.failedBack(agent);
      }
    }
  }

  /** A named checkpoint of a volume (AGENT/NAME) goes in every site's stream, right after the record it names. */
  checkpoint(key: string, c: { name: string; seq: number }): void {
    const v = this.journal.volumes().find((x) => `${x.agent}/${x.name}` === key);
    if (v) { for (const r of this.remotes) r.sender.checkpoint(v.id, c.name, c.seq); }
  }

  /** An agent opened a volume: only a volume new to a site restarts its session (to announce it). */
  volumeOpened(v: VolumeInfo): void {
    for (const r of this.remotes) if (r.sender.volumeAdded(v)) r.client.reannounce();
  }

  /** The sites stop receiving a volume (AGENT/NAME; its task paused or deleted), or receive it again. */
  async retire(agent: string, name: string, retired: boolean): Promise<void> {
    const v = this.journal.volumes().find((x) => x.agent === agent && x.name === name);
    if (!v) return; // never opened: nothing of it is journaled or sent
    await this.journal.retire(v.id, retired);
    // the records durable now are in the mirror image once it caught up: a resumed site's
    // synchronisation reads its chunks from there
    const imageSeq = v.durableSeq;
    if (!retired) await this.mirror.caughtUp();
    for (const r of this.remotes) {
      if (retired) r.sender.volumeRetired(v.id);
      else r.sender.volumeResumed(v, imageSeq);
    }
  }

  /** A recovery replaced the volume's content: every site resynchronises it. */
  contentReplaced(v: VolumeInfo): void {
    for (const r of this.remotes) r.sender.resetVolume(v.id);
  }

  /** A site's copy of a volume for chunk operations, while its link is up. */
  chunks(
    site: string | undefined,
    key: string,
    kind: CopyKind,
    point?: number | string,
  ): ChunkStore | undefined {
    const r = this.remotes.find((x) => x.site === site);
    return r?.client.connected ? r.client.chunks.store(key, kind, point) : undefined;
  }

  /** The chunks of a volume's records the site has not acknowledged (and any it was promised). */
  unreceived(site: string, volume: number, chunkSize: number): Promise<Part[]> {
    return this.get(site).sender.unreceived(volume, chunkSize);
  }

  /** Bytes per second the site's data can travel here: its measured peak, within its limit. */
  throughput(site: string | undefined): number {
    const r = this.remotes.find((x) => x.site === site);
    const measured = r?.peakBps || 100e6;
    return r?.sender.bandwidth ? Math.min(r.sender.bandwidth, measured) : measured;
  }

  status(): SiteStatus[] {
    return this.remotes.map((r) => ({
      site: r.site,
      lastError: r.client.lastError || null,
      ...r.sender.status(),
    }));
  }

  private find(site: string): Remote | undefined {
    return this.remotes.find((r) => r.site === site);
  }

  private get(site: string): Remote {
    const r = this.find(site);
    if (!r) throw new Error(`no --remote ${site} on this gateway`);
    return r;
  }
}
