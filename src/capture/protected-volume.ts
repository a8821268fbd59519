// The write monitor of one volume. Every WRITE / TRIM / WRITE_ZEROES becomes a
// record, handed to the local gateway and then applied to the local disk, in one
// order (the arrival order of requests, across all connections). The NBD reply
// waits for the local write and the gateway's acceptance; FLUSH and FUA also wait
// for the local fdatasync and the gateway's durability confirmation.
//
// Before any write leaves the agent its chunk is marked in the persistent dirty
// map, so whatever happens next (agent crash, gateway crash, gateway away in
// `track` mode) the chunks that may differ are known and are resent from the
// local disk on the next connection.
import { logger } from "../log.ts";
import { type BatchOp, dropCache } from "../native/mod.ts";
import { EIO, EPERM } from "../nbd/protocol.ts";
import { NbdError, type NbdExport, WRITE_HEADROOM } from "../nbd/server.ts";
import { FLAG_FUA, FLAG_MAY_TRIM, HEADER_SIZE, Kind, writeHeader } from "../record/record.ts";
import { FRAME_HEADER, FrameType, writeFrameHeader } from "../wire/frames.ts";
import type { Volume } from "../volume/volume.ts";
import type { AgentLink, LinkVolume, OpenedInfo } from "../link/agent-link.ts";
import type { DirtyMap } from "./dirty-map.ts";
import { LocalWriter } from "./local-writer.ts";

const log = logger("capture");

/** Bytes a record frame needs before its payload (frame header + record header). */
const RECORD_HEADROOM = FRAME_HEADER + HEADER_SIZE;

export type GatewayLossPolicy = "block" | "track";

export interface ProtectedVolumeOptions {
  name: string;
  volume: Volume;
  dirty: DirtyMap;
  link: AgentLink;
  linkId: number;
  onGatewayLoss: GatewayLossPolicy;
  /** In `block` mode, how long a request waits for an absent gateway before failing. */
  gatewayTimeoutMs: number;
  /** Records sent but not yet durable at the gateway, kept for resending; beyond this, intake waits. */
  maxUnconfirmedBytes?: number;
  /** How often chunks known to be equal on both sides are cleared from the dirty map. */
  sweepIntervalMs?: number;
  readOnly?: () => string | undefined;
  /** The gateway refused the volume after it had accepted it once: the agent cannot go on serving it. */
  onFatal?: (e: Error) => void;
}

interface Op {
  arrival: number;
  kind: Kind;
  flags: number;
  offset: number;
  length: number;
  data?: Uint8Array;
  /** Content comes from the local disk when released (resynchronisation). */
  resync?: boolean;
  readDone?: boolean;
  readFailed?: Error;
  seq: number;
  ready: boolean;
  released: boolean;
  localDone: boolean;
  tracked: boolean;
  accepted: boolean;
  durable: boolean;
  settled: boolean;
  deadline: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

type LinkState = "down" | "opening" | "synced";

export class ProtectedVolume implements NbdExport, LinkVolume {
  readonly name: string;
  readonly size: number;
  readonly linkId: number;
  private readonly local: LocalWriter;
  private queue: Op[] = [];
  private awaitingAccept: Op[] = [];
  private awaitingDurable: Op[] = [];
  private unconfirmed: { seq: number; frame: Uint8Array }[] = [];
  private unconfirmedBytes = 0;
  private pending = new Set<Op>();
  private arrivals = 0;
  private releasedArrival = 0;
  private seq = 0;
  private acceptedSeq = 0;
  private durableSeq = 0;
  private state: LinkState = "down";
  private linkEpoch = 0;
  /** Records were not sent (track mode): the gateway must be resynchronised from the dirty map. */
  private dropped = false;
  private resyncChunks: number[] = [];
  private resyncInFlight = 0;
  private resyncTotal = 0;
  private resyncDone = 0;
  private touched = new Set<number>();
  private sweeping = false;
  private timers: ReturnType<typeof setInterval>[] = [];
  private closed = false;
  private readonly maxUnconfirmed: number;
  private answered = false;
  private answer!: (e?: Error) => void;
  /** Settles with the gateway's first answer to this volume: accepted, or refused (rejects). */
  readonly opened = new Promise<void>((resolve, reject) => {
    this.answer = (e) => {
      if (this.answered) return;
      this.answered = true;
      if (e) reject(e);
      else resolve();
    };
  });

