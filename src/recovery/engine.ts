// Copies a volume from one or more source copies to a target copy, chunk by chunk.
// Three methods: `full` moves every chunk; `scan` hashes both ends and moves the
// chunks that differ, the copying starting while the scan goes on; `tracked` moves
// a set of chunks known to hold every difference (no scan) and audits a sample of
// the rest, falling back to a scan if the sample finds one it missed. Chunks are
// pulled from every source at once, each source taking the next chunk as soon as
// it is free, so a faster source takes a larger share and a failed one leaves its
// work to the others. The first source is the reference: the scan and the
// verification compare against it. Progress, checkpoints (an interrupted run
// resumes where it stopped) and verification by hash.
import { Changes } from "../io/changes.ts";
import * as native from "../native/mod.ts";
import { type ChunkStore, type LocalFile, SourceReadError } from "./chunk-ops.ts";

export type Strategy = "full" | "fast";
export type Method = "full" | "scan" | "tracked";

export interface SourceProgress {
  name: string;
  bytesMoved: number;
  chunks: number;
  rateBps: number;
  state: "active" | "failed";
  error?: string;
}

export interface Progress {
  phase: "copying" | "verifying" | "done";
  method: Method;
  chunks: number;
  /** Chunks settled: compared (or known equal) and, where they differed, copied. */
  done: number;
  bytesCompared: number;
  /** Bytes known to need moving so far (a scan finds more as it goes). */
  bytesToMove: number;
  bytesMoved: number;
  rateBps: number;
  etaMs: number | null;
  sources: SourceProgress[];
}

export interface NamedSource {
  name: string;
  store: ChunkStore;
}

export type Verify = "moved" | "full" | "none";

export interface EngineOptions {
  /** Every copy the chunks may come from; the first is the reference. */
  sources: NamedSource[];
  target: ChunkStore;
  strategy: Strategy;
  chunkSize: number;
  /** Chunks outside this set are known equal on both ends (a tracked divergence): no scan. */
  tracked?: readonly number[];
  /** Chunk to start from (a checkpoint). */
  from?: number;
  /** Counters carried over from before a resume. */
  bytesCompared?: number;
  bytesMoved?: number;
  /** Persist a checkpoint: every chunk before `next` is done and synced on the target. */
  checkpoint?: (next: number, compared: number, moved: number) => Promise<void>;
  progress?: (p: Progress) => void;
  /** Chunks hashed per request. */
  window?: number;
  /** Scan requests in flight beyond the one being compared. */
  scanAhead?: number;
  /** Reads and writes in flight per source. */
  parallel?: number;
  /** `moved` re-hashes the chunks written (and audits a sample of the rest when tracked); `full` every chunk. */
  verify?: Verify;
  /** Chunks outside the tracked set sampled by the audit. */
  audit?: number;
  signal?: { aborted: boolean };
}

export interface Outcome {
  method: Method;
  chunks: number;
  bytesCompared: number;
  bytesMoved: number;
  seconds: number;
  verified: boolean;
  /** Chunks outside the tracked set that were hashed on both ends, and how many of them differed. */
  audited: number;
  auditMisses: number;
  sources: SourceProgress[];
}

function sameHash(a: Uint8Array, ai: number, b: Uint8Array, bi: number): boolean {
  for (let k = 0; k < 16; k++) if (a[16 * ai + k] !== b[16 * bi + k]) return false;
  return true;
}

/** Contiguous runs of sorted chunk indexes, each at most `max` long. */
export function runs(list: readonly number[], max: number): { index: number; count: number }[] {
  const out: { index: number; count: number }[] = [];
  for (const j of list) {
    const last = out[out.length - 1];
    if (last && last.index + last.count === j && last.count < max) last.count++;
    else out.push({ index: j, count: 1 });
  }
  return out;
}

/** `n` chunks spread evenly over [0, chunks) that are not in `skip`, from a random phase. */
export function auditSample(chunks: number, skip: ReadonlySet<number>, n: number): number[] {
  const free = chunks - skip.size;
  if (n <= 0 || free <= 0) return [];
  const want = Math.min(n, free);
  const step = chunks / want;
  const phase = Math.random() * step;
  const out = new Set<number>();
  for (let s = 0; s < want; s++) {
    let j = Math.floor(phase + s * step) % chunks;
    while (skip.has(j) || out.has(j)) j = (j + 1) % chunks;
    out.add(j);
  }
  return [...out].sort((a, b) => a - b);
}

