// The local gateway's write cache: captured records are appended to the ring
// buffer, made durable by group commit (one fdatasync of the ring, then one
// libsql transaction indexing the batch), and read back in order by cursors (the
// mirror applier now, one per remote site later). A record's space is reused only
// when every cursor has released it; a full ring makes appenders wait
// (backpressure), it never drops a record.
import { eq, lte } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { journalState, segments, volumes } from "../db/schema.ts";
import { logger } from "../log.ts";
import { betweenSeqs, FLAG_FUA, Kind, type RecordHeader, restamp } from "../record/record.ts";
import { Ring, type RingEntry } from "./ring.ts";
import { admit, type SeqState } from "../record/sequence.ts";

const log = logger("journal");

export interface JournalEntry extends RingEntry {
  pos: number;
  /** Position right after this entry. */
  end: number;
  /** When it entered this journal (wall clock, ms); absent for entries read back from the ring. */
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
  /**
   * Most bytes of the journal this volume's records may occupy (its task's buffer bound); its
   * appends wait beyond it, as for a full ring. Undefined: the ring is the only bound.
   */
  bound?: number;
}

export interface JournalOptions {
  /** Commit at the latest this long after a write, even without a barrier. */
  commitDelayMs?: number;
  /** Commit as soon as this many bytes wait. */
  commitBytes?: number;
  /** Keep at least the newest this-many bytes even when every cursor is past them. */
  retainBytes?: number;
  /** Recent entries kept in memory for cursors. */
  cacheBytes?: number;
}

type DurableListener = (volume: number, seq: number) => void;

export class Journal {
  private head = 0;
  private written = 0;
  private durable = 0;
  private tail = 0;
  private cache: JournalEntry[] = [];
  private cacheBytes = 0;
  private toWrite: JournalEntry[] = [];
  private writtenSeqs = new Map<number, number>();
  private pendingSeqs = new Map<number, number>();
  /** Records and capture-time range written since the last commit (for its index row). */
  private writtenStats = emptyStats();
  private pendingStats = emptyStats();
  private writing = false;
  private committing: Promise<void> | undefined;
  /** A FLUSH/FUA barrier ends here: commit as soon as the ring holds it. */
  private barrierAt = 0;
  private commitTimer: ReturnType<typeof setTimeout> | undefined;
  /**
   * Appends waiting for space, in arrival order: placed in that order as the ring frees, except
   * that a volume over its bound waits (with its later appends) while the others go on.
   */
  private spaceQueue: { volume: VolumeInfo; len: number; place: () => void; fail: (e: Error) => void }[] = [];
  /** Per volume, its records in the journal (end positions and sizes, oldest first) since this open. */
  private held = new Map<number, { ends: number[]; sizes: number[]; first: number; bytes: number }>();
  private dataWaiters: (() => void)[] = [];
  private listeners = new Set<DurableListener>();
  private pressureListeners = new Set<(tail: number) => void>();
  private lastPressure = 0;
  private pressureTimer: ReturnType<typeof setInterval> | undefined;
  private cursors = new Map<string, Cursor>();
  private vols = new Map<number, VolumeInfo>();
  private closed = false;
  private failure: Error | undefined;
  private opts: Required<JournalOptions>;
  private stateDirty = false;
  private appliedPos = 0;

  private constructor(readonly ring: Ring, private readonly db: Db, opts: JournalOptions) {
    this.opts = {
      commitDelayMs: opts.commitDelayMs ?? 100,
      commitBytes: opts.commitBytes ?? 32 * 1024 * 1024,
      retainBytes: opts.retainBytes ?? 0,
      cacheBytes: opts.cacheBytes ?? 256 * 1024 * 1024,
    };
  }

  /** Opens the journal: checks the ring belongs to this database, then recovers records written after the last index. */
  static async open(db: Db, ringPath: string, ringSize: number, opts: JournalOptions = {}): Promise<Journal> {
    const ring = await Ring.open(ringPath, ringSize);
    const j = new Journal(ring, db, opts);
    try {
      await j.load();
    } catch (e) {
      ring.close();
      throw e;
    }
    return j;
  }