  constructor(private readonly o: ProtectedVolumeOptions) {
    this.name = o.name;
    this.size = o.volume.size;
    this.linkId = o.linkId;
    this.local = new LocalWriter(o.volume.fd);
    this.maxUnconfirmed = o.maxUnconfirmedBytes ?? 256 * 1024 * 1024;
    // chunks suspect since the last run (crash, or a new map) are resent once connected
    this.dropped = o.dirty.count > 0;
    this.timers.push(setInterval(() => this.expire(), 250));
    this.timers.push(setInterval(() => this.sweep(), o.sweepIntervalMs ?? 2000));
  }

  get description(): string {
    return `Continuum protected volume ${this.name}`;
  }

  get readOnly(): boolean {
    return this.o.readOnly?.() !== undefined;
  }

  // ---- NBD side ----

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.o.volume.read(offset, into).then((n) => {
      if (n < into.length) into.fill(0, n);
    });
  }

  write(offset: number, data: Uint8Array, fua: boolean): Promise<void> {
    return this.submit(Kind.Write, fua ? FLAG_FUA : 0, offset, data.length, data);
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.submit(Kind.Trim, fua ? FLAG_FUA : 0, offset, length);
  }

  writeZeroes(offset: number, length: number, fua: boolean, mayTrim: boolean): Promise<void> {
    return this.submit(Kind.Zero, (fua ? FLAG_FUA : 0) | (mayTrim ? FLAG_MAY_TRIM : 0), offset, length);
  }

  flush(): Promise<void> {
    return this.submit(Kind.Flush, 0, 0, 0);
  }

  private submit(
    kind: Kind,
    flags: number,
    offset: number,
    length: number,
    data?: Uint8Array,
  ): Promise<void> {
    const why = this.o.readOnly?.();
    if (why !== undefined && kind !== Kind.Flush) {
      return Promise.reject(new NbdError(EPERM, `volume ${this.name} is read-only: ${why}`));
    }
    if (this.closed) return Promise.reject(new NbdError(EIO, "volume is shutting down"));
    return new Promise<void>((resolve, reject) => {
      const op = this.newOp(kind, flags, offset, length, resolve, reject);
      op.data = data;
      this.pending.add(op);
      this.enqueue(op);
    });
  }

  private newOp(
    kind: Kind,
    flags: number,
    offset: number,
    length: number,
    resolve: () => void,
    reject: (e: Error) => void,
  ): Op {
    return {
      arrival: ++this.arrivals,
      kind,
      flags,
      offset,
      length,
      seq: 0,
      ready: true,
      released: false,
      localDone: false,
      tracked: false,
      accepted: false,
      durable: false,
      settled: false,
      deadline: performance.now() + this.o.gatewayTimeoutMs,
      resolve,
      reject,
    };
  }

  private enqueue(op: Op): void {
    if (op.kind !== Kind.Flush) {
      const [first, last] = this.o.dirty.chunkRange(op.offset, op.length);
      for (let c = first; c <= last; c++) this.touched.add(c);
      const persisted = this.o.dirty.mark(op.offset, op.length);
      if (persisted) {
        op.ready = false;
        persisted.then(() => {
          op.ready = true;
          this.pump();
        }, (e) => {
          // without a durable mark the write could later be lost silently: refuse it
          op.ready = true;
          op.tracked = true;
          op.localDone = true;
          this.settle(op, new NbdError(EIO, (e as Error).message));
          this.pump();
        });
      }
    }
    this.queue.push(op);
    this.pump();
  }

  /** Releases ops from the head of the queue, in order, as far as conditions allow. */
  private pump(): void {
    while (this.feedResync(), this.queue.length > 0) {
      const op = this.queue[0];
      if (!op.ready) return;
      if (op.settled && op.localDone) {
        // refused before release (dirty map failure): nothing to send or write
        this.queue.shift();
        this.releasedArrival = op.arrival;
        continue;
      }
      if (this.state === "synced") {
        if (this.unconfirmedBytes > this.maxUnconfirmed) return;
        if (op.resync) {
          if (!op.readDone) {
            if (!op.released) this.startResyncRead(op);
            return;
          }
          if (op.readFailed) {
            this.queue.shift();
            this.resyncInFlight--;
            this.dropped = true; // the chunk stays marked; retried on the next connection
            continue;
          }
        }
        this.sendRecord(op);
      } else if (this.o.onGatewayLoss === "track" && this.state === "down") {
        if (op.resync) {
          this.queue.shift();
          this.resyncInFlight--;
          continue;
        }
        op.tracked = true;
        this.dropped = true;
      } else {
        return; // block mode (or a connection being opened): wait for the gateway
      }
      this.queue.shift();
      this.releasedArrival = op.arrival;
      if (!op.resync) this.applyLocally(op);
      this.check(op);
    }
  }

