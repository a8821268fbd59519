// Streams a journal, in order, to one peer: a remote site (from the local
// gateway) or a standby server (from a remote gateway). A bounded window of bytes
// is in flight; the peer acknowledges by count of records handled, and the
// journal may free a record once the peer acknowledged it. Volumes whose far copy
// is unknown, interrupted or behind the journal are brought level by a
// differential synchronisation (chunk hashes) interleaved with the live stream.
import { logger } from "../log.ts";
import * as native from "../native/mod.ts";
import { encodeRecord, FLAG_MAY_TRIM, FLAG_SYNC, Kind, type RecordHeader } from "../record/record.ts";
import type { Cursor, Journal, JournalEntry, VolumeInfo } from "../journal/journal.ts";
import { FRAME_HEADER, FrameType, jsonFrame, timeFrame, writeFrameHeader } from "../wire/frames.ts";
import type { CopyState, CursorStore, StoredVolume } from "./cursor-store.ts";
import { DirtyMap } from "../capture/dirty-map.ts";
import { deflateRecord } from "../record/deflate.ts";
import { addRecordChunks, type Part, union } from "../recovery/divergence.ts";
import { CheckpointMarks } from "./marks.ts";
import type { CheckpointFrame, HashRequest } from "../wire/site-frames.ts";
import { Changes } from "../io/changes.ts";
import { Fifo } from "../io/fifo.ts";
import { ReadBuffers } from "../journal/read-buffers.ts";

const log = logger("sender");

/** The image a synchronisation reads from (the gateway's own copy) and how far it has applied the journal. */
export interface SyncSource {
  imageFd(volumeId: number): number;
  appliedPos(): number;
  /** Resolves when appliedPos() may have moved (a wait re-checks it then). */
  changed(): Promise<void>;
}

/** What the peer says of its copy of a volume when a session starts. */
export interface PeerReport {
  lastSeq: number;
  state: "empty" | "consistent" | "inconsistent";
}

/**
 * Bytes queued in memory for the socket at most: the window bounds what the peer has not
 * acknowledged (held by the journal, not by memory); this bounds what waits for the wire.
 */
const QUEUE_BYTES = 16 << 20;
/** A session's journal read buffers (ReadBuffers): a read while all are queued gets one of its own. */
const READ_BUFFERS = 3;

export interface SenderOptions {
  /** Journal cursor name, e.g. site:dr1 or standby:app1. */
  name: string;
  journal: Journal;
  store: CursorStore;
  source: SyncSource;
  /** Which volumes this peer receives. */
  carries: (v: VolumeInfo) => boolean;
  windowBytes?: number;
  syncChunk?: number;
  /** Whether this reader holds journal space (default true). An optional one that falls behind is resynchronised. */
  required?: boolean;
  /** Bytes per second at most (0: no limit); changed with setBandwidth. */
  bandwidth?: number;
  /**
   * Per volume, when the journal is full because of this peer: `block` (the writers wait) or
   * `pull-ahead` (give up the journal for this peer, remember the chunks it misses in a bitmap
   * and copy them when it is back). Read at each pressure; pull-ahead needs stateDir.
   */
  congestion?: (v: VolumeInfo) => "block" | "pull-ahead";
  /** Whether the records of a volume travel compressed (where that saves bytes); read per record. */
  compress?: (volume: number) => boolean;
  /** Where this peer's bitmaps of missed chunks are kept. */
  stateDir?: string;
  /** Told at each of the peer's progress, as changed() waiters are (one listener for a set of peers). */
  onProgress?: () => void;
}

export interface VolState extends StoredVolume {
  /** Bytes compared and moved by synchronisations (since start). */
  compared: number;
  moved: number;
  /** Capture time of the last acknowledged record. */
  ackedTime: number;
}

/** A peer connection's way to send frames. */
export interface Channel {
  /** Queues a frame; a record's frame comes as its 5-byte header and its body (no copy to join them). */
  send(frame: Uint8Array, body?: Uint8Array): void;
  /**
   * Queues a record's frame by reference: the channel reads the record (`length` bytes at journal
   * position `pos`) from the journal itself as it sends it. A channel that can is read headers
   * only; one whose record is gone by then (overwritten) ends the session.
   */
  sendStored?(pos: number, length: number): void;
  /**
   * Marks what was queued so far: the test returned says when it is all consumed (written, or
   * copied), after which the bytes given to send() may change. Without it they must not.
   */
  mark?(): () => boolean;
  /** Bytes queued but not yet written to the socket. */
  readonly pending: number;
  /** Resolves when `pending` may have fallen (a wait re-checks it) or `signal` aborts. */
  drained(signal: AbortSignal): Promise<void>;
}

/**
 * A paced peer's smallest allowance: what its first measurement and a short round trip need. Small
 * writes at a low rate (one at a time, each with a flush) run on it alone: 1 MiB was 0.6 s of such
 * writes in flight, on top of the bound (docs/benchmarks.md).
 */
const MIN_PACE_BYTES = 256 * 1024;
/** A paced peer that acknowledged nothing this long (or 4 lag bounds) while behind is not waited for. */
const SILENT_MS = 2000;
/** A sender saves its position at most this often (see persist). */
const SAVE_INTERVAL_MS = 100;

