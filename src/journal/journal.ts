// The gateway's write cache (native/journal.c): the agents' records are appended to the ring
// buffer and made durable by group commit on native threads; this class keeps the volumes'
// registry and the libsql index (which follows the committed positions), and gives
// TypeScript's readers (one per remote site) their cursors. A record's space is reused only
// when every reader has released it; a full ring makes appenders wait (backpressure), it
// never drops a record.
import { appendBytes } from "../io/append-bytes.ts";
import { eq, lte } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { journalState, segments, volumes } from "../db/schema.ts";
import { logger } from "../log.ts";
import type { ReadBuffers } from "./read-buffers.ts";
import { cstr, native, NativeError } from "../native/ffi.ts";
import { Ev, FL_JOURNAL, FL_PRESSURE, Plane } from "../native/plane.ts";
import {
  betweenSeqs,
  decodeHeader,
  HEADER_SIZE,
  Kind,
  MAX_PAYLOAD,
  type RecordHeader,
} from "../record/record.ts";

const log = logger("journal");

/** How a read waits and what it hands out. */
export interface ReadOptions {
  /** Ends a wait for entries: the read then returns none. */
  signal?: { aborted: boolean };
  /** Each entry's bytes are its header only (its payload is sent from the journal by reference). */
  heads?: boolean;
  /** The entries' bytes are views of one of these buffers (see ReadBuffers), else of a new one. */
  buffers?: ReadBuffers;
}

export interface JournalEntry {
  header: RecordHeader;
  /** Header and payload as stored (72 + payload bytes); empty for a Wrap; the header only when read so. */
  bytes: Uint8Array;
  /** The record's stored length (header and payload; 0 for a Wrap), whether or not `bytes` holds it all. */
  length: number;
  pos: number;
  /** Position right after this entry. */
  end: number;
  /** When it entered this journal (wall clock, ms), if known. */
  at?: number;
  /** The same on this process's monotonic clock (performance.now()), which a clock jump does not move. */
  atMono?: number;
}

export interface VolumeInfo {
  id: number;
  agent: string;
  name: string;
  size: number;
  mirrorPath: string;
  /** Highest sequence number appended (accepted). */
  lastSeq: number;
  /** Highest sequence number durable. */
  durableSeq: number;
  /** Whether the volume existed before this open (false: its mirror needs a full sync). */
  known: boolean;
  /**
   * No remote site receives it (its task is paused or deleted); the mirror still applies its
   * records. Optional: a volume described elsewhere (a receiver's, a test's) is carried.
   */
  retired?: boolean;
  /** Most bytes of the journal this volume's records may occupy (its task's buffer bound). */
  bound?: number;
}

export interface JournalOptions {
  /** Commit at the latest this long after a write, even without a barrier. */
  commitDelayMs?: number;
  /** Commit as soon as the appends paused this long (absent: a pause alone does not commit). */
  commitIdleMs?: number;
  /** Commit as soon as this many bytes wait. */
  commitBytes?: number;
  /** Keep at least the newest this-many bytes even when every reader is past them. */
  retainBytes?: number;
  /** The replication lag bound, for the senders that pace their sites (0: none). */
  maxLagMs?: number;
  /**
   * A ring file created here is written through once (zeroes) instead of only preallocated: its
   * group commits then never convert a preallocated extent (faster syncs from the first lap on).
   */
  writeThrough?: boolean;
}

type DurableListener = (volume: number, seq: number) => void;

/** cn_journal_open's flag CN_JOURNAL_WRITE_THROUGH (native/continuum.h). */
const JOURNAL_WRITE_THROUGH = 1;

/** The libsql index follows the ring at most this often. */
const INDEX_INTERVAL_MS = 200;

/** Entry times come from the native monotonic clock: this maps them onto performance.now() and Date.now(). */
function clockOffsets(): { mono: number; wall: number } {
  const ns = Number(native().cn_mono_ns()) / 1e6;
  return { mono: performance.now() - ns, wall: Date.now() - ns };
}

