// The remote gateway's feeders: one replication sender per standby agent of this site, reading
// the site's journal and streaming each of the agent's volumes to its standby server (the RSP),
// as the local gateway's sender streams to this site. A feeder exists for every standby agent
// but a promoted one (it serves the service: nothing is fed to it), and is opened before the
// replica applier starts, so that its position holds the journal. It holds journal space only
// when the site's acknowledgement waits for the standby (a volume acknowledged at rsp); an
// optional one that falls behind is resynchronised.
import { Changes } from "../io/changes.ts";
import type { Journal, VolumeInfo } from "../journal/journal.ts";
import type { StandbyHandler } from "../link/gateway-listener.ts";
import { logger } from "../log.ts";
import type { MirrorApplier } from "../mirror/applier.ts";
import type { CursorStore } from "../replication/cursor-store.ts";
import type { AckPoint } from "../replication/receiver.ts";
import { type PeerReport, Sender, type Session } from "../replication/sender.ts";
import { decodeHashes, decodeSeqFrame, decodeTime, FrameType } from "../wire/frames.ts";

const log = logger("remote-gateway");

export interface StandbyFeedersOptions {
  journal: Journal;
  store: CursorStore;
  applier: MirrorApplier;
  /** The site's --ack-after: a volume's acknowledgement point when its local site names none. */
  ackAfter: AckPoint;
  /** Chunk size of a standby copy's synchronisation. */
  syncChunk: number;
  /** The agents whose standby is promoted here (not fed). */
  promoted: ReadonlySet<string>;
}

export class StandbyFeeders {
  private readonly feeders = new Map<string, Sender>();
  private readonly sessions = new Map<string, Session>();
  /** What each connected standby holds of its volumes (its announcement), until its stream starts. */
  private readonly reports = new Map<string, Map<number, PeerReport>>();
  /** Each volume's acknowledgement point, as its local site announced it (its task's). */
  private readonly ackOf = new Map<number, AckPoint | undefined>();
  /** Any feeder's progress (a standby's acknowledgement moves what released() says). */
  private readonly progress = new Changes();

  private constructor(private readonly o: StandbyFeedersOptions) {}

  /** Opens the feeder of every standby agent but the promoted ones. */
  static async open(o: StandbyFeedersOptions, agents: Iterable<string>): Promise<StandbyFeeders> {
    const f = new StandbyFeeders(o);
    for (const agent of agents) if (!o.promoted.has(agent)) await f.start(agent);
    return f;
  }

  /** Shutting down: no feeder saves its position after the journal and the database close. */
  close(): void {
    for (const f of this.feeders.values()) f.close();
  }

  /** A volume's acknowledgement point (its task's, else the site's). */
  ack(id: number): AckPoint {
    return this.ackOf.get(id) ?? this.o.ackAfter;
  }

  /** A local site's hello announced these volumes' acknowledgement points. */
  acks(points: { v: VolumeInfo; ack?: AckPoint }[]): void {
    for (const { v, ack } of points) this.ackOf.set(v.id, ack);
    for (const [agent, f] of this.feeders) f.theCursor.required = this.required(agent);
  }

  /** Where the standby of an agent applied through, if the acknowledgement of `ack` waits for it. */
  released(agent: string, ack: AckPoint | undefined): number | undefined {
    return (ack ?? this.o.ackAfter) === "rsp" ? this.feeders.get(agent)?.released : undefined;
  }

  /** Resolves at any feeder's next progress, or when `signal` aborts. */
  changed(signal: AbortSignal): Promise<void> {
    return this.progress.next(undefined, signal);
  }

  /** A new volume: every feeder hears of it (each carries only its own agent's). */
  volumeAdded(v: VolumeInfo): void {
    for (const f of this.feeders.values()) f.volumeAdded(v);
  }

  /** Starts feeding an agent's standby (it was demoted, or it is an agent of this site). */
  async start(agent: string): Promise<void> {
    const o = this.o;
    this.feeders.set(
      agent,
      await Sender.open({
        name: `standby:${agent}`,
        journal: o.journal,
        store: o.store,
        source: {
          imageFd: (id) => o.applier.imageFd(id),
          appliedPos: () => o.applier.appliedPos,
          changed: () => o.journal.changed(),
        },
        // a retired volume (its standby copy unassigned) is not fed
        carries: (v) => v.agent === agent && !v.retired,
        required: this.required(agent),
        syncChunk: o.syncChunk,
        onProgress: () => this.progress.notify(),
      }),
    );
  }