export class Sender {
  private cursor!: Cursor;
  /**
   * Where the peer acknowledged through (or the stream passed records it is not sent): its lag
   * counts from here. The journal reclaims up to here only once it is saved (see save).
   */
  private ackedPos = 0;
  private readonly vols = new Map<number, VolState>();
  private session: Session | undefined;
  private saving = false;
  private saveAgain = false;
  /** The next save, due at the end of the interval since the last one began (see persist). */
  private saveTimer: ReturnType<typeof setTimeout> | undefined;
  private savedAt = -Infinity;
  private closed = false;
  readonly windowBytes: number;
  readonly syncChunk: number;
  /** Bytes acknowledged since start, for throughput. */
  ackedBytes = 0;
  rttMs: number | undefined;
  /** When the peer last acknowledged a record (monotonic; lag with nothing in flight counts from it). */
  ackedMono = performance.now();
  /** Set by the connection owner: drop the connection so a new session starts. */
  onReset: (() => void) | undefined;
  private readonly missed = new Map<number, DirtyMap>();
  /** Per volume whose copy at this peer was promoted: the chunks it may lack (see failedOver). */
  private readonly promoted = new Map<number, DirtyMap>();
  private pulling = false;
  /** Bytes per second at most (0: no limit). */
  bandwidth: number;
  /** Named checkpoints, sent in the stream after the records they name. */
  readonly marks = new CheckpointMarks();
  /** Bytes per second the peer acknowledges when it has more to take (0: not measured yet). */
  private capacity = 0;
  private busy: { at: number; acked: number } | undefined;
  /** Appends waited when the last acknowledgement released space (see acknowledged). */
  private heldAtAck = false;
  /** The peer's progress: journal space released, a copy made consistent (see changed). */
  private readonly progress = new Changes();

  private constructor(readonly o: SenderOptions) {
    this.windowBytes = o.windowBytes ?? 256 * 1024 * 1024;
    this.syncChunk = o.syncChunk ?? 1024 * 1024;
    this.bandwidth = o.bandwidth ?? 0;
  }

  /**
   * Names sequence `seq` of a volume: the name travels in the stream right after that record (now,
   * when the peer has it already), and again at each session start for the records the peer holds.
   */
  checkpoint(volume: number, name: string, seq: number): void {
    if (this.marks.add(volume, name, seq)) this.session?.mark(volume, name, seq);
  }

  /** A new bandwidth limit, in force from the next record sent. */
  setBandwidth(bytesPerSecond: number): void {
    if (bytesPerSecond === this.bandwidth) return;
    log.info("bandwidth limit changed", { peer: this.o.name, bytesPerSecond });
    this.bandwidth = bytesPerSecond;
  }

  /** Loads the stored position (a new peer starts at the journal's head) and registers the cursor. */
  static async open(o: SenderOptions): Promise<Sender> {
    const s = new Sender(o);
    const stored = await o.store.load(o.name);
    let from = stored?.pos ?? o.journal.positions.durable;
    // records this peer never acknowledged were freed (the journal was reset): everything must be synchronised
    const lost = from < o.journal.positions.tail;
    if (lost) {
      log.warn(
        "the journal no longer holds records this peer had not acknowledged: its copies are resynchronised",
        {
          peer: o.name,
          position: from,
          tail: o.journal.positions.tail,
        },
      );
      from = o.journal.positions.tail;
    }
    for (const v of o.journal.volumes()) {
      if (!o.carries(v)) continue;
      const sv = stored?.volumes.get(v.id);
      // a volume never streamed to this peer needs a synchronisation first
      const state: CopyState = !sv || lost ? "degraded" : sv.state;
      s.vols.set(v.id, {
        ackedSeq: sv?.ackedSeq ?? 0,
        state,
        voidUpTo: sv?.voidUpTo ?? 0,
        compared: 0,
        moved: 0,
        ackedTime: Date.now(),
      });
    }
    s.cursor = o.journal.cursor(o.name, from, o.required ?? true);
    s.ackedPos = s.cursor.released;
    if (o.stateDir) {
      for (const [id, v] of s.vols) {
        const path = s.missedPath(id);
        if (v.state === "degraded" && await exists(path)) s.missed.set(id, await s.openMissed(id));
        // a failover outlives a restart: its map is dropped only when it ends (failedBack)
        if (await exists(s.promotedPath(id))) s.promoted.set(id, await s.openPromoted(id));
      }
    }
    if (o.congestion) {
      if (!o.stateDir) throw new Error("pull-ahead needs a state directory");
      o.journal.onPressure((tail) => {
        if (s.ackedPos <= tail && !s.pulling && s.mayPullAhead()) s.pullAhead();
      });
    }
    return s;
  }

  /** Whether a volume this peer receives pulls ahead (otherwise the journal is not even read). */
  private mayPullAhead(): boolean {
    for (const id of this.vols.keys()) {
      const v = this.o.journal.volume(id);
      if (v && this.o.congestion?.(v) === "pull-ahead") return true;
    }
    return false;
  }

  private missedPath(volume: number): string {
    return `${this.o.stateDir}/${this.o.name.replace(/[^A-Za-z0-9._-]/g, "_")}-${volume}.missed`;
  }

  private promotedPath(volume: number): string {
    return `${this.o.stateDir}/${this.o.name.replace(/[^A-Za-z0-9._-]/g, "_")}-${volume}.promoted`;
  }

  private async openMissed(volume: number): Promise<DirtyMap> {
    const info = this.o.journal.volume(volume)!;
    const m = await DirtyMap.open(this.missedPath(volume), info.size, this.syncChunk);
    // a map created now starts all-set ("nothing known"); pull-ahead marks exactly what it skips
    if (m.fresh) {
      m.clear(m.setChunks());
      await m.settle();
    }
    return m;
  }

  private async openPromoted(volume: number): Promise<DirtyMap> {
    const path = this.promotedPath(volume);
    const existed = await exists(path);
    const m = await DirtyMap.open(path, this.o.journal.volume(volume)!.size, this.syncChunk);
    // a new map starts empty (failedOver marks it); one that cannot be read stays all-set
    if (m.fresh && !existed) {
      m.clear(m.setChunks());
      await m.settle();
    }
    return m;
  }

  /**
   * A recovery replaced the volume's content (from another copy): the records of it
   * still in the journal are void and never sent, and the peer's copy is brought
   * level by a synchronisation (which also rebases its sequence).
   */
  resetVolume(id: number): void {
    const v = this.vols.get(id);
    const info = this.o.journal.volume(id);
    if (!v || !info) return;
    v.voidUpTo = info.lastSeq;
    v.state = "degraded";
    this.save();
    this.onReset?.();
  }