export class Journal {
  private vols = new Map<number, VolumeInfo>();
  private listeners = new Set<DurableListener>();
  private pressureListeners = new Set<(tail: number) => void>();
  private dataWaiters: (() => void)[] = [];
  private cursors = new Map<string, Cursor>();
  private markerListener: ((volume: number, kind: Kind.SyncBegin | Kind.SyncEnd) => void) | undefined;
  private failure: Error | undefined;
  private closed = false;
  private durable: number;
  private indexed: number;
  private indexing: Promise<void> | undefined;
  private indexAgain = false;
  private indexedAt = -Infinity;
  private indexTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly clock = clockOffsets();
  /** Appends not yet taken by the data plane, in order; their bytes are `filling`'s, in the same order. */
  private appendQueue: {
    v: VolumeInfo;
    length: number;
    header: RecordHeader;
    done: (e?: Error) => void;
  }[] = [];
  /** The data plane is taking queued appends (flushed() waits for them). */
  private appending: Promise<void> | undefined;
  /**
   * Two stages, kept from batch to batch: appends are copied into `filling` as they come (the
   * caller reuses its buffer), while the data plane takes the batch before from the other. A fresh
   * buffer each time was zeroed and faulted in by the kernel before the copy (a site's every record).
   */
  private filling = new Uint8Array(0);
  private filled = 0;
  private spare = new Uint8Array(0);
  private lagBound = 0;
  /** Per volume, the durable sequence the listeners were last told. */
  private readonly heard = new Map<number, number>();
  /** What the journal said last, once it is closed and freed (shutdown still reads positions). */
  private final: { status: number[]; volumes: Map<number, number[] | undefined> } | undefined;

  private constructor(
    readonly ptr: Deno.PointerValue,
    private readonly plane: Plane,
    readonly ring: { path: string; id: string; dataSize: number },
    private readonly db: Db,
    head: number,
  ) {
    this.durable = this.indexed = head;
    plane
      .on(Ev.Flags, (e) => {
        if (e.aux & FL_JOURNAL) this.progress();
        if (e.aux & FL_PRESSURE) { for (const l of this.pressureListeners) l(this.positions.tail); }
      })
      .on(Ev.Marker, (e) => this.markerListener?.(e.source, e.aux as Kind.SyncBegin | Kind.SyncEnd))
      .on(Ev.Failed, (e) => {
        this.failure = new Error(`journal failed: ${new TextDecoder().decode(e.body)}`);
        this.wakeReaders();
      });
  }