  /** Stops feeding an agent's standby for good (promoted): its claim on the journal ends. */
  async end(agent: string): Promise<void> {
    const f = this.feeders.get(agent);
    if (!f) return;
    const s = this.sessions.get(agent);
    if (s) f.detach(s);
    f.close();
    this.o.journal.dropCursor(f.name);
    await this.o.store.remove(f.name);
    this.feeders.delete(agent);
    this.progress.notify(); // its records no longer wait for it
  }

  /** Stops (true) or resumes (false) feeding one volume of an agent to its standby. */
  async feed(agent: string, name: string, retired: boolean): Promise<void> {
    const v = this.o.journal.volumes().find((x) => x.agent === agent && x.name === name);
    if (!v || (v.retired ?? false) === retired) return;
    await this.o.journal.retire(v.id, retired);
    const f = this.feeders.get(agent);
    if (retired) f?.volumeRetired(v.id);
    else {
      // the records durable now are in the replica once it caught up: a synchronisation reads there
      const imageSeq = v.durableSeq;
      await this.o.applier.caughtUp();
      f?.volumeResumed(v, imageSeq);
    }
  }

  /** Whether the standby of an agent applied everything the replica did (waits up to `ms`). */
  async level(agent: string, ms: number): Promise<boolean> {
    const f = this.feeders.get(agent);
    if (!f || !this.sessions.has(agent)) return false;
    await this.o.applier.caughtUp();
    const vols = this.o.journal.volumes().filter((v) => v.agent === agent);
    const level = () =>
      f.released >= this.o.journal.positions.durable &&
      vols.every((v) => f.volume(v.id)?.state === "consistent");
    // only the feeder's progress makes it level: each acknowledgement or release wakes this
    const deadline = performance.now() + ms;
    while (!level()) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      await f.changed(left);
    }
    if (level()) return true;
    log.warn("the standby did not catch up with the replica: its promoted volumes are resynchronised", {
      agent,
    });
    return false;
  }

  /** What the standby of an agent acknowledged of a volume, while it is fed. */
  volume(agent: string, id: number) {
    return this.feeders.get(agent)?.volume(id);
  }

  status() {
    return [...this.feeders.values()].map((f) => f.status());
  }

  /**
   * The standby link's stream half: announcements (each volume registered with the site by
   * `register`), the stream's start, acknowledgements, the end.
   */
  handler(register: (agent: string, name: string, size: number) => Promise<VolumeInfo>): StandbyHandler {
    return {
      open: async (agent, m) => {
        const v = await register(agent, m.name, m.size);
        const state = m.state === "consistent" || m.state === "inconsistent" ? m.state : "empty";
        if (!this.reports.has(agent)) this.reports.set(agent, new Map());
        this.reports.get(agent)!.set(v.id, { lastSeq: m.lastSeq, state });
        return v.id;
      },
      ready: (agent, channel) => {
        const f = this.feeders.get(agent);
        if (!f) return;
        this.sessions.set(agent, f.attach(channel, this.reports.get(agent) ?? new Map()));
        log.info("standby server attached", { agent });
      },
      frame: (agent, f) => {
        const s = this.sessions.get(agent);
        if (!s) return;
        if (f.type === FrameType.Accepted) s.onAck(decodeSeqFrame(f.body).seq);
        else if (f.type === FrameType.Hashes) {
          const h = decodeHashes(f.body);
          s.onHashes(h.volume, h.hashes);
        } else if (f.type === FrameType.Pong) s.onPong(decodeTime(f.body));
      },
      closed: (agent) => {
        const s = this.sessions.get(agent);
        if (s) this.feeders.get(agent)?.detach(s);
        this.sessions.delete(agent);
        this.reports.delete(agent);
      },
    };
  }

  private required(agent: string): boolean {
    const mine = this.o.journal.volumes().filter((v) => v.agent === agent);
    if (mine.length === 0) return this.o.ackAfter === "rsp";
    return mine.some((v) => this.ack(v.id) === "rsp");
  }
}
