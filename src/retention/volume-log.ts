// One volume's retention at a remote site: a base image (the oldest point) and the redo log of
// every record the site took since, in segment files of whole records. A copy at a point is the
// base image (a reflink where the filesystem can) plus the log replayed to the point's record.
// Expiry folds the oldest segments into the base. Records are self-verifying, so the log is
// scanned at open (a torn tail is cut off) and each payload is verified again when replayed.
//
// Layout of DIR: base.img, base.json ({seq, time, logStart, consistent, folding?}),
// names.json (checkpoint name → sequence), and 0000000000000000.seg … named by log offset.
import { appendBytes } from "../io/append-bytes.ts";
import { NAME_HINT, NAME_RE } from "../names.ts";
import { logger } from "../log.ts";
import * as native from "../native/mod.ts";
import {
  decodeHeader,
  HEADER_SIZE,
  type Kind,
  MAX_PAYLOAD,
  payloadIntact,
  payloadLength,
  recordOp,
} from "../record/record.ts";
import { admit, type SeqState } from "../record/sequence.ts";
import { copyImage } from "../volume/copy.ts";
import { Volume } from "../volume/volume.ts";
import { type ExpiryPlan, planExpiry, type RetentionPolicy, type Segment } from "./expiry.ts";
import { type Base, type Point, PointError, PointIndex } from "./points.ts";

const log = logger("retention");

interface SegmentFile extends Segment {
  path: string;
}

/**
 * What a seed wrote as the base image. `rebase`: its sequence is not known (a rebasing
 * resynchronisation made it): it is the one before the next captured write.
 */
export interface Seed {
  seq: number;
  time: number;
  consistent: boolean;
  rebase?: boolean;
}

interface BaseFile extends Base {
  /** A fold to this offset was begun: at open it is completed (replaying is idempotent). */
  folding?: number;
}

/** Runs jobs one at a time. */
class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(job: () => Promise<T>): Promise<T> {
    const p = this.tail.then(job);
    // a job's failure reaches its caller through p; the next job runs all the same
    this.tail = p.catch(() => {});
    return p;
  }
}

export interface RecordHeaderLite {
  kind: Kind;
  flags: number;
  seq: number;
  time: number;
}

export class VolumeLog {
  /** The records taken since the last flush, one after another (copied in: the caller reuses its buffers). */
  private pending = new Uint8Array(0);
  private pendingBytes = 0;
  private active: Deno.FsFile | undefined;
  private activeSeg: SegmentFile | undefined;
  /** Appends (flush, close). */
  private readonly io = new Serial();
  /** The base image and the sealed segments (copies at a point, folds): appends go on meanwhile. */
  private readonly baseLock = new Serial();
  /** Expired points given up for space while the window would still keep them. */
  forced = 0;
  readonly names: Map<string, number>;

  private constructor(
    readonly dir: string,
    readonly size: number,
    readonly index: PointIndex,
    private segments: SegmentFile[],
    private readonly seq: SeqState,
    names: Map<string, number>,
    private readonly segmentBytes: number,
  ) {
    this.names = names;
  }