  private sendRecord(op: Op): void {
    op.seq = ++this.seq;
    const plen = op.kind === Kind.Write ? op.length : 0;
    let frame: Uint8Array;
    const d = op.data;
    if (d && d.byteOffset >= RECORD_HEADROOM) {
      frame = new Uint8Array(d.buffer, d.byteOffset - RECORD_HEADROOM, RECORD_HEADROOM + plen);
    } else {
      frame = new Uint8Array(RECORD_HEADROOM + plen);
      if (d && plen > 0) frame.set(d, RECORD_HEADROOM);
    }
    writeFrameHeader(frame, 0, FrameType.Record, HEADER_SIZE + plen);
    writeHeader(frame.subarray(FRAME_HEADER), {
      kind: op.kind,
      flags: op.flags,
      volume: this.linkId,
      length: op.length,
      seq: op.seq,
      offset: op.offset,
      time: Date.now(),
      pos: 0,
    });
    this.o.link.send(frame);
    this.unconfirmed.push({ seq: op.seq, frame });
    this.unconfirmedBytes += frame.length;
    op.released = true;
    if (!op.resync) {
      this.awaitingAccept.push(op);
      if (op.kind === Kind.Flush || (op.flags & FLAG_FUA)) this.awaitingDurable.push(op);
    } else {
      this.resyncInFlight--;
      this.resyncDone++;
    }
  }

  private applyLocally(op: Op): void {
    op.released = true;
    const sync = op.kind === Kind.Flush || (op.flags & FLAG_FUA) !== 0;
    let b: BatchOp | undefined;
    switch (op.kind) {
      case Kind.Write:
        b = { op: "write", buf: op.data!, off: op.offset };
        break;
      case Kind.Trim:
        b = { op: "trim", off: op.offset, len: op.length };
        break;
      case Kind.Zero:
        b = { op: op.flags & FLAG_MAY_TRIM ? "zero-may-trim" : "zero", off: op.offset, len: op.length };
        break;
    }
    this.local.run(b, sync).then(() => {
      op.localDone = true;
      this.check(op);
    }, (e) => {
      op.localDone = true;
      // the gateway may hold what the disk refused: resend the chunk from the disk later
      this.dropped = true;
      log.error("local write failed", { volume: this.name, offset: op.offset, length: op.length, error: e });
      this.settle(op, new NbdError(nbdCode(e), `local write failed: ${(e as Error).message}`));
    });
  }

  private startResyncRead(op: Op): void {
    op.released = true;
    op.data = new Uint8Array(WRITE_HEADROOM + op.length).subarray(WRITE_HEADROOM);
    this.local.run({ op: "read", buf: op.data, off: op.offset }).then(() => {
      // read once: its pages would only crowd the cache (and slow small writes there)
      dropCache(this.o.volume.fd, op.offset, op.length).catch(() => {});
      if (isZero(op.data!)) {
        op.kind = Kind.Zero;
        op.flags = FLAG_MAY_TRIM;
        op.data = undefined;
      }
      op.readDone = true;
      this.pump();
    }, (e) => {
      op.readDone = true;
      op.readFailed = e as Error;
      log.error("resync read failed", { volume: this.name, offset: op.offset, error: e });
      this.pump();
    });
  }

  /** Settles an NBD request once everything it waits for is done. */
  private check(op: Op): void {
    if (op.settled || !op.localDone) return;
    const needDurable = op.kind === Kind.Flush || (op.flags & FLAG_FUA) !== 0;
    if (op.tracked || (needDurable ? op.durable && op.accepted : op.accepted)) this.settle(op);
  }

  private settle(op: Op, err?: Error): void {
    if (op.settled) return;
    op.settled = true;
    this.pending.delete(op);
    if (err) op.reject(err);
    else op.resolve();
  }