  /**
   * Opens the journal: checks the ring belongs to this database, finds the records written
   * after the last index (a crash, or a commit the index had not followed yet), indexes them.
   */
  static async open(db: Db, ringPath: string, ringSize: number, opts: JournalOptions = {}): Promise<Journal> {
    const [state] = await db.select().from(journalState).where(eq(journalState.id, 1));
    const rows = await db.select().from(volumes);
    const plane = new Plane();
    const info = new Uint8Array(16 * 1024);
    // (a path that cannot be looked at is reported by the open below)
    if (opts.writeThrough && await Deno.lstat(ringPath).then(() => false, () => true)) {
      log.info("writing the new journal buffer through once (its syncs then need no allocation)", {
        path: ringPath,
        bytes: ringSize,
      });
    }
    // the index's volumes and sequences: the records past its head must continue them
    const known = new Uint8Array(12 * rows.length + 1);
    const kv = new DataView(known.buffer);
    rows.forEach((r, i) => {
      kv.setUint32(12 * i, r.id);
      kv.setBigUint64(12 * i + 4, BigInt(r.lastSeq));
    });
    const ptr = await native().cn_journal_open(
      plane.ptr,
      cstr(ringPath),
      BigInt(ringSize),
      BigInt(state?.tail ?? 0),
      BigInt(state?.head ?? 0),
      BigInt(state?.appliedPos ?? 0),
      known,
      rows.length,
      opts.commitDelayMs ?? 100,
      opts.commitIdleMs ?? -1,
      BigInt(opts.commitBytes ?? 32 * 1024 * 1024),
      BigInt(opts.retainBytes ?? 0),
      opts.writeThrough ? JOURNAL_WRITE_THROUGH : 0,
      info,
      BigInt(info.length),
    );
    const opened = JSON.parse(new TextDecoder().decode(info.subarray(0, info.indexOf(0)))) as {
      error?: string;
      ringId: string;
      dataSize: number;
      head: number;
      recovered: {
        records: number;
        from: number;
        to: number;
        firstTime: number;
        lastTime: number;
        volumes: Record<string, number>;
      };
    };
    if (!ptr) {
      await plane.close();
      throw new Error(opened.error ?? `cannot open the journal buffer ${ringPath}`);
    }
    const j = new Journal(
      ptr,
      plane,
      { path: ringPath, id: opened.ringId, dataSize: opened.dataSize },
      db,
      opened.head,
    );
    j.lagBound = opts.maxLagMs ?? 0;
    try {
      if (state && (state.ringId !== opened.ringId || state.ringSize !== opened.dataSize)) {
        throw new Error(
          `journal buffer ${ringPath} is not the one this database indexed (ring ${opened.ringId}, expected ${state.ringId}); ` +
            "was the buffer device replaced?",
        );
      }
      if (!state) {
        await db.insert(journalState).values({
          id: 1,
          ringId: opened.ringId,
          ringSize: opened.dataSize,
          tail: 0,
          head: 0,
          appliedPos: 0,
        });
      }
      for (const row of rows) {
        const lastSeq = Math.max(row.lastSeq, opened.recovered.volumes[row.id] ?? 0);
        const v: VolumeInfo = {
          id: row.id,
          agent: row.agent,
          name: row.name,
          size: row.size,
          mirrorPath: row.mirrorPath,
          lastSeq,
          durableSeq: lastSeq,
          known: true,
          retired: row.retired !== 0,
        };
        j.vols.set(v.id, v);
        j.heard.set(v.id, v.durableSeq);
        check("volume", native().cn_journal_add_volume(ptr, v.id, BigInt(v.size), BigInt(lastSeq), -1));
      }
      const r = opened.recovered;
      if (r.records > 0) {
        log.info("journal recovered records written before a crash", {
          records: r.records,
          from: r.from,
          to: r.to,
        });
      }
      // the index catches up with what the ring holds (a crash between commit and index)
      j.indexed = Math.min(state?.head ?? 0, r.from);
      // nothing appends yet: the status and the volumes describe r.to
      const s = j.status();
      await j.writeIndex({
        records: r.records,
        first: r.firstTime,
        last: r.lastTime,
        durable: r.to,
        tail: s[0],
        applied: s[5],
        seqs: [...j.vols.values()].map((v) => ({ id: v.id, seq: v.durableSeq })),
      });
    } catch (e) {
      await j.close();
      throw e;
    }
    return j;
  }

  get positions(): { tail: number; durable: number; head: number; capacity: number } {
    const s = this.status();
    return { tail: s[0], durable: s[1], head: s[2], capacity: s[3] };
  }

  /** The mirror's positions: applied to the images, and synced (released to the journal). */
  get mirrorPositions(): { applied: number; synced: number } {
    const s = this.status();
    return { applied: s[4], synced: s[5] };
  }

  private status(): number[] {
    if (this.final) return this.final.status;
    const out = new BigUint64Array(10);
    native().cn_journal_status(this.ptr, new Uint8Array(out.buffer));
    return [...out].map(Number);
  }

  get error(): Error | undefined {
    return this.failure;
  }

  /** The database holding the journal's index (readers' positions are stored beside it). */
  get database(): Db {
    return this.db;
  }

