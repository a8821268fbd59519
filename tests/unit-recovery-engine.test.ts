// The recovery engine over in-memory copies (no sockets): the scan moves exactly the
// differing chunks and starts moving them before it ends; a tracked recovery moves
// exactly its set and hashes only an audit sample besides, falling back to a scan
// when the sample finds a difference it missed; several sources share the work by
// rate, one killed half-way leaves its chunks to the others; a source at another
// point is caught; resume and cancel; a local reference copied by the target itself
// (copyFrom, as the gateway's data plane does to an agent), across a link that drops.
import { closeSync, openSync } from "node:fs";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as native from "../src/native/mod.ts";
import {
  type ChunkStore,
  copyThrough,
  FileChunks,
  LinkDown,
  type LocalFile,
  relinking,
} from "../src/recovery/chunk-ops.ts";
import { auditSample, type Progress, recover, runs } from "../src/recovery/engine.ts";
import { addRecordChunks, rechunk, union } from "../src/recovery/divergence.ts";
import { decodeChunks, encodeChunks } from "../src/recovery/chunk-ops.ts";
import { Kind, type RecordHeader } from "../src/record/record.ts";
import { shares, summary } from "../ui/recovery-progress.ts";

const t = suite("recovery engine");
const CS = 4096;
const CHUNKS = 256;

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A copy in memory that counts what it is asked and can be slowed or made to fail. */
class MemCopy implements ChunkStore {
  readonly data: Uint8Array;
  reads = 0;
  writes: number[] = [];
  hashed = 0;
  hashCalls: { at: number; index: number; count: number }[] = [];
  writeTimes: number[] = [];
  readDelayMs = 0;
  hashDelayMs = 0;
  failAfterReads = Infinity;

  constructor(bytes: Uint8Array) {
    this.data = bytes.slice();
  }
  size() {
    return Promise.resolve(this.data.length);
  }
  async hashes(cs: number, index: number, count: number) {
    if (this.hashDelayMs) await delay(this.hashDelayMs);
    this.hashed += count;
    this.hashCalls.push({ at: performance.now(), index, count });
    const out = new Uint8Array(16 * count);
    for (let k = 0; k < count; k++) {
      out.set(native.xxh3(this.data.subarray((index + k) * cs, (index + k + 1) * cs)), 16 * k);
    }
    return out;
  }
  async read(cs: number, index: number) {
    if (this.readDelayMs) await delay(this.readDelayMs);
    if (this.reads >= this.failAfterReads) throw new Error("the link to this source is down");
    this.reads++;
    return this.data.slice(index * cs, (index + 1) * cs);
  }
  write(cs: number, index: number, d: Uint8Array) {
    this.data.set(d, index * cs);
    this.writes.push(index);
    this.writeTimes.push(performance.now());
    return Promise.resolve();
  }
  sync() {
    return Promise.resolve();
  }
}

function randomVolume(): Uint8Array {
  const b = new Uint8Array(CS * CHUNKS);
  for (let o = 0; o < b.length; o += 65536) crypto.getRandomValues(b.subarray(o, o + 65536));
  return b;
}

/** Overwrites 100 bytes in each of the chunks listed. */
function damage(c: MemCopy, list: number[]): void {
  for (const j of list) c.data.set(crypto.getRandomValues(new Uint8Array(100)), j * CS + 7);
}

const equal = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);
const sorted = (l: number[]) => [...l].sort((a, b) => a - b);

t("a scan moves exactly the chunks that differ, and verifies only those", async () => {
  const good = randomVolume();
  const src = new MemCopy(good), dst = new MemCopy(good);
  const changed = [3, 4, 100, 255];
  damage(dst, changed);
  const o = await recover({
    sources: [{ name: "lgp", store: src }],
    target: dst,
    strategy: "fast",
    chunkSize: CS,
  });
  assert.is(o.method, "scan");
  assert.ok(o.verified);
  assert.equal(sorted(dst.writes), changed);
  assert.is(o.bytesMoved, changed.length * CS);
  assert.ok(equal(dst.data, good), "the target equals the source");
  // one scan of every chunk, then the four moved chunks hashed again on the target
  assert.is(dst.hashed, CHUNKS + changed.length);
  assert.is(src.hashed, CHUNKS, "the source is scanned once: the scan's hashes verify the moved chunks");
});