  private async load(): Promise<void> {
    const [state] = await this.db.select().from(journalState).where(eq(journalState.id, 1));
    if (!state) {
      await this.db.insert(journalState).values({
        id: 1,
        ringId: this.ring.id,
        ringSize: this.ring.dataSize,
        tail: 0,
        head: 0,
        appliedPos: 0,
      });
    } else if (state.ringId !== this.ring.id || state.ringSize !== this.ring.dataSize) {
      throw new Error(
        `journal buffer ${this.ring.path} is not the one this database indexed (ring ${this.ring.id}, expected ${state.ringId}); ` +
          "was the buffer device replaced?",
      );
    }
    this.tail = state?.tail ?? 0;
    this.head = this.written = this.durable = state?.head ?? 0;
    for (const v of await this.db.select().from(volumes)) {
      this.vols.set(v.id, {
        id: v.id,
        agent: v.agent,
        name: v.name,
        size: v.size,
        mirrorPath: v.mirrorPath,
        lastSeq: v.lastSeq,
        durableSeq: v.lastSeq,
        known: true,
        retired: v.retired !== 0,
      });
    }
    await this.recover();
  }

  /** Re-indexes records that reached the ring after the last committed index (a crash between fdatasync and commit, or before). */
  private async recover(): Promise<void> {
    let pos = this.durable;
    let count = 0;
    const stats = emptyStats();
    const states = new Map<number, SeqState>();
    while (pos - this.tail < this.ring.dataSize) {
      const e = await this.ring.readAt(pos);
      if (!e) break;
      if (e.header.kind !== Kind.Wrap) {
        const v = this.vols.get(e.header.volume);
        if (!v) break;
        let st = states.get(v.id);
        if (!st) states.set(v.id, st = { lastSeq: v.lastSeq, rebase: false });
        // anything but the next record in sequence is stale data from an earlier lap or a torn write
        if (admit(st, e.header) !== "apply") break;
        count++;
        addStats(stats, e.header.time);
      }
      pos = this.ring.next(pos, e);
    }
    if (pos === this.durable) return;
    this.head = this.written = pos;
    this.writtenStats = stats;
    for (const [id, st] of states) {
      this.writtenSeqs.set(id, st.lastSeq);
      this.vols.get(id)!.lastSeq = st.lastSeq;
    }
    log.info("journal recovered records written before a crash", {
      records: count,
      from: this.durable,
      to: pos,
    });
    await this.commit();
  }

  get positions(): { tail: number; durable: number; head: number; capacity: number } {
    return { tail: this.tail, durable: this.durable, head: this.head, capacity: this.ring.dataSize };
  }

  get error(): Error | undefined {
    return this.failure;
  }

  /** The database holding the journal's index (readers' positions are stored beside it). */
  get database(): Db {
    return this.db;
  }

  volumes(): VolumeInfo[] {
    return [...this.vols.values()];
  }