  volumes(): VolumeInfo[] {
    for (const v of this.vols.values()) this.refresh(v);
    return [...this.vols.values()];
  }

  volume(id: number): VolumeInfo | undefined {
    const v = this.vols.get(id);
    if (v) this.refresh(v);
    return v;
  }

  /**
   * A volume as registered, its counters as last refreshed: for what a caller looks up per record
   * (volume() asks the data plane, under the lock its threads take for every write).
   */
  registered(id: number): VolumeInfo | undefined {
    return this.vols.get(id);
  }

  /** The journal's own counters of a volume: sequences, bytes held, the mirror's position. */
  private volumeStatus(id: number): number[] | undefined {
    if (this.final) return this.final.volumes.get(id);
    const out = new BigUint64Array(6);
    if (native().cn_journal_volume_status(this.ptr, id, new Uint8Array(out.buffer)) < 0) return undefined;
    return [...out].map(Number);
  }

  private refresh(v: VolumeInfo): void {
    const s = this.volumeStatus(v.id);
    if (!s) return;
    v.lastSeq = Math.max(v.lastSeq, s[0]);
    v.durableSeq = Math.max(v.durableSeq, s[1]);
  }

  /** The mirror's sequence and capture time of a volume's newest record applied to its image. */
  mirrorOf(id: number): { seq: number; time: number } {
    const s = this.volumeStatus(id);
    return { seq: s?.[3] ?? 0, time: s?.[4] ?? 0 };
  }

  /** False once closed: the data plane's journal is gone. */
  get open(): boolean {
    return !this.closed;
  }

  /** @internal the mirror applier's image of a volume (the fd stays the caller's) */
  setImage(v: VolumeInfo, fd: number): void {
    if (this.closed) return;
    check("volume", native().cn_journal_add_volume(this.ptr, v.id, BigInt(v.size), BigInt(v.lastSeq), fd));
  }

  /** @internal SyncBegin / SyncEnd markers, reported once the mirror image holding them is synced */
  onMarker(fn: (volume: number, kind: Kind.SyncBegin | Kind.SyncEnd) => void): void {
    this.markerListener = fn;
  }

  /** Finds or registers a volume. A known volume whose size changed is refused. */
  async registerVolume(agent: string, name: string, size: number, mirrorPath: string): Promise<VolumeInfo> {
    for (const v of this.vols.values()) {
      if (v.agent !== agent || v.name !== name) continue;
      if (v.size !== size) {
        throw new Error(
          `volume ${agent}/${name} is ${size} bytes but the gateway's copy is ${v.size} bytes; ` +
            "a protected volume cannot change size",
        );
      }
      return v;
    }
    const [row] = await serialized(
      this.db,
      () =>
        this.db.insert(volumes).values({ agent, name, size, mirrorPath, createdAt: Date.now() }).returning(),
    );
    const v: VolumeInfo = {
      id: row.id,
      agent,
      name,
      size,
      mirrorPath,
      lastSeq: 0,
      durableSeq: 0,
      known: false,
      retired: false,
    };
    if (this.closed) throw new Error("journal closed");
    check("volume", native().cn_journal_add_volume(this.ptr, v.id, BigInt(size), 0n, -1));
    this.vols.set(v.id, v);
    return v;
  }

  /**
   * Marks a volume retired (no remote site receives it) or carried again, persistently. Nothing
   * is deleted: its records stay until every reader released them, its images stay in place.
   */
  async retire(id: number, retired: boolean): Promise<void> {
    const v = this.vols.get(id);
    if (!v || v.retired === retired) return;
    await serialized(
      this.db,
      () => this.db.update(volumes).set({ retired: retired ? 1 : 0 }).where(eq(volumes.id, id)),
    );
    v.retired = retired;
  }