/** Chunks per order when the target copies from a local reference itself (CopyPool.copier). */
const COPY_RUN = 8;

/** Beyond this many chunks no per-chunk hash is kept (64 MiB): verification asks the reference instead. */
const MAX_KEPT = 1 << 22;

/** A 16-byte hash per chunk for some chunks, in one flat array (a map of millions of entries is not). */
class HashTable {
  private readonly h: Uint8Array | undefined;
  private readonly has: Uint8Array | undefined;

  constructor(chunks: number) {
    if (chunks > MAX_KEPT) return;
    this.h = new Uint8Array(chunks * 16);
    this.has = new Uint8Array(Math.ceil(chunks / 8));
  }

  set(j: number, from: Uint8Array, at = 0): void {
    if (!this.h || !this.has) return;
    this.h.set(from.subarray(16 * at, 16 * at + 16), 16 * j);
    this.has[j >> 3] |= 1 << (j & 7);
  }

  get(j: number): Uint8Array | undefined {
    if (!this.h || !this.has || !((this.has[j >> 3] >> (j & 7)) & 1)) return undefined;
    return this.h.subarray(16 * j, 16 * j + 16);
  }
}

/** A bit per chunk. */
class ChunkSet {
  private readonly bits: Uint8Array;
  constructor(private readonly chunks: number) {
    this.bits = new Uint8Array(Math.ceil(chunks / 8));
  }
  add(j: number): void {
    this.bits[j >> 3] |= 1 << (j & 7);
  }
  has(j: number): boolean {
    return ((this.bits[j >> 3] >> (j & 7)) & 1) === 1;
  }
  list(): number[] {
    const out: number[] = [];
    for (let j = 0; j < this.chunks; j++) if (this.has(j)) out.push(j);
    return out;
  }
}

class Cancelled extends Error {
  constructor() {
    super("recovery cancelled");
  }
}

/**
 * The copying half: chunks queued in order, taken by every live source's workers.
 * A read that fails retires its source and puts the chunk back for the others.
 */
class CopyPool {
  private queue: number[] = [];
  private head = 0;
  private closed = false;
  private wake: (() => void)[] = [];
  /** A chunk done, or the pool failed: what `below` waits on. */
  private readonly progress = new Changes();
  private failure: Error | undefined;
  private live: number;
  private finished!: () => void;
  private failed!: (e: Error) => void;
  readonly settled = new Promise<void>((res, rej) => {
    this.finished = res;
    this.failed = rej;
  });
  inFlight = 0;
  /** The XXH3-128 of what the chunks moved from the reference carried. */
  readonly fromReference: HashTable;
  readonly stats: SourceProgress[];
  private readonly started = performance.now();

  constructor(
    private readonly sources: NamedSource[],
    private readonly target: ChunkStore,
    private readonly cs: number,
    chunks: number,
    parallel: number,
    private readonly expected: (j: number) => Uint8Array | undefined,
    private readonly onCopied: (j: number, bytes: number) => void,
    private readonly signal?: { aborted: boolean },
  ) {
    this.settled.catch(() => {}); // observed by the caller; never an unhandled rejection
    this.fromReference = new HashTable(chunks);
    this.stats = sources.map((s) => ({
      name: s.name,
      bytesMoved: 0,
      chunks: 0,
      rateBps: 0,
      state: "active" as const,
    }));
    this.live = sources.length;
    sources.forEach((s, si) => {
      // the reference in a local file, to a target that copies from one itself (an agent's disk
      // behind its link): the chunks go through the data plane, never through JavaScript; another
      // source's chunks are compared with the reference's hash before they are written, so not so
      const local = si === 0 && target.copyFrom ? s.store.local : undefined;
      for (let w = 0; w < parallel; w++) {
        (local ? this.copier(si, local) : this.worker(si)).catch((e) => this.fail(e as Error));
      }
    });
  }

  add(list: readonly number[]): void {
    for (const j of list) this.queue.push(j);
    this.wakeAll();
  }