  volume(id: number): VolumeInfo | undefined {
    return this.vols.get(id);
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

  private signalPressure(): void {
    const now = performance.now();
    if (now - this.lastPressure < 100) return;
    this.lastPressure = now;
    for (const l of this.pressureListeners) l(this.tail);
  }

  private fits(at: number, len: number): boolean {
    return at + len - this.tail <= this.ring.dataSize;
  }

  /**
   * Appends a record whose bytes (header + payload) were verified by the caller.
   * Resolves once it is accepted; waits while the ring is full, behind earlier
   * waiting appends (their order is the journal's order). The header's volume and
   * position are restamped for the journal.
   */
  append(volume: number, bytes: Uint8Array, header: RecordHeader): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new Error("journal closed"));
    const v = this.vols.get(volume);
    if (!v) return Promise.reject(new Error(`append to unknown volume ${volume}`));
    const place = () => this.place(v, bytes, header);
    if (this.spaceQueue.length === 0 && this.fitsNext(bytes.length) && this.withinBound(v, bytes.length)) {
      place();
      return Promise.resolve();
    }
    const placed = new Promise<void>((resolve, reject) => {
      this.spaceQueue.push({
        volume: v,
        len: bytes.length,
        place: () => {
          place();
          resolve();
        },
        fail: reject,
      });
    });
    // behind another volume's wait only, it is placed now
    this.placeWaiting();
    if (this.spaceQueue.length > 0) {
      this.signalPressure();
      // keep asking while appends wait: a reader may become able to give way later
      this.pressureTimer ??= setInterval(() => this.signalPressure(), 100);
    }
    return placed;
  }

  /** Whether a volume may take `len` more bytes under its bound (one record always fits an empty one). */
  private withinBound(v: VolumeInfo, len: number): boolean {
    const held = this.heldBytes(v.id);
    return v.bound === undefined || held === 0 || held + len <= v.bound;
  }

  /** Bytes of a volume's records in the journal (those appended since this open). */
  heldBytes(volume: number): number {
    return this.held.get(volume)?.bytes ?? 0;
  }

  /** Sets a volume's bound (undefined: none); appends waiting for it go on if they fit now. */
  setBound(volume: number, bytes: number | undefined): void {
    const v = this.vols.get(volume);
    if (!v || v.bound === bytes) return;
    v.bound = bytes;
    this.placeWaiting();
  }

  private hold(volume: number, end: number, len: number): void {
    let q = this.held.get(volume);
    if (!q) this.held.set(volume, q = { ends: [], sizes: [], first: 0, bytes: 0 });
    q.ends.push(end);
    q.sizes.push(len);
    q.bytes += len;
  }

  /** Forgets the records the tail passed. */
  private releaseHeld(): void {
    for (const q of this.held.values()) {
      while (q.first < q.ends.length && q.ends[q.first] <= this.tail) q.bytes -= q.sizes[q.first++];
      if (q.first > 4096 && q.first * 2 > q.ends.length) {
        q.ends = q.ends.slice(q.first);
        q.sizes = q.sizes.slice(q.first);
        q.first = 0;
      }
    }
  }

  private fitsNext(len: number): boolean {
    return this.fits(this.ring.place(this.head, len).at, len);
  }

  /** Places waiting appends, in order, while they fit (a volume over its bound is passed by). */
  private placeWaiting(): void {
    const over = new Set<VolumeInfo>();
    for (let i = 0; i < this.spaceQueue.length;) {
      const w = this.spaceQueue[i];
      if (over.has(w.volume) || !this.withinBound(w.volume, w.len)) {
        over.add(w.volume);
        i++;
        continue;
      }
      if (!this.fitsNext(w.len)) break;
      this.spaceQueue.splice(i, 1);
      w.place();
    }
    if (this.spaceQueue.length === 0 && this.pressureTimer) {
      clearInterval(this.pressureTimer);
      this.pressureTimer = undefined;
    }
  }

  private place(v: VolumeInfo, bytes: Uint8Array, header: RecordHeader): void {
    const place = this.ring.place(this.head, bytes.length);
    if (place.filler) this.push({ ...place.filler, header: wrapOf(place.filler.pos) }, place.at);
    restamp(bytes, v.id, place.at);
    header.volume = v.id;
    header.pos = place.at;
    this.push({ pos: place.at, bytes, header }, place.at + bytes.length);
    this.hold(v.id, place.at + bytes.length, bytes.length);
    if (!betweenSeqs(header)) v.lastSeq = header.seq;
    this.pendingSeqs.set(v.id, v.lastSeq);
    addStats(this.pendingStats, header.time);
    if (header.kind === Kind.Flush || (header.flags & FLAG_FUA)) this.barrierAt = this.head;
    this.kickWriter();
  }

  private push(e: { pos: number; bytes: Uint8Array; header: RecordHeader }, end: number): void {
    const entry: JournalEntry = { ...e, end, at: Date.now(), atMono: performance.now() };
    this.cache.push(entry);
    this.cacheBytes += e.bytes.length;
    this.toWrite.push(entry);
    this.head = end;
  }

  private kickWriter(): void {
    if (!this.writing) this.writeLoop();
  }

  private async writeLoop(): Promise<void> {
    this.writing = true;
    try {
      while (this.toWrite.length > 0 && !this.failure) {
        const batch = this.toWrite;
        this.toWrite = [];
        const seqs = this.pendingSeqs;
        this.pendingSeqs = new Map();
        const stats = this.pendingStats;
        this.pendingStats = emptyStats();
        await this.ring.write(batch);
        this.written = batch[batch.length - 1].end;
        for (const [id, seq] of seqs) this.writtenSeqs.set(id, seq);
        mergeStats(this.writtenStats, stats);
        if (this.cacheBytes > this.opts.cacheBytes) this.trimCache();
        this.scheduleCommit();
      }
    } catch (e) {
      this.fail(e as Error);
    } finally {
      this.writing = false;
    }
  }

  /** Commits now when a barrier is written or enough bytes wait; otherwise after the commit delay. */
  private scheduleCommit(): void {
    if (this.written <= this.durable && !this.stateDirty) return;
    const urgent = (this.barrierAt > this.durable && this.written >= this.barrierAt) ||
      this.written - this.durable >= this.opts.commitBytes;
    if (urgent) {
      clearTimeout(this.commitTimer);
      this.commitTimer = undefined;
      this.commit();
    } else if (!this.commitTimer) {
      this.commitTimer = setTimeout(() => {
        this.commitTimer = undefined;
        this.commit();
      }, this.opts.commitDelayMs);
    }
  }

  /** Group commit: fdatasync the ring, then index everything written in one transaction. Returns when no commit runs. */
  commit(): Promise<void> {
    if (this.failure) return Promise.resolve();
    if (!this.committing) {
      this.committing = this.commitLoop().finally(() => {
        this.committing = undefined;
        // what was written (or a barrier that arrived) during the commit is served next
        if (!this.failure) this.scheduleCommit();
      });
    }
    return this.committing;
  }

  private async commitLoop(): Promise<void> {
    try {
      while ((this.written > this.durable || this.stateDirty) && !this.failure) {
        const target = this.written;
        const seqs = this.writtenSeqs;
        this.writtenSeqs = new Map();
        const stats = this.writtenStats;
        this.writtenStats = emptyStats();
        this.stateDirty = false;
        if (target > this.durable) await this.ring.sync();
        const from = this.durable;
        const tail = this.tail;
        await serialized(this.db, () =>
          this.db.transaction(async (tx) => {
            if (target > from) {
              await tx.insert(segments).values({
                startPos: from,
                endPos: target,
                records: stats.records,
                bytes: target - from,
                firstTime: stats.first,
                lastTime: stats.last,
              });
            }
            for (const [id, seq] of seqs) {
              await tx.update(volumes).set({ lastSeq: seq }).where(eq(volumes.id, id));
            }
            await tx.update(journalState).set({ head: target, tail, appliedPos: this.appliedPos })
              .where(eq(journalState.id, 1));
            await tx.delete(segments).where(lte(segments.endPos, tail));
          }));
        this.durable = target;
        for (const [id, seq] of seqs) {
          const v = this.vols.get(id);
          if (v) v.durableSeq = seq;
          for (const l of this.listeners) l(id, seq);
        }
        this.wakeReaders();
      }
    } catch (e) {
      this.fail(e as Error);
    }
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    log.error("journal failed; refusing further records", { error: e });
    clearInterval(this.pressureTimer);
    for (const w of this.spaceQueue.splice(0)) w.fail(e);
    this.wakeReaders();
  }

  /** Wakes every waiting reader (they re-check whether to stop). */
  wakeAll(): void {
    this.wakeReaders();
  }

  private wakeReaders(): void {
    for (const w of this.dataWaiters.splice(0)) w();
  }

  /** Opens (or reopens) a named cursor at pos; cursors hold the tail back. */
  cursor(name: string, from: number, required = true): Cursor {
    const c = new Cursor(this, name, Math.max(from, this.tail), required);
    this.cursors.set(name, c);
    return c;
  }

  dropCursor(name: string): void {
    this.cursors.delete(name);
    this.advanceTail();
  }

  /** Entries in [pos, durable), at most about maxBytes; waits for one when there is none. */
  async readFrom(pos: number, maxBytes: number, signal?: { aborted: boolean }): Promise<JournalEntry[]> {
    while (pos >= this.durable) {
      if (this.failure) throw this.failure;
      if (this.closed || signal?.aborted) return [];
      await new Promise<void>((r) => this.dataWaiters.push(r));
    }
    // an abandoned read must not hand out entries: its caller would never apply them
    if (signal?.aborted) return [];
    const out: JournalEntry[] = [];
    let bytes = 0;
    const first = this.cache.length > 0 ? this.cache[0].pos : this.head;
    if (pos >= first) {
      let i = lowerBound(this.cache, pos);
      for (; i < this.cache.length && bytes < maxBytes; i++) {
        const e = this.cache[i];
        if (e.pos >= this.durable) break;
        out.push(e);
        bytes += e.bytes.length;
      }
      return out;
    }
    // older than the memory cache: read from the ring
    let p = pos;
    while (p < this.durable && p < first && bytes < maxBytes) {
      const run = await this.ring.readRun(p, Math.min(this.durable, first), maxBytes - bytes);
      if (run.length === 0) throw new Error(`journal record at ${p} is unreadable or corrupt`);
      for (const { entry } of run) {
        const end = this.ring.next(p, entry);
        out.push({ ...entry, pos: p, end });
        bytes += entry.bytes.length;
        p = end;
      }
    }
    return out;
  }

  /** Called by cursors when they release positions. */
  advanceTail(): void {
    let min = this.durable;
    for (const c of this.cursors.values()) if (c.required) min = Math.min(min, c.released);
    const candidate = Math.min(min, this.durable - this.opts.retainBytes);
    if (candidate <= this.tail) return;
    this.tail = candidate;
    this.stateDirty = true;
    this.releaseHeld();
    this.trimCache();
    this.placeWaiting();
    this.scheduleCommit();
  }

  setAppliedPos(pos: number): void {
    this.appliedPos = pos;
    this.stateDirty = true;
  }

  async storedAppliedPos(): Promise<number> {
    const [s] = await this.db.select().from(journalState).where(eq(journalState.id, 1));
    this.appliedPos = Math.max(s?.appliedPos ?? 0, this.tail);
    return this.appliedPos;
  }

  private trimCache(): void {
    let drop = 0;
    while (drop < this.cache.length) {
      const e = this.cache[drop];
      const released = e.end <= this.tail;
      // over budget, entries already in the ring may go: late readers read them from there
      const overBudget = this.cacheBytes > this.opts.cacheBytes && e.end <= this.written;
      if (!released && !overBudget) break;
      this.cacheBytes -= e.bytes.length;
      drop++;
    }
    if (drop > 0) this.cache.splice(0, drop);
  }

  /** Waits until everything appended so far is durable. */
  async flushed(): Promise<void> {
    const target = this.head;
    if (target > this.barrierAt) this.barrierAt = target;
    this.kickWriter();
    this.scheduleCommit();
    while (this.durable < target) {
      if (this.failure) throw this.failure;
      await new Promise<void>((r) => this.dataWaiters.push(r));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (!this.failure) {
      try {
        await this.flushed();
        // state changes (tail, applied position) after the last commit, and any commit in flight
        this.stateDirty = true;
        while (this.committing || this.written > this.durable || this.stateDirty) await this.commit();
      } catch { /* already logged */ }
    }
    this.closed = true;
    clearTimeout(this.commitTimer);
    clearInterval(this.pressureTimer);
    this.wakeReaders();
    for (const w of this.spaceQueue.splice(0)) w.fail(new Error("journal closed"));
    this.ring.close();
  }
}