  /**
   * The chunks (of `chunkSize`) this peer's copy of a volume may lack: those of the records it
   * has not acknowledged, read from the journal after its cursor, those it missed while
   * pulling ahead, and, once the copy was promoted, those it lacked then or was sent since (it
   * acknowledges them but drops them). Rejects when that is not known (its copy was being
   * synchronised before any promotion, or it lost its place in the journal with no map of what
   * it missed).
   */
  async unreceived(volume: number, chunkSize: number): Promise<Part[]> {
    const v = this.vols.get(volume);
    if (!v) throw new Error(`${this.o.name} does not carry volume ${volume}`);
    const p = this.promoted.get(volume);
    // a promoted copy takes nothing from here: a synchronisation since changes nothing in it
    if (v.state === "syncing" && !p) throw new Error(`${this.o.name}'s copy was being synchronised`);
    const j = this.o.journal;
    const m = this.missed.get(volume);
    if (this.ackedPos < j.positions.tail && v.state !== "degraded") {
      throw new Error(`${this.o.name} lost its place in the journal`);
    }
    const parts: Part[] = [];
    if (p) {
      parts.push({
        what: `records ${this.o.name} had not acknowledged at its promotion or got since`,
        chunkSize: p.chunkSize,
        chunks: p.setChunks(),
      });
    }
    if (m) {
      parts.push({ what: `chunks ${this.o.name} missed`, chunkSize: m.chunkSize, chunks: m.setChunks() });
    }
    const records = new Set<number>();
    const to = j.positions.durable;
    for (let pos = Math.max(this.ackedPos, j.positions.tail); pos < to;) {
      const entries = await j.readFrom(pos, 16 << 20);
      if (entries.length === 0) break;
      const inside = entries.filter((e) => e.end <= to);
      addRecordChunks(records, inside.map((e) => e.header), volume, chunkSize);
      pos = inside.length < entries.length || inside.length === 0 ? to : inside[inside.length - 1].end;
    }
    parts.push({ what: `records ${this.o.name} did not acknowledge`, chunkSize, chunks: records });
    return parts;
  }

  /** Chunks of a volume a pull-ahead skipped, if a bitmap is kept for it. */
  missedChunks(volume: number): DirtyMap | undefined {
    return this.missed.get(volume);
  }

  /**
   * The peer is about to promote its copies of an agent's volumes (the service fails over to it):
   * from then on it drops this journal's records of them and acknowledges them all the same
   * (see Receiver), so an acknowledgement no longer says the copy holds a record. Kept per
   * volume, durably, until failedBack: the chunks of every record it has not acknowledged now
   * (or a pull-ahead skipped), and of every record sent to it later. Failback moves them
   * whatever the peer acknowledges meanwhile. A copy whose difference is not known now (being
   * synchronised, or degraded with no map of what it missed) gets every chunk. Called again (a
   * failover retried), it adds to the map.
   */
  async failedOver(agent: string): Promise<void> {
    if (!this.o.stateDir) return;
    for (const [id, v] of this.vols) {
      if (this.o.journal.volume(id)?.agent !== agent) continue;
      let m = this.promoted.get(id);
      const known = m !== undefined || v.state === "consistent" ||
        (v.state === "degraded" && this.missed.has(id));
      // in place before the snapshot is read: records sent meanwhile are marked by the stream
      if (!m) this.promoted.set(id, m = await this.openPromoted(id));
      const parts = known
        ? await this.unreceived(id, this.syncChunk).catch((e) => {
          log.warn("what the promoted copy lacks is not known: every chunk is kept for failback", {
            peer: this.o.name,
            volume: id,
            error: e,
          });
          return undefined;
        })
        : undefined;
      if (parts) await m.markChunks(union(parts, this.syncChunk).chunks);
      else await m.markAll();
      log.warn("a remote site promotes its copy: the chunks it may lack are kept for failback", {
        peer: this.o.name,
        volume: id,
        chunks: m.count,
      });
    }
  }

  /** The failover of an agent to this peer ended (failback): its copies take the journal again. */
  async failedBack(agent: string): Promise<void> {
    for (const [id, m] of [...this.promoted]) {
      if (this.o.journal.volume(id)?.agent !== agent) continue;
      this.promoted.delete(id);
      await m.close();
      await Deno.remove(this.promotedPath(id)).catch(() => {});
    }
  }

  /** Agents whose copies at this peer are promoted, as far as this sender knows. */
  promotedAgents(): string[] {
    return [...new Set([...this.promoted.keys()].map((id) => this.o.journal.volume(id)?.agent ?? ""))]
      .filter((a) => a !== "");
  }

  /** Marks the chunks a record sent to a promoted copy touches (it drops them); nothing for another copy. */
  promotedMark(h: RecordHeader): void {
    const m = this.promoted.get(h.volume);
    if (!m) return;
    const chunks = new Set<number>();
    addRecordChunks(chunks, [h], h.volume, m.chunkSize);
    m.markChunks([...chunks]).catch((e) =>
      log.error("cannot keep a chunk a promoted copy lacks", {
        peer: this.o.name,
        volume: h.volume,
        error: e,
      })
    );
  }