t("a recovery returns only once every chunk it queued is written, however fast the scan ends", async () => {
  // the scan's last window is queued and the queue closed within the same turn the workers
  // take its chunks: a chunk taken but not yet counted in flight must still hold the pool open
  const good = randomVolume();
  const src = new MemCopy(good), dst = new MemCopy(good);
  const changed = [3, 4, 5, 6];
  damage(dst, changed);
  src.readDelayMs = 20;
  const o = await recover({
    sources: [{ name: "rgp@dr2", store: src }],
    target: dst,
    strategy: "fast",
    chunkSize: CS,
  });
  assert.is(o.bytesMoved, changed.length * CS, "every differing chunk is counted");
  assert.equal(sorted(dst.writes), changed, "and written before the recovery returned");
  assert.ok(equal(dst.data, good), "the target equals the source when the recovery returns");
});

t("the scan hashes both ends at once and chunks move while it goes on", async () => {
  const good = randomVolume();
  const src = new MemCopy(good), dst = new MemCopy(good);
  damage(dst, [1]);
  src.hashDelayMs = dst.hashDelayMs = 30;
  const t0 = performance.now();
  await recover({
    sources: [{ name: "lgp", store: src }],
    target: dst,
    strategy: "fast",
    chunkSize: CS,
    window: 16,
  });
  const secs = performance.now() - t0;
  const lastHash = Math.max(...src.hashCalls.map((h) => h.at));
  assert.ok(dst.writeTimes[0] < lastHash, "the first differing chunk was written before the scan ended");
  // 16 windows of 30 ms each end, run concurrently and two ahead: far below 2 × 16 × 30 ms
  assert.ok(secs < 16 * 30 * 2 * 0.6, `the scan overlapped (${secs.toFixed(0)} ms)`);
});

t("a tracked recovery moves exactly its set, with no scan but an audit sample", async () => {
  const good = randomVolume();
  const src = new MemCopy(good), dst = new MemCopy(good);
  const changed = [0, 9, 10, 77, 200];
  damage(dst, [9, 77]); // the other tracked chunks were written alike on both sides
  const o = await recover({
    sources: [{ name: "lgp", store: src }],
    target: dst,
    strategy: "fast",
    chunkSize: CS,
    tracked: changed,
    audit: 16,
  });
  assert.is(o.method, "tracked");
  assert.ok(o.verified);
  assert.equal(sorted(dst.writes), changed, "moved the union, nothing else");
  assert.is(src.reads, changed.length);
  assert.is(o.audited, 16);
  assert.is(o.auditMisses, 0);
  assert.is(dst.hashed, changed.length + 16, "hashed the moved chunks and the sample, not the volume");
  assert.ok(equal(dst.data, good));
});

t("a tracked set that missed a difference is caught by the audit and falls back to a scan", async () => {
  const good = randomVolume();
  const src = new MemCopy(good), dst = new MemCopy(good);
  damage(dst, [5, 50]);
  const o = await recover({
    sources: [{ name: "lgp", store: src }],
    target: dst,
    strategy: "fast",
    chunkSize: CS,
    tracked: [5],
    audit: CHUNKS, // every other chunk: the miss is found for sure
  });
  assert.is(o.method, "scan", "it says it scanned");
  assert.ok(o.auditMisses >= 1);
  assert.ok(o.verified);
  assert.ok(equal(dst.data, good));
});