  /**
   * Opens a volume's retention in `dir`, creating it with `seed` (which writes the base image at
   * the path it is given and says which sequence it holds) when there is none.
   */
  static async open(
    dir: string,
    size: number,
    seed: (into: string) => Promise<Seed>,
    segmentBytes = 64 << 20,
  ): Promise<VolumeLog> {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    let base = await readJson<BaseFile>(`${dir}/base.json`);
    const segPaths: string[] = [];
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && /^[0-9a-f]{16}\.seg$/.test(e.name)) segPaths.push(e.name);
    }
    segPaths.sort();
    if (!base) {
      // segments without a base cannot be replayed onto anything: a seed starts over
      if (segPaths.length) log.warn("retention segments without a base image: discarded", { dir });
      for (const s of segPaths) await Deno.remove(`${dir}/${s}`);
      segPaths.length = 0;
      const s = await seed(`${dir}/base.img`);
      base = {
        seq: s.seq,
        time: s.time,
        logStart: 0,
        consistent: s.consistent,
        ...(s.rebase ? { rebase: true } : {}),
      };
      await writeJson(`${dir}/base.json`, base);
    }
    const { folding: _, ...known } = base;
    const index = new PointIndex(known);
    const st: SeqState = { lastSeq: base.seq, rebase: !base.consistent || base.rebase === true };
    const segments: SegmentFile[] = [];
    for (const [i, name] of segPaths.entries()) {
      const start = parseInt(name.slice(0, 16), 16);
      const path = `${dir}/${name}`;
      const bytes = await Deno.readFile(path);
      let off = 0, newestTime = 0;
      while (off + HEADER_SIZE <= bytes.length) {
        let h;
        try {
          h = decodeHeader(bytes.subarray(off, off + HEADER_SIZE), MAX_PAYLOAD);
        } catch {
          break;
        }
        const len = HEADER_SIZE + payloadLength(h);
        if (off + len > bytes.length) break;
        // records the base already holds (a fold that was begun) are not indexed again
        if (start + off + len > base.logStart) {
          admit(st, h);
          index.add(h, start + off + len);
        }
        newestTime = h.time;
        off += len;
      }
      if (off < bytes.length) {
        if (i !== segPaths.length - 1) throw new Error(`retention segment ${path} is damaged at byte ${off}`);
        // a torn tail: never acknowledged (the site acknowledges only what is synced here)
        await Deno.truncate(path, off);
        log.warn("retention log: torn tail cut off", { path, at: off, lost: bytes.length - off });
      }
      // an empty segment (torn to nothing) holds no record, and its name is the next one's
      if (off === 0) await Deno.remove(path);
      else segments.push({ path, start, end: start + off, newestTime });
    }
    const names = new Map(Object.entries(await readJson<Record<string, number>>(`${dir}/names.json`) ?? {}));
    const vl = new VolumeLog(dir, size, index, segments, st, names, segmentBytes);
    if (base.folding !== undefined) await vl.foldTo(base.folding);
    return vl;
  }

  /** Takes a record the site received, by the same acceptance rule as every copy. False: a duplicate. */
  take(body: Uint8Array, h: RecordHeaderLite): boolean {
    const verdict = admit(this.seq, h);
    if (verdict === "skip") return false;
    if (verdict === "gap") {
      throw new Error(`retention: record ${h.seq} out of sequence (have ${this.seq.lastSeq})`);
    }
    this.pending = appendBytes(this.pending, this.pendingBytes, body);
    this.pendingBytes += body.length;
    this.index.add(h, this.index.end + body.length);
    return true;
  }

  /** Bytes held in segments (what the space bound counts). */
  get bytes(): number {
    const first = this.segments[0]?.start ?? this.index.base.logStart;
    return this.index.end - first;
  }

  /** Writes the records taken so far and makes them durable. */
  flush(): Promise<void> {
    return this.io.run(() => this.flushNow());
  }

  private async flushNow(): Promise<void> {
    if (this.pendingBytes === 0) return;
    const all = this.pending.subarray(0, this.pendingBytes);
    // what is taken while this one writes goes to a buffer of its own, as large as this flush's bytes
    this.pending = new Uint8Array(this.pendingBytes);
    this.pendingBytes = 0;
    if (!this.active) {
      // always a new segment: the ones before are sealed, so a fold may take them meanwhile
      const start = this.segments.length
        ? this.segments[this.segments.length - 1].end
        : this.index.base.logStart;
      const path = `${this.dir}/${start.toString(16).padStart(16, "0")}.seg`;
      this.activeSeg = { path, start, end: start, newestTime: 0 };
      this.segments.push(this.activeSeg);
      this.active = await Deno.open(path, { write: true, create: true, append: true, mode: 0o600 });
      await syncDir(this.dir);
    }
    for (let w = 0; w < all.length;) w += await this.active.write(all.subarray(w));
    await this.active.syncData();
    const seg = this.activeSeg!;
    seg.end += all.length;
    seg.newestTime = this.index.newestTime;
    if (seg.end - seg.start >= this.segmentBytes) {
      this.active.close();
      this.active = undefined;
      this.activeSeg = undefined;
    }
  }

  /** The point for a sequence number or a checkpoint name. */
  resolve(which: number | string): Point {
    if (typeof which === "string") {
      const seq = this.names.get(which);
      if (seq === undefined) throw new PointError(`no checkpoint named "${which}" here`, "unknown");
      const p = this.index.resolve(seq);
      return { ...p, names: this.namesAt(seq) };
    }
    return { ...this.index.resolve(which), names: this.namesAt(which) };
  }

  /** Barriers, resynchronisation ends and checkpoints held, oldest first. */
  points(limit = 1000): Point[] {
    const out = this.index.points(limit).map((p) => ({ ...p, names: this.namesAt(p.seq) }));
    // checkpoints at records that are not barriers are points too
    const listed = new Set(out.map((p) => p.seq));
    for (const [, seq] of this.names) {
      if (listed.has(seq)) continue;
      try {
        out.push({ ...this.index.resolve(seq), names: this.namesAt(seq) });
        listed.add(seq);
      } catch { /* expired or not held yet */ }
    }
    return out.sort((a, b) => a.end - b.end);
  }

  private namesAt(seq: number): string[] | undefined {
    const n = [...this.names].filter(([, s]) => s === seq).map(([k]) => k);
    return n.length ? n : undefined;
  }

  /**
   * Names a sequence (the same checkpoint marks the same sequence at every site). A name of a point
   * that expired here is not kept: the stream sends names again at each session.
   */
  async checkpoint(name: string, seq: number): Promise<void> {
    if (!NAME_RE.test(name)) throw new Error(`checkpoint name "${name}": ${NAME_HINT}`);
    const had = this.names.get(name);
    const base = this.index.base;
    if (had === seq || (had === undefined && !base.rebase && seq < base.seq)) return;
    if (had !== undefined) throw new Error(`checkpoint "${name}" already names sequence ${had}`);
    this.names.set(name, seq);
    await writeJson(`${this.dir}/names.json`, Object.fromEntries(this.names));
  }

  /** Writes the copy at `point` into the new file `into`. */
  async materialize(point: Point, into: string): Promise<void> {
    await this.flush();
    return await this.baseLock.run(async () => {
      if (point.end < this.index.base.logStart) {
        throw new PointError(
          `point ${point.seq} has expired: the oldest point held is ${this.index.base.seq}`,
          "expired",
        );
      }
      await copyImage(`${this.dir}/base.img`, into);
      const v = Volume.open(into);
      try {
        await this.replay(v.fd, this.index.base.logStart, point.end);
        await native.fdatasync(v.fd);
      } finally {
        v.close();
      }
    });
  }

  /** Applies the log's records in [from, to) to an image. */
  private async replay(fd: number, from: number, to: number): Promise<void> {
    for (const s of this.segments) {
      if (s.end <= from || s.start >= to) continue;
      const bytes = await Deno.readFile(s.path);
      const ops = [];
      let off = Math.max(0, from - s.start);
      const stop = Math.min(s.end, to) - s.start;
      while (off < stop) {
        const h = decodeHeader(bytes.subarray(off, off + HEADER_SIZE), MAX_PAYLOAD);
        const len = HEADER_SIZE + payloadLength(h);
        const rec = bytes.subarray(off, off + len);
        if (!payloadIntact(rec, h)) {
          throw new Error(`retention segment ${s.path}: record ${h.seq} at byte ${off} is damaged`);
        }
        const op = recordOp(h, rec);
        if (op) ops.push(op);
        off += len;
      }
      await native.applyBatch(fd, ops);
    }
  }

  /** Expires what the policy no longer keeps (whole sealed segments, oldest first). */
  expire(policy: RetentionPolicy, now: number): Promise<ExpiryPlan> {
    return this.baseLock.run(async () => {
      const sealed = this.segments.filter((s) => s !== this.activeSeg);
      const plan = planExpiry(sealed, this.bytes, policy, now);
      if (plan.segments > 0) {
        await this.foldTo(plan.upTo);
        if (plan.forced) this.forced++;
      }
      return plan;
    });
  }

  private async foldTo(upTo: number): Promise<void> {
    const from = this.index.base.logStart;
    await writeJson(`${this.dir}/base.json`, { ...this.index.base, folding: upTo });
    const base = Volume.open(`${this.dir}/base.img`);
    try {
      await this.replay(base.fd, from, upTo);
      await native.fdatasync(base.fd);
    } finally {
      base.close();
    }
    const b = this.index.fold(upTo);
    await writeJson(`${this.dir}/base.json`, b);
    // exactly the sealed segments folded: one opened meanwhile for appends stays
    const gone = this.segments.filter((s) => s.end <= upTo && s !== this.activeSeg);
    for (const s of gone) await Deno.remove(s.path);
    this.segments = this.segments.filter((s) => !gone.includes(s));
    for (const [n, seq] of this.names) if (seq < b.seq) this.names.delete(n);
    await writeJson(`${this.dir}/names.json`, Object.fromEntries(this.names));
  }

  close(): Promise<void> {
    return this.io.run(async () => {
      await this.flushNow();
      this.active?.close();
      this.active = undefined;
      this.activeSeg = undefined;
    });
  }
}

async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as T;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

/** Replaces a small file atomically and durably. */
async function writeJson(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    await f.write(new TextEncoder().encode(JSON.stringify(value)));
    await f.syncData();
  } finally {
    f.close();
  }
  await Deno.rename(tmp, path);
  await syncDir(path.slice(0, path.lastIndexOf("/")));
}

async function syncDir(dir: string): Promise<void> {
  const d = await Deno.open(dir, { read: true });
  try {
    await d.sync();
  } finally {
    d.close();
  }
}