  /**
   * The journal is full and this peer holds its tail: stop holding it for the volumes that
   * pull ahead. Every record of theirs it will not get marks its chunks in the volume's bitmap;
   * their copies become degraded and the bitmap's chunks are copied at the next session. The
   * first record of a volume that blocks stops the skipping: the peer holds the journal there.
   */
  private async pullAhead(): Promise<void> {
    this.pulling = true;
    try {
      const j = this.o.journal;
      const to = j.positions.durable;
      const from = this.ackedPos;
      let pos = from;
      let skipped = 0;
      scan: while (pos < to) {
        const entries = await j.readFrom(pos, 16 << 20);
        if (entries.length === 0) break;
        for (const e of entries) {
          if (e.end > to) break scan;
          const h = e.header;
          const v = this.vols.get(h.volume);
          const info = h.kind === Kind.Wrap ? undefined : j.volume(h.volume);
          if (v && info && this.o.congestion?.(info) !== "pull-ahead") break scan;
          pos = e.end;
          if (
            !v || h.kind === Kind.Wrap || h.kind === Kind.Flush || h.kind === Kind.SyncBegin ||
            h.kind === Kind.SyncEnd
          ) {
            continue;
          }
          if (skipped === 0) this.session?.stop();
          let m = this.missed.get(h.volume);
          if (!m) this.missed.set(h.volume, m = await this.openMissed(h.volume));
          await m.mark(h.offset, h.length);
          // a promoted copy's map outlives the synchronisation that clears the missed one
          await this.promoted.get(h.volume)?.mark(h.offset, h.length);
          v.state = "degraded";
          skipped++;
        }
      }
      if (skipped === 0) return; // the tail is a blocking volume's (or nothing to skip): wait
      this.ackedPos = pos;
      this.cursor.rewind(pos);
      log.warn("a remote site is too slow for the journal: pulling ahead, its copy is degraded", {
        peer: this.o.name,
        skippedRecords: skipped,
      });
      this.save();
      this.onReset?.();
    } catch (e) {
      log.error("pull-ahead failed", { peer: this.o.name, error: e });
    } finally {
      this.pulling = false;
    }
  }

  get name(): string {
    return this.o.name;
  }

  get journal(): Journal {
    return this.o.journal;
  }

  get source(): SyncSource {
    return this.o.source;
  }

  get theCursor(): Cursor {
    return this.cursor;
  }

  /** Where the peer acknowledged through: everything before it is held there, or not for it. */
  get released(): number {
    return this.ackedPos;
  }

  /**
   * Moves the position at an acknowledgement (the journal reclaims the space at the save that
   * follows). Whether appends waited just before counts as busy for the rate measured: right after
   * it, the append it let go may not be in the journal yet, and a peer taking one record at a time
   * (1 MiB records at the 256 KiB floor) looked idle at every acknowledgement and could stay at the
   * floor for seconds (docs/benchmarks.md).
   */
  acknowledged(pos: number): void {
    if (this.o.journal.maxLagMs > 0) this.heldAtAck ||= this.o.journal.waitingAppends > 0;
    if (pos > this.ackedPos) this.ackedPos = pos;
  }

  /** @internal the stream passed records this peer is not sent (other volumes', or held) */
  passed(pos: number): void {
    if (pos > this.ackedPos) this.ackedPos = pos;
    this.persist();
  }

  /**
   * Resolves at the peer's next progress: journal space released, a copy made consistent (a wait
   * re-checks then), or after timeoutMs.
   */
  changed(timeoutMs?: number): Promise<void> {
    return this.progress.next(timeoutMs);
  }

  /** @internal the session released journal space or changed a copy's state */
  progressed(): void {
    this.progress.notify();
    this.o.onProgress?.();
  }

  /**
   * A volume registered after this peer was configured: its whole history is in the journal.
   * True when this peer did not carry it yet (a new session must announce it).
   */
  volumeAdded(v: VolumeInfo): boolean {
    if (!this.o.carries(v) || this.vols.has(v.id)) return false;
    this.vols.set(v.id, {
      ackedSeq: 0,
      state: "consistent",
      voidUpTo: 0,
      compared: 0,
      moved: 0,
      ackedTime: Date.now(),
    });
    this.save();
    return true;
  }

  /**
   * The volume is no longer sent to this peer (its task was paused or deleted): its records are
   * skipped from now on and the peer's copy stays as it is. The session restarts without it.
   */
  volumeRetired(id: number): void {
    if (!this.vols.delete(id)) return;
    this.session?.drop(id);
    this.missed.get(id)?.close();
    this.missed.delete(id);
    this.save();
    this.onReset?.();
  }

  /**
   * A retired volume is sent again: the peer's copy missed the records in between, so it is
   * brought level by a synchronisation. `imageSeq`: the highest sequence number the source
   * image has applied; those records are in every chunk the synchronisation reads, so they are
   * void for this peer (never sent, acknowledged with the synchronisation's end), the later
   * ones are sent as usual.
   */
  volumeResumed(v: VolumeInfo, imageSeq: number): void {
    if (!this.o.carries(v) || this.vols.has(v.id)) return;
    this.vols.set(v.id, {
      ackedSeq: 0,
      state: "degraded",
      voidUpTo: imageSeq,
      compared: 0,
      moved: 0,
      ackedTime: Date.now(),
    });
    this.save();
    this.onReset?.();
  }

  volume(id: number): VolState | undefined {
    return this.vols.get(id);
  }

  volumeIds(): number[] {
    return [...this.vols.keys()];
  }

  /** Starts a session over a fresh connection, replacing any previous one. */
  attach(channel: Channel, reports: Map<number, PeerReport>): Session {
    this.session?.stop();
    if (this.ackedPos < this.o.journal.positions.tail) {
      // an optional reader was overtaken: what it missed is gone, its copies are resynchronised
      for (const v of this.vols.values()) v.state = "degraded";
      this.ackedPos = this.o.journal.positions.tail;
      this.cursor.release(this.ackedPos);
    }
    this.cursor.rewind(this.ackedPos);
    const s = new Session(this, channel, reports);
    this.session = s;
    return s;
  }

  detach(s: Session): void {
    s.stop();
    if (this.session === s) this.session = undefined;
    this.pace();
  }

  /**
   * Seconds since the oldest record this peer has not acknowledged entered the journal (0 when it
   * has them all). With nothing in flight that is the next record to send: counting from the last
   * acknowledgement instead showed a peer idle for a while as lagging that long at the next write.
   */
  lagSeconds(durable = this.o.journal.positions.durable): number {
    if (this.ackedPos >= durable) return 0;
    const oldest = this.session?.oldestUnackedMono() ?? this.o.journal.enteredMono(this.ackedPos) ??
      this.ackedMono;
    return Math.max(0, performance.now() - oldest) / 1000;
  }