  onDurable(fn: DurableListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Called (at most every 100 ms) while appends wait for space: a reader may choose to give way. */
  onPressure(fn: (blockingTail: number) => void): () => void {
    this.pressureListeners.add(fn);
    return () => this.pressureListeners.delete(fn);
  }

  /**
   * Appends a record whose bytes (header + payload) were verified by the caller (a remote
   * site's stream); the bytes are copied before this returns. Resolves once the record is in the
   * ring; waits while the ring is full. The header's volume and position are restamped for the
   * journal. Records appended in one turn of the event loop go to the data plane together.
   */
  append(volume: number, bytes: Uint8Array, header: RecordHeader): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new Error("journal closed"));
    const v = this.vols.get(volume);
    if (!v) return Promise.reject(new Error(`append to unknown volume ${volume}`));
    this.stageBytes(bytes);
    return new Promise((resolve, reject) => {
      this.appendQueue.push({ v, length: bytes.length, header, done: (e) => e ? reject(e) : resolve() });
      this.appending ??= Promise.resolve().then(() => this.appendBatch());
    });
  }

  /** Copies bytes after those of the queued appends (the stage grows to hold them). */
  private stageBytes(bytes: Uint8Array): void {
    this.filling = appendBytes(this.filling, this.filled, bytes, STAGE_MAX);
    this.filled += bytes.length;
  }

  private async appendBatch(): Promise<void> {
    while (this.appendQueue.length > 0) {
      const batch = this.appendQueue;
      const buf = this.filling.subarray(0, this.filled);
      // appends made while the data plane takes this batch go to the other stage
      this.appendQueue = [];
      [this.filling, this.spare] = [this.spare, this.filling];
      this.filled = 0;
      const ids = new Uint32Array(batch.map((a) => a.v.id));
      const positions = new BigUint64Array(batch.length);
      const r = Number(
        await native().cn_journal_append(
          this.ptr,
          buf,
          BigInt(buf.length),
          new Uint8Array(ids.buffer),
          batch.length,
          new Uint8Array(positions.buffer),
        ),
      );
      // the first r are in; the next would wait for space: they go again, ahead of later appends
      const done = Math.max(0, r);
      let taken = 0;
      batch.slice(0, done).forEach((a, i) => {
        a.header.volume = a.v.id;
        a.header.pos = Number(positions[i]);
        if (!betweenSeqs(a.header)) a.v.lastSeq = a.header.seq;
        taken += a.length;
        a.done();
      });
      if (r < 0) {
        const err = this.failure ?? new NativeError("journal append", -r);
        for (const a of batch.concat(this.appendQueue)) a.done(err);
        this.appendQueue = [];
        this.filled = 0;
      } else if (done < batch.length) {
        const later = this.filling.slice(0, this.filled);
        this.filled = 0;
        this.stageBytes(buf.subarray(taken));
        this.stageBytes(later);
        this.appendQueue = batch.slice(done).concat(this.appendQueue);
      }
      // a stage grown for one large batch is not kept
      if (this.spare.length > STAGE_MAX) this.spare = new Uint8Array(0);
    }
    this.appending = undefined;
  }

  /** Bytes of a volume's records in the journal. */
  heldBytes(volume: number): number {
    return this.volumeStatus(volume)?.[2] ?? 0;
  }

  /** Sets a volume's bound (undefined: none); appends waiting for it go on if they fit now. */
  setBound(volume: number, bytes: number | undefined): void {
    const v = this.vols.get(volume);
    if (!v || v.bound === bytes) return;
    v.bound = bytes;
    if (!this.closed) native().cn_journal_set_bound(this.ptr, volume, BigInt(bytes ?? 0));
  }

  /** The replication lag bound (0: none): the senders pace their sites in step by it (Cursor.pace). */
  get maxLagMs(): number {
    return this.lagBound;
  }

  /** When the record at pos entered the journal (performance.now() clock), if still known. */
  enteredMono(pos: number): number | undefined {
    if (this.closed) return undefined;
    const ns = Number(native().cn_journal_entered(this.ptr, BigInt(pos)));
    return ns ? ns / 1e6 + this.clock.mono : undefined;
  }

  /** Appends waiting now (for space, a volume's bound, or a paced reader). */
  get waitingAppends(): number {
    return this.status()[8];
  }

  /** The journal moved (commits, the tail, the mirror): durable listeners, readers and waiters, the index. */
  private progress(): void {
    this.wakeReaders();
    if (this.closed) return; // close() writes the last index itself
    const durable = this.positions.durable;
    if (durable === this.durable) return;
    this.durable = durable;
    for (const v of this.vols.values()) {
      this.refresh(v);
      // against what the listeners heard, not v.durableSeq: volume() and the index refresh it too
      if (v.durableSeq === (this.heard.get(v.id) ?? 0)) continue;
      this.heard.set(v.id, v.durableSeq);
      for (const l of this.listeners) l(v.id, v.durableSeq);
    }
    this.index();
  }

  /** Resolves at the journal's next move (or when it closes): a wait on a condition re-checks it then. */
  changed(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((r) => this.dataWaiters.push(r));
  }

  /**
   * Writes the index of what was committed since it last followed: one transaction at a time,
   * at most one per INDEX_INTERVAL_MS (a FLUSH-heavy workload commits thousands of times a
   * second; the ring's checkpoint, not the index, is what makes a commit durable).
   */
  private index(): void {
    if (this.indexing) {
      this.indexAgain = true;
      return;
    }
    const wait = this.indexedAt + INDEX_INTERVAL_MS - performance.now();
    if (wait > 0 && !this.closed) {
      this.indexTimer ??= setTimeout(() => {
        this.indexTimer = undefined;
        this.index();
      }, wait);
      return;
    }
    this.indexedAt = performance.now();
    this.indexing = (async () => {
      const out = new BigUint64Array(6);
      const ids = Math.max(0, ...this.vols.keys()) + 1;
      const at = new BigUint64Array(ids);
      const n = native().cn_journal_take_index(
        this.ptr,
        new Uint8Array(out.buffer),
        new Uint8Array(at.buffer),
        ids,
      );
      const [durable, records, first, last, tail, applied] = [...out].map(Number);
      // each volume's sequence as of `durable`, not of a commit that came after it (a volume the
      // data plane does not have yet keeps its row's)
      const seqs = [...this.vols.keys()]
        .filter((id) => id < n && at[id] !== 0xffff_ffff_ffff_ffffn)
        .map((id) => ({ id, seq: Number(at[id]) }));
      try {
        await this.writeIndex({ records, first, last, durable, tail, applied, seqs });
      } catch (e) {
        // the ring's checkpoint is the truth: a missed index row is written with the next one
        log.warn("journal index not written", { error: e });
      }
    })().finally(() => {
      this.indexing = undefined;
      if (this.indexAgain && !this.closed) {
        this.indexAgain = false;
        this.index();
      }
    });
  }

  /** One row of the index: a snapshot the data plane took at one instant (take_index). */
  private async writeIndex(c: {
    records: number;
    first: number;
    last: number;
    durable: number;
    tail: number;
    applied: number;
    seqs: { id: number; seq: number }[];
  }): Promise<void> {
    const from = this.indexed, to = c.durable, { tail, applied, seqs } = c;
    await serialized(this.db, () =>
      this.db.transaction(async (tx) => {
        if (to > from) {
          await tx.insert(segments).values({
            startPos: from,
            endPos: to,
            records: c.records,
            bytes: to - from,
            firstTime: c.first,
            lastTime: c.last,
          });
        }
        for (const { id, seq } of seqs) {
          await tx.update(volumes).set({ lastSeq: seq }).where(eq(volumes.id, id));
        }
        await tx.update(journalState).set({ head: to, tail, appliedPos: applied }).where(
          eq(journalState.id, 1),
        );
        await tx.delete(segments).where(lte(segments.endPos, tail));
      }));
    this.indexed = Math.max(this.indexed, to);
  }

  /** Wakes every waiting reader (they re-check whether to stop). */
  wakeAll(): void {
    this.wakeReaders();
  }

  private wakeReaders(): void {
    for (const w of this.dataWaiters.splice(0)) w();
  }

  /** Opens (or reopens) a named cursor at pos; required cursors hold the tail back. */
  cursor(name: string, from: number, required = true): Cursor {
    if (this.closed) throw new Error("journal closed");
    this.cursors.get(name)?.drop();
    const { tail, head } = this.positions;
    if (from > head) {
      // the ring lost records this reader had read (unreadable before the checkpoint): it reads on
      // from the head, and a site's sequence past this journal's makes it resynchronise
      log.error("a journal reader's position is past the journal's head", {
        reader: name,
        position: from,
        head,
      });
    }
    const id = native().cn_journal_cursor(this.ptr, BigInt(from), required ? 1 : 0);
    if (id < 0) throw new Error(`journal: too many readers (${name})`);
    const c = new Cursor(this, this.ptr, id, name, Math.min(Math.max(from, tail), head), required);
    this.cursors.set(name, c);
    return c;
  }

  dropCursor(name: string): void {
    this.cursors.get(name)?.drop();
    this.cursors.delete(name);
  }

  /** Entries in [pos, durable), about maxBytes of them; waits for one when there is none. */
  async readFrom(pos: number, maxBytes: number, o: ReadOptions = {}): Promise<JournalEntry[]> {
    const { signal, heads = false, buffers } = o;
    if (this.closed) return [];
    let durable: number;
    while (pos >= (durable = this.positions.durable)) {
      if (this.failure) throw this.failure;
      if (this.closed || signal?.aborted) return [];
      await new Promise<void>((r) => this.dataWaiters.push(r));
    }
    // an abandoned read must not hand out entries: its caller would never apply them
    if (signal?.aborted || this.closed) return [];
    // room for what is there, not for maxBytes: a buffer is zeroed and faulted in as it is made,
    // and a reader that keeps up finds a few records at a time (headers: a read stops where the
    // buffer is full, and the next goes on from there)
    let cap = heads ? HEADS_READ : Math.ceil(Math.min(maxBytes, durable - pos) * 1.5) + 65536;
    for (;;) {
      const buf = buffers?.take(cap) ?? new Uint8Array(cap);
      const n = Number(
        await native().cn_journal_read(
          this.ptr,
          BigInt(pos),
          BigInt(maxBytes),
          buf,
          BigInt(cap),
          heads ? 1 : 0,
        ),
      );
      if (n === -105 /* ENOBUFS: a record larger than the buffer */) {
        cap = 28 + 72 + MAX_PAYLOAD + 65536;
        continue;
      }
      if (n < 0) throw new Error(`journal record at ${pos} is unreadable or corrupt (errno ${-n})`);
      return this.entries(buf, n, heads);
    }
  }

  private entries(buf: Uint8Array, n: number, heads: boolean): JournalEntry[] {
    const v = new DataView(buf.buffer, 0, n);
    const out: JournalEntry[] = [];
    for (let at = 0; at < n;) {
      const pos = Number(v.getBigUint64(at)), end = Number(v.getBigUint64(at + 8));
      const entered = Number(v.getBigUint64(at + 16)) / 1e6;
      const len = v.getUint32(at + 24);
      const held = heads ? Math.min(len, HEADER_SIZE) : len;
      const bytes = buf.subarray(at + 28, at + 28 + held);
      const header = len > 0 ? decodeHeader(bytes, MAX_PAYLOAD) : wrapOf(pos);
      out.push({
        header,
        bytes,
        length: len,
        pos,
        end,
        at: entered ? entered + this.clock.wall : undefined,
        atMono: entered ? entered + this.clock.mono : undefined,
      });
      at += 28 + held;
    }
    return out;
  }

  /** Waits until everything appended so far is durable. */
  async flushed(): Promise<void> {
    if (this.closed) return;
    // appends queued in this turn reach the data plane first
    while (this.appending) await this.appending;
    const r = await native().cn_journal_flush(this.ptr);
    if (r < 0) throw this.failure ?? new NativeError("journal flush", -r);
    // the listeners hear of it before this resolves (the event of the commit may still be on its way)
    this.progress();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.wakeReaders();
    await native().cn_journal_close(this.ptr);
    await this.plane.close();
    // the index follows the last commit before the database is let go
    clearTimeout(this.indexTimer);
    this.indexTimer = undefined;
    await this.indexing;
    this.index();
    await this.indexing;
    this.final = {
      status: this.status(),
      volumes: new Map([...this.vols.keys()].map((id) => [id, this.volumeStatus(id)])),
    };
    for (const c of this.cursors.values()) c.closed = true;
    native().cn_journal_free(this.ptr);
  }
}