  /** No more chunks will be added; `settled` resolves once the queue is drained. */
  close(): void {
    this.closed = true;
    this.wakeAll();
    this.check();
  }

  get pending(): number {
    return this.queue.length - this.head + this.inFlight;
  }

  /** Waits until at most `limit` chunks are queued or in flight; throws the pool's failure. */
  async below(limit: number): Promise<void> {
    while (this.pending > limit && !this.failure) await this.progress.next();
    if (this.failure) throw this.failure;
  }

  private wakeAll(): void {
    for (const w of this.wake.splice(0)) w();
  }

  private check(): void {
    this.progress.notify();
    if (this.closed && this.pending === 0) {
      this.finished();
      this.wakeAll(); // the workers still waiting for work end
    }
  }

  /** Stops handing out chunks (the caller gave up). */
  halt(e: Error): void {
    this.fail(e);
  }

  private fail(e: Error): void {
    this.failure ??= e;
    this.failed(this.failure);
    this.wakeAll();
    this.progress.notify();
  }

  /**
   * The next chunks queued, up to max, without waiting (after one taken by `take`); counted in
   * flight as they leave the queue, like `take`'s.
   */
  private takeMore(list: number[], max: number): void {
    while (list.length < max && this.head < this.queue.length && !this.failure) {
      list.push(this.queue[this.head++]);
      this.inFlight++;
    }
  }

  /**
   * The next chunk, counted in flight as it leaves the queue, not when the caller resumes a turn
   * later: a chunk taken just before `close` would then leave nothing pending, and the pool would
   * settle before the chunk is written.
   */
  private async take(): Promise<number | undefined> {
    for (;;) {
      if (this.failure) return undefined;
      if (this.head < this.queue.length) {
        const j = this.queue[this.head++];
        this.inFlight++;
        if (this.head > 4096 && this.head * 2 > this.queue.length) {
          this.queue = this.queue.slice(this.head);
          this.head = 0;
        }
        return j;
      }
      // a chunk in flight at another source comes back to the queue if that source fails,
      // so a worker ends only when nothing is in flight either
      if (this.closed && this.inFlight === 0) return undefined;
      await new Promise<void>((r) => this.wake.push(r));
    }
  }

  private async worker(si: number): Promise<void> {
    const src = this.sources[si], stat = this.stats[si];
    // one buffer a worker for local reads: a chunk is done with once written (a link copies it)
    const buf = new Uint8Array(this.cs);
    for (;;) {
      if (stat.state === "failed") return;
      const j = await this.take();
      if (j === undefined) return;
      if (this.signal?.aborted) {
        this.inFlight--;
        throw new Cancelled();
      }
      let data: Uint8Array;
      try {
        data = await src.store.read(this.cs, j, buf);
      } catch (e) {
        this.inFlight--;
        this.giveBack([j]);
        this.retire(si, e as Error);
        return;
      }
      const hash = native.xxh3(data);
      const want = this.expected(j);
      if (want && si !== 0 && !sameHash(want, 0, hash, 0)) {
        // a source that is not at the reference's point: the reference moves this chunk
        this.inFlight--;
        this.giveBack([j]);
        if (this.stats[0].state === "failed") {
          throw new Error(`chunk ${j} of ${src.name} differs from the reference, which is gone`);
        }
        this.retire(si, new Error(`chunk ${j} differs from the reference ${this.sources[0].name}`));
        return;
      }
      await this.target.write(this.cs, j, data);
      if (si === 0) this.fromReference.set(j, hash);
      stat.bytesMoved += data.length;
      stat.chunks++;
      stat.rateBps = stat.bytesMoved / Math.max(1e-3, (performance.now() - this.started) / 1000);
      this.inFlight--;
      this.onCopied(j, data.length);
      this.check();
    }
  }