  /**
   * Paces this peer under the journal's lag bound: while it is connected, every copy it holds is
   * consistent and it has caught up within the bound, the agents' writes wait whenever it is more
   * than it takes in half the bound behind (its measured rate × half the bound: the other half is
   * for a record's round trip and the peer's stalls, so its lag stays within the bound; with the
   * whole bound's worth it ran at the bound plus a round trip, 1 s p99 with a 0.5 s bound at 1 MiB
   * writes, for 6 % more rate). A peer down, silent, resynchronising or catching up after a
   * reconnection is not waited for: the application would stop for as long. Called at each
   * acknowledgement and each ping.
   */
  pace(): void {
    const bound = this.o.journal.maxLagMs;
    if (bound <= 0) return;
    const s = this.session;
    const durable = this.o.journal.positions.durable; // read once: each read asks the data plane
    const behind = this.ackedPos < durable;
    const silent = behind && performance.now() - this.ackedMono > Math.max(SILENT_MS, 4 * bound);
    const inStep = s !== undefined && !s.stopped && !silent &&
      [...this.vols.values()].every((v) => v.state === "consistent");
    if (!inStep) {
      this.cursor.pace = 0;
      this.busy = undefined;
      this.heldAtAck = false;
      return;
    }
    this.measure(behind);
    if (this.cursor.pace === 0 && this.lagSeconds(durable) * 1000 >= bound) return;
    this.cursor.pace = Math.max(MIN_PACE_BYTES, this.capacity * bound / 2000);
  }

  /**
   * The peer's rate: bytes per second it acknowledged over spans in which it had more to take, or
   * the writer waited (for it: its allowance is then what limits it, and grows with the rate).
   */
  private measure(behind: boolean): void {
    const now = performance.now();
    const busy = behind || this.heldAtAck || this.o.journal.waitingAppends > 0;
    this.heldAtAck = false;
    if (!this.busy) {
      if (busy) this.busy = { at: now, acked: this.ackedBytes };
      return;
    }
    if (!busy) {
      // it took all there was: the span says what was written, not what it can take
      this.busy = undefined;
      return;
    }
    if (now - this.busy.at < 250) return;
    const rate = (this.ackedBytes - this.busy.acked) / ((now - this.busy.at) / 1000);
    this.capacity = this.capacity ? 0.7 * this.capacity + 0.3 * rate : rate;
    this.busy = { at: now, acked: this.ackedBytes };
  }

  /** Re-paces the peer and persists its position and volume states (see persist). */
  save(): void {
    this.pace();
    this.persist();
  }

  /**
   * Persists the position and volume states, then lets the journal reclaim what the saved
   * position covers. One save at a time and at most one per SAVE_INTERVAL_MS, each of the state
   * as it is when it begins: a peer acknowledges hundreds of times a second, and a save each time
   * kept a gateway's JavaScript thread in the database for about a tenth of its time (53 saves a
   * second per gateway at 4 KiB qd16, docs/benchmarks.md). The journal reclaims a little later for
   * it; a restart resends at most that much, which the peer skips as held.
   */
  private persist(): void {
    if (this.closed) return;
    if (this.saving || this.saveTimer !== undefined) {
      // the timer's save takes the state as it is then; a running one is followed by another
      if (this.saving) this.saveAgain = true;
      return;
    }
    const wait = this.savedAt + SAVE_INTERVAL_MS - performance.now();
    if (wait > 0) {
      this.saveTimer = setTimeout(() => {
        this.saveTimer = undefined;
        this.persist();
      }, wait);
      return;
    }
    this.savedAt = performance.now();
    this.saving = true;
    const snapshot = new Map(
      [...this.vols].map(([id, v]) => [id, { ackedSeq: v.ackedSeq, state: v.state, voidUpTo: v.voidUpTo }]),
    );
    const pos = this.ackedPos;
    (async () => {
      // a promoted copy's marks of the records acknowledged are durable before the position passes them
      await Promise.all([...this.promoted.values()].map((m) => m.settle()));
      await this.o.store.save(this.o.name, pos, snapshot);
      this.cursor.release(pos);
    })().catch((e) => log.error("cannot persist replication position", { peer: this.o.name, error: e }))
      .finally(() => {
        this.saving = false;
        if (this.saveAgain) {
          this.saveAgain = false;
          this.persist();
        }
      });
  }

  /**
   * No more saves (the reader is dropped, or the gateway stops): one due later would bring back a
   * dropped reader's stored position, or fail on the closed database.
   */
  close(): void {
    this.closed = true;
    clearTimeout(this.saveTimer);
    this.saveTimer = undefined;
  }

  status() {
    const j = this.o.journal;
    const s = this.session;
    const durable = j.positions.durable;
    return {
      peer: this.o.name,
      connected: s !== undefined && !s.stopped,
      /** Bytes it may be behind before the application's writes wait for it (0: not paced). */
      paceBytes: Math.round(this.cursor.pace),
      lagBytes: Math.max(0, durable - this.ackedPos),
      lagSeconds: this.lagSeconds(durable),
      inFlightBytes: s?.inFlightBytes ?? 0,
      rttMs: this.rttMs ?? null,
      ackedBytes: this.ackedBytes,
      bandwidth: this.bandwidth,
      volumes: [...this.vols].map(([id, v]) => {
        const info = j.volume(id);
        return {
          id,
          agent: info?.agent,
          name: info?.name,
          state: v.state,
          ackedSeq: v.ackedSeq,
          lagRecords: Math.max(0, (info?.durableSeq ?? 0) - v.ackedSeq),
          syncCompared: v.compared,
          syncMoved: v.moved,
          sync: s?.syncProgress(id) ?? null,
        };
      }),
    };
  }
}