function check(op: string, r: number): void {
  if (r < 0) throw new NativeError(op, -r);
}

/** The buffer of a headers-only read: about 650 records' headers. */
const HEADS_READ = 65536;

/** The most an append stage keeps between batches (one grown beyond for a large batch is dropped). */
const STAGE_MAX = 16 << 20;

function wrapOf(pos: number): RecordHeader {
  return { kind: Kind.Wrap, flags: 0, volume: 0, length: 0, seq: 0, offset: 0, time: 0, pos };
}

/** A reader of the journal in order; what it releases may be freed. */
export class Cursor {
  released: number;
  position: number;
  private req: boolean;
  private paceBytes = 0;
  /** @internal the journal is gone: nothing is released any more */
  closed = false;

  constructor(
    private readonly j: Journal,
    private readonly ptr: Deno.PointerValue,
    private readonly id: number,
    readonly name: string,
    from: number,
    required: boolean,
  ) {
    this.released = from;
    this.position = from;
    this.req = required;
  }

  /** Whether it holds journal space (an optional reader that falls behind loses its place). */
  get required(): boolean {
    return this.req;
  }

  set required(r: boolean) {
    this.req = r;
    if (!this.closed) native().cn_journal_cursor_required(this.ptr, this.id, r ? 1 : 0);
  }