t("several sources share the chunks by their rate", async () => {
  const good = randomVolume();
  const fast = new MemCopy(good), slow = new MemCopy(good), dst = new MemCopy(new Uint8Array(good.length));
  fast.readDelayMs = 2;
  slow.readDelayMs = 8;
  const seen: Progress[] = [];
  const o = await recover({
    sources: [{ name: "rgp@a", store: slow }, { name: "rgp@b", store: fast }],
    target: dst,
    strategy: "full",
    chunkSize: CS,
    parallel: 2,
    progress: (p) => seen.push(p),
  });
  assert.ok(o.verified);
  assert.ok(equal(dst.data, good));
  assert.is(slow.reads + fast.reads, CHUNKS, "each chunk read once");
  assert.ok(
    fast.reads > 2 * slow.reads,
    `the faster source took the larger share (${fast.reads}/${slow.reads})`,
  );
  assert.equal(o.sources.map((s) => s.name), ["rgp@a", "rgp@b"]);
  assert.is(o.sources[0].chunks + o.sources[1].chunks, CHUNKS);
  const mid = seen.find((p) => p.phase === "copying" && p.bytesMoved > 0)!;
  assert.is(mid.method, "full");
  assert.is(mid.sources.length, 2);
  assert.ok(mid.bytesToMove > 0);
});

t("a source killed half-way leaves its chunks to the others, and the result verifies", async () => {
  const good = randomVolume();
  const a = new MemCopy(good), b = new MemCopy(good), dst = new MemCopy(new Uint8Array(good.length));
  a.readDelayMs = b.readDelayMs = 1;
  b.failAfterReads = 40;
  const o = await recover({
    sources: [{ name: "lgp", store: a }, { name: "rgp@dr1", store: b }],
    target: dst,
    strategy: "full",
    chunkSize: CS,
  });
  assert.ok(o.verified);
  assert.ok(equal(dst.data, good));
  assert.is(b.reads, 40);
  assert.is(o.sources[1].state, "failed");
  assert.match(o.sources[1].error ?? "", /down/);
  assert.is(o.sources[0].chunks + o.sources[1].chunks, CHUNKS);
});

t("a source failing after the others drained the queue leaves its chunks in flight to them", async () => {
  const good = randomVolume();
  const a = new MemCopy(good), b = new MemCopy(good), dst = new MemCopy(new Uint8Array(good.length));
  // b holds its first chunks for 200 ms and then fails them, long after a took every other chunk
  b.readDelayMs = 200;
  b.failAfterReads = 0;
  const o = await Promise.race([
    recover({
      sources: [{ name: "lgp", store: a }, { name: "rgp@dr1", store: b }],
      target: dst,
      strategy: "full",
      chunkSize: CS,
    }),
    delay(5000).then(() => Promise.reject(new Error("the recovery hung with b's chunks given back"))),
  ]);
  assert.ok(o.verified);
  assert.ok(equal(dst.data, good));
  assert.is(o.sources[1].state, "failed");
  assert.is(o.sources[0].chunks, CHUNKS, "a moved every chunk, b's included");
});

t("every source failing fails the recovery with each reason", async () => {
  const good = randomVolume();
  const a = new MemCopy(good), b = new MemCopy(good);
  a.failAfterReads = 3;
  b.failAfterReads = 3;
  const err = await recover({
    sources: [{ name: "lgp", store: a }, { name: "rgp@dr1", store: b }],
    target: new MemCopy(new Uint8Array(good.length)),
    strategy: "full",
    chunkSize: CS,
  }).then(() => undefined, (e) => e as Error);
  assert.ok(err);
  assert.match(err!.message, /every source failed: lgp: .*down; rgp@dr1: .*down/);
});

t("a source at another point than the reference is caught and the reference moves its chunks", async () => {
  const good = randomVolume();
  const ref = new MemCopy(good), other = new MemCopy(good), dst = new MemCopy(good);
  damage(other, [10, 11, 12]);
  damage(dst, [10, 11, 12, 13]);
  ref.readDelayMs = 20;
  const o = await recover({
    sources: [{ name: "lgp", store: ref }, { name: "rgp@old", store: other }],
    target: dst,
    strategy: "fast",
    chunkSize: CS,
    parallel: 1, // the reference takes chunk 10, the other source 11
  });
  assert.ok(o.verified);
  assert.ok(equal(dst.data, good), "nothing of the stale source survived");
  assert.is(o.sources[1].state, "failed");
  assert.match(o.sources[1].error ?? "", /differs from the reference/);
});