interface InFlight {
  /** Count of records sent in this session, this one included. */
  no: number;
  /** Journal position covered once this record is acknowledged. */
  end: number;
  volume: number;
  /** Sequence number this record brings the peer to (0: none). */
  seq: number;
  bytes: number;
  /** When it entered the journal (wall clock: the copy's last time), and the same on the monotonic clock (lag). */
  time: number;
  mono: number;
  /** A SyncEnd marker: once acknowledged the copy is consistent; these chunks are no longer missed ("all": every one). */
  syncEnd?: number[] | "all";
}

/** What a record sent says, besides its count, position and size. */
type Sent = Omit<InFlight, "no" | "end" | "bytes">;

interface SyncJob {
  volume: number;
  chunkSize: number;
  hashes?: Uint8Array;
  chunks: number;
  next: number;
  began: boolean;
  /** Only these chunks (those a pull-ahead skipped), copied without comparing hashes. */
  only?: number[];
}

/** One connection's worth of streaming. */
export class Session {
  stopped = false;
  inFlightBytes = 0;
  private sent = 0;
  private acked = 0;
  private fifo = new Fifo<InFlight>();
  /** Journal position through which entries have been read (sent or skipped). */
  private frontier: number;
  /** Sequence number of the last captured write sent per volume (undefined: none yet after a SyncBegin). */
  private lastSent = new Map<number, number | undefined>();
  private peerLast = new Map<number, number>();
  /** Per volume, the newest captured sequence the peer holds or was sent (checkpoints up to it go now). */
  private through = new Map<number, number>();
  private syncs = new Map<number, SyncJob>();
  private hashWaiters = new Map<number, (h: Uint8Array | undefined) => void>();
  private wake: (() => void) | undefined;
  private readonly signal = { aborted: false };
  private tokens = 0;
  private refilled = performance.now();
  readonly done: Promise<void>;
  private readonly stopping = Promise.withResolvers<void>();

  constructor(private readonly s: Sender, private readonly ch: Channel, reports: Map<number, PeerReport>) {
    this.frontier = s.released;
    this.done = this.run(reports).catch((e) => {
      if (!this.stopped) log.warn("replication session failed", { peer: s.name, error: e });
    });
  }

  stop(): void {
    this.stopped = true;
    this.stopping.resolve();
    this.s.pace();
    this.signal.aborted = true;
    this.s.journal.wakeAll();
    this.wake?.();
    for (const w of this.hashWaiters.values()) w(undefined);
  }

  oldestUnackedMono(): number | undefined {
    return this.fifo.find((f) => f.seq > 0)?.mono;
  }

  /** A new checkpoint: sent now if its record went already, else right after it. */
  mark(volume: number, name: string, seq: number): void {
    if (this.s.volume(volume) && seq <= (this.through.get(volume) ?? 0)) this.sendMark(volume, name, seq);
  }

  private sendMark(volume: number, name: string, seq: number): void {
    this.ch.send(jsonFrame(FrameType.Checkpoint, { volume, name, seq } satisfies CheckpointFrame));
  }

  /** The volume is no longer carried: its synchronisation, if one runs, ends here. */
  drop(volume: number): void {
    this.syncs.delete(volume);
    this.hashWaiters.get(volume)?.(undefined);
  }

  syncProgress(volume: number): { chunks: number; done: number } | null {
    const j = this.syncs.get(volume);
    return j ? { chunks: j.chunks, done: j.next } : null;
  }

  /** The peer handled this session's records up to count `no` (cumulative, in order, durably). */
  onAck(no: number): void {
    if (no <= this.acked || no > this.sent) return;
    this.acked = no;
    let release = -1;
    while (this.fifo.length > 0 && this.fifo.first!.no <= no) {
      const f = this.fifo.shift()!;
      this.inFlightBytes -= f.bytes;
      this.s.ackedBytes += f.bytes;
      this.s.ackedMono = performance.now();
      release = f.end;
      const v = this.s.volume(f.volume);
      if (!v) continue;
      if (f.seq > 0) {
        v.ackedSeq = f.seq;
        v.ackedTime = f.time;
      }
      if (f.syncEnd) {
        v.state = "consistent";
        const m = this.s.missedChunks(f.volume);
        m?.clear(f.syncEnd === "all" ? m.setChunks() : f.syncEnd);
        log.info("replica synchronised", {
          peer: this.s.name,
          volume: f.volume,
          compared: v.compared,
          moved: v.moved,
        });
      }
    }
    // entries read after the last record sent (skipped ones) are covered too
    if (this.fifo.length === 0) release = this.frontier;
    if (release >= 0) this.s.acknowledged(release);
    this.s.save();
    this.s.progressed();
    this.wake?.();
  }

  onHashes(volume: number, hashes: Uint8Array): void {
    this.hashWaiters.get(volume)?.(hashes);
  }

  onPong(sentAt: number): void {
    this.s.rttMs = performance.now() - sentAt;
  }

  private needsSync(id: number, r: PeerReport | undefined): boolean {
    const v = this.s.volume(id)!;
    const info = this.s.journal.volume(id)!;
    return v.state !== "consistent" || !r || r.state === "inconsistent" ||
      r.lastSeq < v.ackedSeq || // the peer lost records it had acknowledged
      r.lastSeq > info.lastSeq; // the peer holds a history this journal does not
  }