  /** In block mode, requests waiting for an absent gateway fail after the timeout (they are still sent later). */
  private expire(): void {
    // a resync held back by a fence goes on once the fence is lifted
    if (this.state === "synced" && this.resyncChunks.length > 0 && this.queue.length === 0) this.pump();
    if (this.o.onGatewayLoss !== "block" || this.state === "synced") return;
    const now = performance.now();
    for (const op of this.pending) {
      if (op.deadline <= now) {
        this.settle(op, new NbdError(EIO, `gateway unreachable for ${this.o.gatewayTimeoutMs} ms`));
      }
    }
  }

  // ---- gateway link side ----

  onOpened(info: OpenedInfo): void {
    this.answer();
    this.linkEpoch++;
    const covered = this.unconfirmed.length > 0 && this.unconfirmed[0].seq <= info.lastSeq + 1 &&
      this.unconfirmed[this.unconfirmed.length - 1].seq === this.seq;
    if (!info.known) {
      log.info("gateway has no copy of this volume: full synchronisation", { volume: this.name });
      this.restartSequence(info.lastSeq);
      this.o.dirty.markAll().catch(() => {/* the next mark reports it */});
      this.dropped = true;
    } else if (this.dropped || info.lastSeq > this.seq || (info.lastSeq < this.seq && !covered)) {
      this.restartSequence(info.lastSeq);
      if (this.o.dirty.count > 0) this.dropped = true;
    } else {
      // same session continues: resend what the gateway did not keep
      for (const u of this.unconfirmed) if (u.seq > info.lastSeq) this.o.link.send(u.frame);
    }
    this.state = "synced";
    if (this.dropped) this.startResync();
    this.pump();
  }

  private restartSequence(lastSeq: number): void {
    this.seq = lastSeq;
    this.acceptedSeq = this.durableSeq = lastSeq;
    this.unconfirmed = [];
    this.unconfirmedBytes = 0;
    // whatever waited for the old sequence is covered by the dirty map now
    for (const op of [...this.awaitingAccept, ...this.awaitingDurable]) {
      op.tracked = true;
      this.check(op);
    }
    this.awaitingAccept = [];
    this.awaitingDurable = [];
  }

  onRefused(message: string): void {
    log.error("gateway refused the volume", { volume: this.name, reason: message });
    this.state = "down";
    const e = new Error(`gateway refused volume ${this.name}: ${message}`);
    if (this.answered) this.o.onFatal?.(e);
    this.answer(e);
  }

  onLinkDown(): void {
    this.linkEpoch++;
    this.state = "down";
    this.resyncChunks = [];
    if (this.o.onGatewayLoss === "track") {
      this.dropped = true;
      this.restartSequence(this.seq);
    }
    this.pump();
  }

  onAccepted(seq: number): void {
    this.acceptedSeq = Math.max(this.acceptedSeq, seq);
    while (this.awaitingAccept.length > 0 && this.awaitingAccept[0].seq <= seq) {
      const op = this.awaitingAccept.shift()!;
      op.accepted = true;
      this.check(op);
    }
  }

  onDurable(seq: number): void {
    this.durableSeq = Math.max(this.durableSeq, seq);
    while (this.awaitingDurable.length > 0 && this.awaitingDurable[0].seq <= seq) {
      const op = this.awaitingDurable.shift()!;
      op.durable = true;
      this.check(op);
    }
    let drop = 0;
    while (drop < this.unconfirmed.length && this.unconfirmed[drop].seq <= seq) {
      this.unconfirmedBytes -= this.unconfirmed[drop].frame.length;
      drop++;
    }
    if (drop > 0) {
      this.unconfirmed.splice(0, drop);
      this.pump();
    }
  }

  // ---- resynchronisation from the dirty map ----

  private startResync(): void {
    this.resyncChunks = this.o.dirty.setChunks();
    this.resyncTotal = this.resyncChunks.length;
    this.resyncDone = 0;
    this.dropped = false;
    if (this.resyncTotal > 0) {
      log.info("resending chunks that may differ from the gateway", {
        volume: this.name,
        chunks: this.resyncTotal,
        chunkSize: this.o.dirty.chunkSize,
      });
    }
  }