t("copies of different sizes are refused", async () => {
  const err = await recover({
    sources: [{ name: "lgp", store: new MemCopy(new Uint8Array(CS * 4)) }],
    target: new MemCopy(new Uint8Array(CS * 5)),
    strategy: "fast",
    chunkSize: CS,
  }).then(() => undefined, (e) => e as Error);
  assert.match(err?.message ?? "", /same size/);
});

t("a resume starts at the checkpoint and a cancel stops", async () => {
  const good = randomVolume();
  const src = new MemCopy(good), dst = new MemCopy(new Uint8Array(good.length));
  const points: number[] = [];
  const o = await recover({
    sources: [{ name: "lgp", store: src }],
    target: dst,
    strategy: "full",
    chunkSize: CS,
    from: 128,
    checkpoint: (next) => Promise.resolve(void points.push(next)),
    verify: "none",
  });
  assert.is(o.bytesMoved, 128 * CS, "only the chunks after the checkpoint moved");
  assert.is(points[points.length - 1], CHUNKS);
  assert.ok(equal(dst.data.subarray(128 * CS), good.subarray(128 * CS)));
  const signal = { aborted: false };
  src.readDelayMs = 2;
  setTimeout(() => signal.aborted = true, 20);
  const err = await recover({
    sources: [{ name: "lgp", store: src }],
    target: new MemCopy(new Uint8Array(good.length)),
    strategy: "full",
    chunkSize: CS,
    signal,
  }).then(() => undefined, (e) => e as Error);
  assert.match(err?.message ?? "", /cancelled/);
});

t(
  "a local reference is copied by the target itself, and a dropped link redoes only what was not reported",
  async () => {
    const vol = randomVolume();
    const path = await Deno.makeTempFile();
    await Deno.writeFile(path, vol);
    const fd = openSync(path, "r");
    try {
      const target = new MemCopy(new Uint8Array(vol.length));
      const orders: number[][] = [];
      let reported = 0;
      const link = (first: boolean): ChunkStore => ({
        size: () => target.size(),
        hashes: (cs, i, c) => target.hashes(cs, i, c),
        read: (cs, i) => target.read(cs, i),
        write: (cs, i, d) => target.write(cs, i, d),
        sync: () => target.sync(),
        copyFrom: (f: LocalFile, cs, list, done) => {
          orders.push([...list]);
          return copyThrough(target, f, cs, list, (j, h, b) => {
            if (first && reported >= 40) {
              // the link drops: the next one is there when the copy is asked again
              current = link(false);
              throw new LinkDown("dropped");
            }
            reported++;
            done(j, h, b);
          });
        },
      });
      let current = link(true);
      const o = await recover({
        sources: [{ name: "lgp", store: new FileChunks(fd, vol.length, false) }],
        // the next link is there as soon as the first drops
        target: relinking(() => current, () => Promise.resolve(), 5_000),
        strategy: "full",
        chunkSize: CS,
      });
      assert.ok(o.verified, "verified");
      assert.is(o.bytesMoved, vol.length);
      assert.ok(equal(target.data, vol), "the target equals the source");
      assert.is(target.reads, 0, "no chunk was read back through the engine");
      assert.ok(orders.every((l) => l.length <= 8), "runs of at most 8 chunks per order");
      assert.is(new Set(orders.flat()).size, CHUNKS, "every chunk went through copyFrom");
      assert.ok(
        orders.flat().length < CHUNKS + 8 * 8,
        "after the drop only unreported chunks were asked again",
      );
    } finally {
      closeSync(fd);
      await Deno.remove(path);
    }
  },
);