  private async run(reports: Map<number, PeerReport>): Promise<void> {
    for (const id of this.s.volumeIds()) {
      const r = reports.get(id);
      this.peerLast.set(id, r?.lastSeq ?? 0);
      this.lastSent.set(id, r?.lastSeq ?? 0);
      // the checkpoints of records the peer holds: it may have missed them (away, or cut off)
      this.through.set(id, r?.lastSeq ?? 0);
      for (const m of this.s.marks.upTo(id, r?.lastSeq ?? 0)) this.sendMark(id, m.name, m.seq);
      if (this.needsSync(id, r)) {
        // after the sync the peer holds this journal's history, whatever it reported before
        // (a promoted copy numbers its own writes): nothing may be skipped as "held" then
        this.peerLast.set(id, 0);
        const v = this.s.volume(id)!;
        const missed = this.s.missedChunks(id);
        // a copy that only missed what a pull-ahead skipped gets just those chunks
        const onlyMissed = missed !== undefined && v.state === "degraded" && r !== undefined &&
          r.state !== "inconsistent" && r.lastSeq >= v.ackedSeq &&
          r.lastSeq <= this.s.journal.volume(id)!.lastSeq;
        this.syncs.set(id, {
          volume: id,
          chunkSize: this.s.syncChunk,
          chunks: 0,
          next: 0,
          began: false,
          only: onlyMissed ? missed.setChunks() : undefined,
        });
      } else if (r && r.lastSeq > this.s.volume(id)!.ackedSeq) {
        // the peer held records whose acknowledgement this gateway missed (it restarted): they are
        // skipped as held, so they count as acknowledged, or the lag would show them until the next write
        this.s.volume(id)!.ackedSeq = r.lastSeq;
      }
    }
    await this.requestHashes();
    const ping = setInterval(() => {
      this.ch.send(timeFrame(FrameType.Ping, performance.now()));
      this.s.pace();
    }, 1000);
    try {
      await this.stream();
    } finally {
      clearInterval(ping);
    }
  }

  /** Gets the chunk hashes of every copy to synchronise before any record is sent, so they describe a fixed state. */
  private async requestHashes(): Promise<void> {
    for (const job of this.syncs.values()) {
      const size = this.s.journal.volume(job.volume)!.size;
      job.chunks = Math.ceil(size / job.chunkSize);
      if (job.only) {
        job.chunks = job.only.length;
        this.s.volume(job.volume)!.state = "syncing";
        log.info("copying the chunks a replica missed", {
          peer: this.s.name,
          volume: job.volume,
          chunks: job.chunks,
        });
        continue;
      }
      const answer = new Promise<Uint8Array | undefined>((r) => this.hashWaiters.set(job.volume, r));
      this.ch.send(
        jsonFrame(
          FrameType.HashRequest,
          { volume: job.volume, chunkSize: job.chunkSize } satisfies HashRequest,
        ),
      );
      const hashes = await answer;
      this.hashWaiters.delete(job.volume);
      if (this.stopped) return;
      if (!this.syncs.has(job.volume)) continue; // dropped meanwhile
      // a copy of another size (or none) answers with hashes that do not fit: every chunk is copied
      job.hashes = hashes && hashes.length === job.chunks * 16 ? hashes : undefined;
      this.s.volume(job.volume)!.state = "syncing";
      log.info("synchronising a replica", { peer: this.s.name, volume: job.volume, chunks: job.chunks });
    }
  }

  private push(bytes: Uint8Array, r: Sent): void {
    const deflated = this.s.o.compress?.(r.volume) ? deflateRecord(bytes) : undefined;
    const body = deflated ?? bytes;
    const head = new Uint8Array(FRAME_HEADER);
    writeFrameHeader(head, 0, deflated ? FrameType.RecordDeflated : FrameType.Record, body.length);
    this.ch.send(head, body);
    this.queued(body.length, r);
  }

  /** A record's frame was queued: `bytes` on the wire. */
  private queued(bytes: number, r: Sent): void {
    // window, bandwidth and throughput count the bytes on the wire
    this.sent++;
    this.fifo.push({ no: this.sent, end: this.frontier, bytes, ...r });
    this.inFlightBytes += bytes;
    if (this.s.bandwidth) this.tokens -= bytes;
  }

  private async windowOpen(): Promise<void> {
    while (!this.stopped) {
      const full = this.inFlightBytes >= this.s.windowBytes;
      if (!full && this.ch.pending <= Math.min(this.s.windowBytes, QUEUE_BYTES)) break;
      // an acknowledgement (or the stop) opens the window; the channel says when its queue fell
      const ac = new AbortController();
      const waits = [new Promise<void>((r) => this.wake = r)];
      if (!full) waits.push(this.ch.drained(ac.signal));
      await Promise.race(waits);
      ac.abort();
      this.wake = undefined;
    }
    await this.tokensLeft();
  }

  /** With a bandwidth limit: waits until the token bucket is not in debt. */
  private async tokensLeft(): Promise<void> {
    const rate = this.s.bandwidth;
    while (rate > 0 && !this.stopped) {
      // token bucket: refill at the rate, at most one second's worth banked
      const now = performance.now();
      this.tokens = Math.min(rate, this.tokens + (now - this.refilled) * rate / 1000);
      this.refilled = now;
      if (this.tokens >= 0) break;
      await new Promise((r) => setTimeout(r, Math.min(200, Math.ceil(-this.tokens / rate * 1000))));
    }
  }

  private async stream(): Promise<void> {
    const cursor = this.s.theCursor;
    // a channel that reads the records from the journal itself needs their headers only
    const heads = this.ch.sendStored !== undefined && !this.s.o.compress;
    // reads go into buffers used again once the channel consumed what was sent from them
    const mark = this.ch.mark?.bind(this.ch);
    const buffers = mark ? new ReadBuffers(READ_BUFFERS, mark) : undefined;
    while (!this.stopped) {
      await this.windowOpen();
      if (this.stopped) return;
      // with a synchronisation running, records that are there go first; idle time copies chunks
      const entries = this.syncs.size === 0 || cursor.ready
        ? await cursor.next(4 << 20, { signal: this.signal, heads, buffers })
        : [];
      for (const e of entries) {
        // a limited link is paced record by record, not batch by batch (a batch may be 4 MiB)
        if (this.s.bandwidth) await this.tokensLeft();
        if (this.stopped) return;
        this.forward(e);
      }
      if (this.syncs.size > 0) await this.syncStep(entries.length === 0);
    }
  }