  /** The bytes this reader may be behind before appends wait for it (0: not paced). For a site in step. */
  get pace(): number {
    return this.paceBytes;
  }

  set pace(bytes: number) {
    if (bytes === this.paceBytes) return;
    this.paceBytes = bytes;
    if (!this.closed) {
      native().cn_journal_cursor_pace(this.ptr, this.id, BigInt(Math.max(0, Math.round(bytes))));
    }
  }

  /** The next entries (waits for at least one); advances the read position. */
  async next(maxBytes: number, o: ReadOptions = {}): Promise<JournalEntry[]> {
    const out = await this.j.readFrom(this.position, maxBytes, o);
    if (o.signal?.aborted) return [];
    if (out.length > 0) this.position = out[out.length - 1].end;
    return out;
  }

  /** Whether next() would return at once (durable entries past the read position). */
  get ready(): boolean {
    return !this.closed && this.position < this.j.positions.durable;
  }

  /** Marks everything before pos as consumed. */
  release(pos: number): void {
    if (pos <= this.released) return;
    this.released = pos;
    if (!this.closed) native().cn_journal_cursor_release(this.ptr, this.id, BigInt(pos));
  }

  /** Rewinds to pos (a reconnecting reader resumes from what it acknowledged). */
  rewind(pos: number): void {
    this.position = Math.max(pos, this.released);
  }

  /** @internal */
  drop(): void {
    if (!this.closed) native().cn_journal_cursor_drop(this.ptr, this.id);
    this.closed = true;
  }
}