t("runs and audit samples", () => {
  assert.equal(runs([1, 2, 3, 7, 8, 20], 2), [
    { index: 1, count: 2 },
    { index: 3, count: 1 },
    { index: 7, count: 2 },
    { index: 20, count: 1 },
  ]);
  const skip = new Set([0, 1, 2, 3]);
  const s = auditSample(10, skip, 4);
  assert.is(s.length, 4);
  assert.ok(s.every((j) => !skip.has(j) && j < 10));
  assert.is(auditSample(4, skip, 4).length, 0, "nothing left to sample");
  assert.is(auditSample(10, skip, 100).length, 6);
});

t("divergence: dirty maps and records on the recovery's grid, joined", () => {
  // 64 KiB map chunks onto 1 MiB recovery chunks: 0..15 are chunk 0, 16 is chunk 1
  assert.equal(rechunk([0, 15, 16, 100], 65536, 1 << 20), [0, 1, 6]);
  // 4 MiB chunks onto 1 MiB: each covers four
  assert.equal(rechunk([2], 4 << 20, 1 << 20), [8, 9, 10, 11]);
  const h = (kind: Kind, volume: number, offset: number, length: number): RecordHeader => ({
    kind,
    flags: 0,
    volume,
    length,
    seq: 1,
    offset,
    time: 0,
    pos: 0,
  });
  const into = new Set<number>();
  addRecordChunks(
    into,
    [
      h(Kind.Write, 1, 0, 4096), // chunk 0
      h(Kind.Write, 1, (1 << 20) - 512, 1024), // straddles 0 and 1
      h(Kind.Zero, 1, 5 << 20, 2 << 20), // 5 and 6
      h(Kind.Trim, 1, 9 << 20, 1), // 9
      h(Kind.Write, 2, 3 << 20, 4096), // another volume
      h(Kind.Flush, 1, 0, 0), // a barrier touches nothing
      h(Kind.SyncBegin, 1, 7 << 20, 0),
    ],
    1,
    1 << 20,
  );
  assert.equal([...into].sort((a, b) => a - b), [0, 1, 5, 6, 9]);
  const u = union([
    { what: "dr1's writes since the promotion", chunkSize: 65536, chunks: [0, 1, 160] },
    { what: "records dr1 did not acknowledge", chunkSize: 1 << 20, chunks: into },
  ], 1 << 20);
  assert.equal(u.chunks, [0, 1, 5, 6, 9, 10]);
  assert.is(u.reason, "2 from dr1's writes since the promotion, 5 from records dr1 did not acknowledge");
});

t("chunk lists on the wire, and a malformed one refused", () => {
  assert.equal(decodeChunks(encodeChunks([0, 7, 4294967295])), [0, 7, 4294967295]);
  assert.throws(() => decodeChunks(new Uint8Array(5)), /whole 32-bit/);
});

t("the UI's words for a recovery's progress", () => {
  const p = {
    phase: "copying" as const,
    method: "tracked" as const,
    chunks: 1024,
    done: 512,
    bytesCompared: 0,
    bytesToMove: 20 * 1048576,
    bytesMoved: 10 * 1048576,
    rateBps: 5 * 1048576,
    etaMs: 2000,
    sources: [
      {
        name: "rgp@dr1",
        bytesMoved: 2 * 1048576,
        chunks: 2,
        rateBps: 1048576,
        state: "failed" as const,
        error: "down",
      },
      { name: "lgp", bytesMoved: 8 * 1048576, chunks: 8, rateBps: 4 * 1048576, state: "active" as const },
    ],
  };
  assert.is(
    summary(p),
    "copying: moved 10.0 MiB of 20.0 MiB at 5.0 MiB/s, 2.0 s left; 512/1024 chunks settled",
  );
  assert.equal(shares(p), [
    "rgp@dr1: 2.0 MiB (20 %) at 1.0 MiB/s, failed: down",
    "lgp: 8.0 MiB (80 %) at 4.0 MiB/s",
  ]);
});

t.run();