  private forward(e: JournalEntry): void {
    const h = e.header;
    this.frontier = e.end;
    const carried = h.kind !== Kind.Wrap && this.s.volume(h.volume) !== undefined;
    const sync = this.syncs.get(h.volume);
    const between = h.kind === Kind.SyncBegin || h.kind === Kind.SyncEnd || (h.flags & FLAG_SYNC) !== 0;
    // the peer already holds captured writes up to what it reported (unless it is being synchronised)
    const held = !between && (
      h.seq <= (this.s.volume(h.volume)?.voidUpTo ?? 0) ||
      (!sync && h.seq <= (this.peerLast.get(h.volume) ?? 0))
    );
    if (!carried || held) {
      // nothing to send; its space is freed with the record sent before it (or now)
      const last = this.fifo.last;
      if (last) last.end = this.frontier;
      else {
        this.s.passed(this.frontier);
        this.s.progressed();
      }
      return;
    }
    if (sync && !sync.began) this.beginSync(sync);
    if (h.kind === Kind.SyncBegin) this.lastSent.set(h.volume, undefined);
    else if (!between) this.lastSent.set(h.volume, h.seq);
    // a SyncEnd passed on from upstream says nothing about this peer's own synchronisation;
    // lag is measured from when a record entered this journal (waiting before that is not this peer's lag)
    // (an entry read back from the ring after a restart: its age by the wall clocks when read)
    const mono = e.atMono ?? performance.now() - Math.max(0, Date.now() - h.time);
    const sent = { volume: h.volume, seq: between ? 0 : h.seq, time: e.at ?? h.time, mono };
    if (e.bytes.length < e.length) {
      this.ch.sendStored!(e.pos, e.length);
      this.queued(e.length, sent);
    } else this.push(e.bytes, sent);
    if (between) return;
    this.s.promotedMark(h);
    this.through.set(h.volume, h.seq);
    const names = this.s.marks.at(h.volume, h.seq);
    if (names) { for (const name of names) this.sendMark(h.volume, name, h.seq); }
  }

  /** SyncBegin rebases the peer's sequence: it takes the next captured write whatever its number. */
  private beginSync(job: SyncJob): void {
    job.began = true;
    this.lastSent.set(job.volume, undefined);
    this.push(syncRecord(Kind.SyncBegin, job.volume, 0, 0, 0), {
      volume: job.volume,
      seq: 0,
      time: Date.now(),
      mono: performance.now(),
    });
  }

  /**
   * Copies some chunks of each copy being synchronised. A chunk is read from the
   * local image only once the image has applied everything sent so far: the
   * records that follow it in the stream are then never older than its content.
   */
  private async syncStep(idle: boolean): Promise<void> {
    const budget = idle ? 16 << 20 : 2 << 20;
    let spent = 0;
    for (const job of [...this.syncs.values()]) {
      if (!job.began) this.beginSync(job);
      while (job.next < job.chunks && spent < budget && !this.stopped && this.syncs.has(job.volume)) {
        if (this.s.source.appliedPos() < this.frontier) {
          if (idle) await this.appliedMoved();
          return;
        }
        await this.windowOpen();
        if (this.stopped) return;
        if (!this.syncs.has(job.volume)) break;
        spent += await this.copyChunk(job);
      }
      if (this.stopped) return;
      if (job.next >= job.chunks && this.syncs.has(job.volume)) {
        const seq = this.lastSent.get(job.volume) ?? 0;
        // once acknowledged, the copy holds every record up to the last one sent and, through
        // the chunks, every record the reset voided (never sent, so never acknowledged one by one)
        const covered = Math.max(seq, this.s.volume(job.volume)?.voidUpTo ?? 0);
        this.push(syncRecord(Kind.SyncEnd, job.volume, seq, 0, 0), {
          volume: job.volume,
          seq: covered,
          time: Date.now(),
          mono: performance.now(),
          syncEnd: job.only ?? "all",
        });
        this.syncs.delete(job.volume);
      }
    }
  }

  /** Until the local image applied more (or a record came, or the session stops). */
  private async appliedMoved(): Promise<void> {
    await Promise.race([this.s.source.changed(), this.stopping.promise]);
  }

  private async copyChunk(job: SyncJob): Promise<number> {
    const info = this.s.journal.volume(job.volume)!;
    const v = this.s.volume(job.volume)!;
    const i = job.only ? job.only[job.next++] : job.next++;
    const off = i * job.chunkSize;
    const len = Math.min(job.chunkSize, info.size - off);
    // 8-aligned for the word-wise zero check
    const buf = new Uint8Array(len);
    const got = await native.preadOnce(this.s.source.imageFd(job.volume), buf, off);
    if (got < len) buf.fill(0, got);
    v.compared += len;
    if (job.hashes) {
      const mine = native.xxh3(buf);
      const theirs = job.hashes.subarray(16 * i, 16 * i + 16);
      if (mine.every((b, k) => b === theirs[k])) return len;
    }
    const zero = isZero(buf);
    const seq = this.lastSent.get(job.volume) ?? 0;
    this.push(syncRecord(zero ? Kind.Zero : Kind.Write, job.volume, seq, off, len, zero ? undefined : buf), {
      volume: job.volume,
      seq: 0,
      time: Date.now(),
      mono: performance.now(),
    });
    v.moved += zero ? 0 : len;
    return len;
  }
}

function syncRecord(
  kind: Kind,
  volume: number,
  seq: number,
  offset: number,
  length: number,
  payload?: Uint8Array,
) {
  const h: RecordHeader = {
    kind,
    flags: FLAG_SYNC | (kind === Kind.Zero ? FLAG_MAY_TRIM : 0),
    volume,
    length,
    seq,
    offset,
    time: Date.now(),
    pos: 0,
  };
  return encodeRecord(h, kind === Kind.Write ? payload : undefined);
}

function isZero(b: Uint8Array): boolean {
  const w = new BigUint64Array(b.buffer, b.byteOffset, b.length >> 3);
  for (let i = 0; i < w.length; i++) if (w[i] !== 0n) return false;
  for (let i = w.length * 8; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