  private feedResync(): void {
    // a fenced volume sends nothing (the gateway refuses its records): its dirty chunks wait
    // until the fence is lifted, when recovery has made the copies current again
    if (this.readOnly) return;
    while (this.state === "synced" && this.resyncChunks.length > 0 && this.resyncInFlight < 4) {
      const c = this.resyncChunks.shift()!;
      const offset = c * this.o.dirty.chunkSize;
      const length = Math.min(this.o.dirty.chunkSize, this.size - offset);
      const op = this.newOp(Kind.Write, 0, offset, length, () => {}, () => {});
      op.resync = true;
      op.settled = true;
      this.resyncInFlight++;
      this.queue.push(op);
    }
  }

  /**
   * Clears dirty bits of chunks both sides now hold: everything that arrived before
   * the sweep started is released, on the local disk (fdatasync) and durable at
   * the gateway. Chunks touched during the previous interval or since stay marked.
   */
  private async sweep(): Promise<void> {
    if (
      this.sweeping || this.closed || this.state !== "synced" || this.dropped || this.resyncChunks.length > 0
    ) return;
    if (this.resyncInFlight > 0 || this.o.dirty.count === 0) return;
    this.sweeping = true;
    const epoch = this.linkEpoch;
    try {
      const arrival = this.arrivals;
      // chunks written during the last interval stay marked: hot chunks would
      // otherwise be cleared and re-marked (a fdatasync each) over and over
      const recent = this.touched;
      this.touched = new Set();
      const deadline = performance.now() + 30_000;
      while (this.releasedArrival < arrival && this.queue.length > 0) {
        if (performance.now() > deadline || epoch !== this.linkEpoch) return;
        await new Promise((r) => setTimeout(r, 20));
      }
      const seq = this.seq;
      await this.local.sync();
      while (this.durableSeq < seq) {
        if (performance.now() > deadline || epoch !== this.linkEpoch || this.closed) return;
        await new Promise((r) => setTimeout(r, 20));
      }
      if (
        epoch !== this.linkEpoch || this.dropped || this.resyncInFlight > 0 || this.resyncChunks.length > 0
      ) return;
      const clear = this.o.dirty.setChunks().filter((c) => !this.touched.has(c) && !recent.has(c));
      this.o.dirty.clear(clear);
    } catch (e) {
      log.warn("dirty map sweep failed", { volume: this.name, error: e });
    } finally {
      this.sweeping = false;
    }
  }

  // ---- status and shutdown ----

  status() {
    return {
      name: this.name,
      size: this.size,
      link: this.state,
      seq: this.seq,
      acceptedSeq: this.acceptedSeq,
      durableSeq: this.durableSeq,
      queued: this.queue.length,
      inFlight: this.pending.size,
      unconfirmedBytes: this.unconfirmedBytes,
      dirtyChunks: this.o.dirty.count,
      resync: {
        total: this.resyncTotal,
        done: this.resyncDone,
        remaining: this.resyncChunks.length + this.resyncInFlight,
      },
      readOnly: this.o.readOnly?.() ?? null,
    };
  }

  /** True once nothing waits and the gateway holds every record durably. */
  get quiescent(): boolean {
    return this.queue.length === 0 && this.pending.size === 0 && this.state === "synced" &&
      this.durableSeq >= this.seq && this.resyncChunks.length === 0 && this.resyncInFlight === 0 &&
      !this.dropped;
  }

  /**
   * Stops intake after the NBD server has answered its requests: waits (bounded)
   * for the gateway to hold everything, syncs the disk, and clears the dirty map
   * when both sides provably agree, so the next start needs no resynchronisation.
   */
  async close(waitMs = 10_000): Promise<void> {
    const deadline = performance.now() + waitMs;
    while (!this.quiescent && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await this.local.sync();
    if (this.quiescent) {
      this.o.dirty.clear(this.o.dirty.setChunks());
      await this.o.dirty.settle();
    } else {
      log.warn("stopping with records not confirmed by the gateway; they are resent on the next start", {
        volume: this.name,
        chunks: this.o.dirty.count,
      });
    }
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    for (const op of this.pending) this.settle(op, new NbdError(EIO, "agent shutting down"));
    this.o.link.unregister(this.linkId);
  }
}

function isZero(b: Uint8Array): boolean {
  // payload buffers start 8-aligned (WRITE_HEADROOM), so whole words can be compared
  const words = new BigUint64Array(b.buffer, b.byteOffset, b.length >> 3);
  for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false;
  for (let i = words.length * 8; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function nbdCode(e: unknown): number {
  const code = (e as { code?: string }).code;
  return code === "ENOSPC" || code === "EDQUOT" || code === "EFBIG" ? 28 : EIO;
}