  /** A worker of a local reference copied by the target itself: a run of chunks per order. */
  private async copier(si: number, file: LocalFile): Promise<void> {
    const stat = this.stats[si];
    for (;;) {
      if (stat.state === "failed") return;
      const j = await this.take();
      if (j === undefined) return;
      const list = [j];
      this.takeMore(list, COPY_RUN);
      if (this.signal?.aborted) {
        this.inFlight -= list.length;
        throw new Cancelled();
      }
      const done = new Set<number>();
      try {
        await this.target.copyFrom!(file, this.cs, list, (c, hash, bytes) => {
          if (done.has(c)) return;
          done.add(c);
          this.fromReference.set(c, hash);
          stat.bytesMoved += bytes;
          stat.chunks++;
          stat.rateBps = stat.bytesMoved / Math.max(1e-3, (performance.now() - this.started) / 1000);
          this.inFlight--;
          this.onCopied(c, bytes);
          this.check();
        });
      } catch (e) {
        const rest = list.filter((c) => !done.has(c));
        this.inFlight -= rest.length;
        if (!(e instanceof SourceReadError)) throw e;
        this.giveBack(rest);
        this.retire(si, e);
        return;
      }
    }
  }

  /** Chunks a source could not move go first to whichever source takes work next. */
  private giveBack(list: number[]): void {
    this.queue.splice(this.head, 0, ...list);
    this.wakeAll();
  }

  private retire(si: number, e: Error): void {
    const stat = this.stats[si];
    if (stat.state === "failed") return;
    stat.state = "failed";
    stat.error = e.message;
    this.live--;
    if (this.live === 0) {
      this.fail(
        new Error(`every source failed: ${this.stats.map((s) => `${s.name}: ${s.error}`).join("; ")}`),
      );
    } else this.wakeAll();
  }
}

/** A unit of work in order: the chunk range it settles and the chunks it needs copied. */
interface Unit {
  end: number;
  pending: number;
  listed: boolean;
}