interface Stats {
  records: number;
  first: number;
  last: number;
}

function emptyStats(): Stats {
  return { records: 0, first: 0, last: 0 };
}

function addStats(s: Stats, time: number): void {
  s.records++;
  if (s.first === 0) s.first = time;
  s.last = time;
}

function mergeStats(into: Stats, s: Stats): void {
  if (s.records === 0) return;
  into.records += s.records;
  if (into.first === 0) into.first = s.first;
  into.last = s.last;
}

/** A reader of the journal in order; what it releases may be freed. */
export class Cursor {
  released: number;
  position: number;
  /** Whether it holds journal space (an optional reader that falls behind loses its place). */
  constructor(private readonly j: Journal, readonly name: string, from: number, public required: boolean) {
    this.released = from;
    this.position = from;
  }

  /** The next entries (waits for at least one); advances the read position. */
  async next(maxBytes: number, signal?: { aborted: boolean }): Promise<JournalEntry[]> {
    const out = await this.j.readFrom(this.position, maxBytes, signal);
    if (signal?.aborted) return [];
    if (out.length > 0) this.position = out[out.length - 1].end;
    return out;
  }

  /** Marks everything before pos as consumed. */
  release(pos: number): void {
    if (pos <= this.released) return;
    this.released = pos;
    this.j.advanceTail();
  }

  /** Rewinds to pos (a reconnecting reader resumes from what it acknowledged). */
  rewind(pos: number): void {
    this.position = Math.max(pos, this.released);
  }
}

function lowerBound(a: JournalEntry[], pos: number): number {
  let lo = 0, hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid].pos < pos) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function wrapOf(pos: number): RecordHeader {
  return { kind: Kind.Wrap, flags: 0, volume: 0, length: 0, seq: 0, offset: 0, time: 0, pos };
}