export async function recover(o: EngineOptions): Promise<Outcome> {
  if (o.sources.length === 0) throw new Error("a recovery needs at least one source");
  const ref = o.sources[0].store;
  const sizes = await Promise.all([o.target.size(), ...o.sources.map((s) => s.store.size())]);
  const targetSize = sizes[0];
  sizes.slice(1).forEach((s, k) => {
    if (s !== targetSize) {
      throw new Error(
        `the source ${
          o.sources[k].name
        } holds ${s} bytes and the target ${targetSize}: copies of one volume must be the same size`,
      );
    }
  });
  const cs = o.chunkSize;
  const chunks = Math.ceil(targetSize / cs);
  const window = o.window ?? Math.max(1, Math.floor((16 << 20) / cs));
  const started = performance.now();
  const from = o.from ?? 0;
  let compared = o.bytesCompared ?? 0, moved = o.bytesMoved ?? 0;
  const startMoved = moved, startCompared = compared;
  const len = (i: number) => Math.min(cs, targetSize - i * cs);
  const rangeBytes = (a: number, b: number) => b <= a ? 0 : Math.min(b * cs, targetSize) - a * cs;
  let method: Method = o.tracked ? "tracked" : o.strategy === "full" ? "full" : "scan";
  let toMove = 0, scanned = from, settledTo = from;
  // the reference's hash of each chunk the scan found differing
  const refHash = new HashTable(chunks);
  const check = () => {
    if (o.signal?.aborted) throw new Cancelled();
  };

  let lastReport = 0;
  let pool: CopyPool | undefined;
  const report = (phase: Progress["phase"], force = false) => {
    const now = performance.now();
    if (!force && now - lastReport < 200) return;
    lastReport = now;
    const secs = (now - started) / 1000;
    const moveRate = secs > 0 ? (moved - startMoved) / secs : 0;
    const scanRate = secs > 0 ? (compared - startCompared) / secs : 0;
    const scanLeft = method === "scan" ? rangeBytes(scanned, chunks) : 0;
    const moveLeft = Math.max(0, toMove - (moved - startMoved));
    const etas = [scanLeft > 0 ? scanLeft / scanRate : 0, moveLeft > 0 ? moveLeft / moveRate : 0];
    o.progress?.({
      phase,
      method,
      chunks,
      done: phase === "copying" ? settledTo : chunks,
      bytesCompared: compared,
      bytesToMove: toMove,
      bytesMoved: moved,
      rateBps: moveRate,
      etaMs: etas.every(Number.isFinite) ? Math.round(Math.max(...etas) * 1000) : null,
      sources: (pool?.stats ?? []).map((s) => ({ ...s })),
    });
  };

  // checkpoints follow the settled prefix, at most every second, one at a time
  const units: Unit[] = [];
  let firstOpen = 0, lastCheckpoint = performance.now();
  let checkpointing: Promise<void> = Promise.resolve();
  const unitOf = new Map<number, Unit>();
  const advance = (force: boolean) => {
    while (firstOpen < units.length && units[firstOpen].listed && units[firstOpen].pending === 0) {
      settledTo = units[firstOpen++].end;
    }
    if (!o.checkpoint || (!force && performance.now() - lastCheckpoint < 1000)) return;
    lastCheckpoint = performance.now();
    const next = settledTo, c = compared, m = moved;
    checkpointing = checkpointing.then(async () => {
      await o.target.sync();
      await o.checkpoint!(next, c, m);
    });
    checkpointing.catch(() => {}); // awaited after the copy phase, where a failure stops the recovery
  };
  const runPool = (expected: (j: number) => Uint8Array | undefined) =>
    new CopyPool(o.sources, o.target, cs, chunks, o.parallel ?? 8, expected, (j, bytes) => {
      moved += bytes;
      const u = unitOf.get(j);
      unitOf.delete(j);
      if (u) u.pending--;
      advance(false);
      report("copying");
    }, o.signal);
  // what verification checks: every chunk handed to a pool, whether or not it reported it moved
  const queued = new ChunkSet(chunks);
  const queue = (u: Unit, list: number[]) => {
    u.pending = list.length;
    u.listed = true;
    for (const j of list) {
      queued.add(j);
      unitOf.set(j, u);
      toMove += len(j);
    }
    pool!.add(list);
    advance(false);
  };

  const copyPhase = async (from: number) => {
    pool = runPool((j) => refHash.get(j));
    try {
      if (method === "tracked") {
        const list = [...new Set(o.tracked!)].filter((j) => j >= from && j < chunks).sort((a, b) => a - b);
        for (let k = 0; k < list.length; k += window) {
          check();
          const part = list.slice(k, k + window);
          const end = k + window >= list.length ? chunks : list[k + window];
          const u: Unit = { end, pending: 0, listed: false };
          units.push(u);
          queue(u, part);
          await pool.below(64 * window);
        }
        if (list.length === 0) units.push({ end: chunks, pending: 0, listed: true });
        compared = (o.bytesCompared ?? 0) + rangeBytes(from, chunks);
        scanned = chunks;
      } else {
        // the scan runs `ahead` windows before the comparison; copies run beside both
        const ahead = o.scanAhead ?? 2;
        const scans: (Promise<Uint8Array[]> | undefined)[] = [];
        const starts: number[] = [];
        for (let i = from; i < chunks; i += window) starts.push(i);
        // after a resume the first window is compared even in `full`: its work may be done already
        const needsScan = (w: number) => method === "scan" || (from > 0 && w === 0);
        const launch = (w: number) => {
          if (w >= starts.length || scans[w] || !needsScan(w)) return;
          const i = starts[w], count = Math.min(window, chunks - i);
          const p = Promise.all([o.target.hashes(cs, i, count), ref.hashes(cs, i, count)]);
          p.catch(() => {}); // awaited in order below
          scans[w] = p;
        };
        for (let w = 0; w < starts.length; w++) {
          check();
          for (let a = w; a <= w + ahead; a++) launch(a);
          const i = starts[w], count = Math.min(window, chunks - i);
          const u: Unit = { end: i + count, pending: 0, listed: false };
          units.push(u);
          let list: number[];
          if (needsScan(w)) {
            const [th, sh] = await scans[w]!;
            scans[w] = undefined;
            list = [];
            for (let k = 0; k < count; k++) {
              if (!sameHash(th, k, sh, k)) {
                list.push(i + k);
                refHash.set(i + k, sh, k);
              }
            }
          } else list = Array.from({ length: count }, (_, k) => i + k);
          compared += rangeBytes(i, i + count);
          scanned = i + count;
          queue(u, list);
          report("copying");
          // bound the queue: a slow copy should not let the scan hold every hash in memory
          await pool.below(64 * window);
        }
      }
      pool.close();
      await pool.settled;
    } catch (e) {
      pool.halt(e as Error);
      check();
      throw e;
    }
    advance(true);
    await checkpointing;
    report("copying", true);
  };

  // the reference's hashes, or (once it failed) those of the first source still there
  const failedSource = (k: number) => pool?.stats[k].state === "failed";
  const hashFromAny = async (index: number, count: number): Promise<Uint8Array> => {
    const errors: string[] = [];
    for (const [k, s] of o.sources.entries()) {
      if (failedSource(k)) continue;
      try {
        return await s.store.hashes(cs, index, count);
      } catch (e) {
        errors.push(`${s.name}: ${(e as Error).message}`);
      }
    }
    throw new Error(`no source left to verify against: ${errors.join("; ")}`);
  };
  // the audit of chunks outside the tracked set runs beside the copy: they are not copied
  const verify = o.verify ?? "moved";
  const sample = verify === "moved" && method === "tracked"
    ? auditSample(chunks, new Set(o.tracked), o.audit ?? 32)
    : [];
  const audit = inParallel(runs(sample, window), 4, async (r) => {
    const [t, h] = await Promise.all([o.target.hashes(cs, r.index, r.count), hashFromAny(r.index, r.count)]);
    return Array.from({ length: r.count }, (_, k) => k).filter((k) => !sameHash(t, k, h, k)).map((k) =>
      r.index + k
    );
  });
  audit.catch(() => {}); // awaited after the copy

  await copyPhase(from);
  const moving = pool!;

  let audited = 0, auditMisses = 0;
  let verified = false;
  if (verify !== "none") {
    report("verifying", true);
    // expected hashes: the scan's, what the reference sent, or the reference's for chunks another source carried
    const expected = async (list: number[]): Promise<Map<number, Uint8Array>> => {
      const out = new Map<number, Uint8Array>();
      const ask: number[] = [];
      for (const j of list) {
        const known = refHash.get(j) ?? moving.fromReference.get(j);
        if (known) out.set(j, known);
        else ask.push(j);
      }
      await inParallel(runs(ask, window), 4, async (r) => {
        const h = await hashFromAny(r.index, r.count);
        for (let k = 0; k < r.count; k++) out.set(r.index + k, h.slice(16 * k, 16 * k + 16));
      });
      return out;
    };
    const differing = async (list: number[]): Promise<number[]> => {
      const want = await expected(list);
      const bad = await inParallel(runs(list, window), 4, async (r) => {
        check();
        const h = await o.target.hashes(cs, r.index, r.count);
        return Array.from({ length: r.count }, (_, k) => r.index + k).filter((j, k) =>
          !sameHash(want.get(j)!, 0, h, k)
        );
      });
      return bad.flat().sort((a, b) => a - b);
    };
    let list: number[];
    if (verify === "full") list = Array.from({ length: chunks }, (_, j) => j);
    else list = queued.list();
    if (verify === "moved" && method === "tracked") {
      audited = sample.length;
      const misses = (await audit).flat();
      auditMisses = misses.length;
      if (misses.length > 0) {
        // the tracked set missed a difference: it cannot be trusted, so scan everything
        method = "scan";
        units.length = 0;
        firstOpen = 0;
        scanned = 0;
        settledTo = 0;
        await copyPhase(0);
        list = queued.list();
      }
    }
    for (let round = 0; round < 2 && !verified; round++) {
      const redo = await differing(list);
      if (redo.length === 0) verified = true;
      else if (round === 0) {
        pool = runPool((j) => refHash.get(j));
        for (const j of redo) toMove += len(j);
        pool.add(redo);
        pool.close();
        await pool.settled;
        await o.target.sync();
        list = redo;
      } else {
        throw new Error(
          `${redo.length} chunks still differ from the source after copying them again (is the source changing?)`,
        );
      }
    }
  } else await o.target.sync();
  report("done", true);
  return {
    method,
    chunks,
    bytesCompared: compared,
    bytesMoved: moved,
    seconds: (performance.now() - started) / 1000,
    verified,
    audited,
    auditMisses,
    sources: (pool?.stats ?? []).map((s) => ({ ...s })),
  };
}

/** fn over every item, at most `limit` at once; the results in the items' order. */
async function inParallel<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const k = next++;
      out[k] = await fn(items[k]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
