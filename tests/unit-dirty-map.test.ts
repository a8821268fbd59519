// Unit tests of the persistent dirty-chunk map (src/capture/dirty-map.ts).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { DirtyMap } from "../src/capture/dirty-map.ts";

await (await import("../native/build.ts")).buildNative();

const KiB = 1024;
const MiB = 1024 * KiB;

let dir = "";
let n = 0;
const path = () => `${dir}/map-${++n}`;

async function settled(p: Promise<void> | undefined): Promise<void> {
  assert.ok(p, "expected a promise (the bits were not durable yet)");
  await p;
}

const chunkOf = (m: DirtyMap, c: number) => c * m.chunkSize;

// ---------------------------------------------------------------------------
const map = suite("DirtyMap");

map.before(async () => {
  dir = await Deno.makeTempDir({ prefix: "cn-dirty-" });
});
map.after(async () => {
  await Deno.remove(dir, { recursive: true });
});

map("a new map starts fresh with every chunk set, already durable", async () => {
  const p = path();
  const m = await DirtyMap.open(p, 10 * MiB + 1, MiB);
  try {
    assert.ok(m.fresh);
    assert.is(m.chunks, 11);
    assert.is(m.count, 11);
    assert.equal(m.setChunks(), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.is(m.mark(0, 4096), undefined, "already set and on disk");
    assert.is(m.mark(10 * MiB, 1), undefined);
    // the file is private
    assert.is(Deno.statSync(p).mode! & 0o077, 0);
  } finally {
    m.close();
  }
  const again = await DirtyMap.open(p, 10 * MiB + 1, MiB);
  try {
    assert.not.ok(again.fresh, "the map written on creation is found again");
    assert.is(again.count, 11);
  } finally {
    again.close();
  }
});

map(
  "mark returns undefined when durable and a promise otherwise; clear then mark needs a new persist",
  async () => {
    const m = await DirtyMap.open(path(), 64 * MiB, MiB);
    try {
      m.clear(m.setChunks());
      await m.settle();
      assert.is(m.count, 0);
      const gen0 = m.generation;
      await settled(m.mark(chunkOf(m, 3) + 100, 200));
      assert.ok(m.isSet(3));
      assert.ok(m.generation > gen0);
      assert.is(m.mark(chunkOf(m, 3), MiB), undefined, "durable now");
      assert.is(m.mark(chunkOf(m, 3) + 5, 1), undefined);
      // clearing forgets durability: the next mark must wait for a new write
      m.clear([3]);
      assert.not.ok(m.isSet(3));
      const gen1 = m.generation;
      await settled(m.mark(chunkOf(m, 3), 1));
      assert.ok(m.generation > gen1, "a new persist happened");
      assert.is(m.mark(chunkOf(m, 3), 1), undefined);
    } finally {
      m.close();
    }
  },
);

map("a mark on a bit that is set but still being persisted also waits", async () => {
  const m = await DirtyMap.open(path(), 16 * MiB, MiB);
  try {
    m.clear(m.setChunks());
    await m.settle();
    const p1 = m.mark(chunkOf(m, 5), 10);
    const p2 = m.mark(chunkOf(m, 5), 10);
    assert.ok(p1);
    assert.ok(p2, "the bit is set in memory but not yet on disk");
    await Promise.all([p1, p2]);
    assert.is(m.mark(chunkOf(m, 5), 10), undefined);
  } finally {
    m.close();
  }
});

map("a range crossing chunk boundaries marks every chunk it touches", async () => {
  const m = await DirtyMap.open(path(), 16 * MiB, MiB);
  try {
    m.clear(m.setChunks());
    await m.settle();
    await settled(m.mark(chunkOf(m, 2) - 1, MiB + 2)); // last byte of 1, all of 2, first byte of 3
    assert.equal(m.setChunks(), [1, 2, 3]);
    await settled(m.mark(chunkOf(m, 8), 2 * MiB)); // exactly 8 and 9
    assert.equal(m.setChunks(), [1, 2, 3, 8, 9]);
  } finally {
    m.close();
  }
});

map("bits survive close and reopen", async () => {
  const p = path();
  const m = await DirtyMap.open(p, 100 * MiB, 4 * MiB);
  m.clear(m.setChunks());
  await m.settle();
  await Promise.all([m.mark(0, 1), m.mark(chunkOf(m, 7) + 3, 10), m.mark(100 * MiB - 1, 1)]);
  m.close();
  const r = await DirtyMap.open(p, 100 * MiB, 4 * MiB);
  try {
    assert.not.ok(r.fresh);
    assert.equal(r.setChunks(), [0, 7, 24]);
    // reopened bits are durable: no write needed to mark them again
    assert.is(r.mark(chunkOf(r, 7), 1), undefined);
    assert.ok(r.mark(chunkOf(r, 8), 1), "a clear bit still needs a persist");
    await r.settle();
  } finally {
    r.close();
  }
});

map("a clear reaches the disk without being awaited (settle waits for it)", async () => {
  const p = path();
  const m = await DirtyMap.open(p, 8 * MiB, MiB);
  m.clear([0, 2, 4, 6]);
  await m.settle();
  m.close();
  const r = await DirtyMap.open(p, 8 * MiB, MiB);
  try {
    assert.equal(r.setChunks(), [1, 3, 5, 7]);
  } finally {
    r.close();
  }
});

map("many concurrent marks all resolve and all reach the disk", async () => {
  const p = path();
  const m = await DirtyMap.open(p, 1024 * MiB, MiB);
  m.clear(m.setChunks());
  await m.settle();
  const ps: Promise<void>[] = [];
  const want: number[] = [];
  for (let c = 0; c < 1024; c += 7) {
    want.push(c);
    const q = m.mark(chunkOf(m, c), 1);
    assert.ok(q);
    ps.push(q!);
    if (c % 5 === 0) await new Promise((r) => setTimeout(r, 0)); // some arrive while a write is in flight
  }
  await Promise.all(ps);
  assert.equal(m.setChunks(), want);
  m.close();
  const r = await DirtyMap.open(p, 1024 * MiB, MiB);
  try {
    assert.equal(r.setChunks(), want);
  } finally {
    r.close();
  }
});

map("a clear racing with a mark of the same chunk: the marked bit wins and is durable", async () => {
  const p = path();
  const m = await DirtyMap.open(p, 8 * MiB, MiB);
  m.clear(m.setChunks());
  await m.settle();
  const first = m.mark(chunkOf(m, 1), 1); // persist in flight
  m.clear([1]);
  const second = m.mark(chunkOf(m, 1), 1);
  assert.ok(second, "marked again after a clear: must wait");
  await Promise.all([first, second]);
  assert.ok(m.isSet(1));
  m.close();
  const r = await DirtyMap.open(p, 8 * MiB, MiB);
  try {
    assert.equal(r.setChunks(), [1]);
  } finally {
    r.close();
  }
});

map("markAll sets every bit durably", async () => {
  const p = path();
  const m = await DirtyMap.open(p, 5 * MiB, MiB);
  m.clear(m.setChunks());
  await m.settle();
  await m.markAll();
  assert.is(m.count, 5);
  assert.is(m.mark(0, 5 * MiB), undefined);
  m.close();
  const r = await DirtyMap.open(p, 5 * MiB, MiB);
  try {
    assert.not.ok(r.fresh);
    assert.is(r.count, 5);
  } finally {
    r.close();
  }
});

map("a map made for another volume size or chunk size starts fresh (all set)", async () => {
  const p = path();
  const m = await DirtyMap.open(p, 64 * MiB, MiB);
  m.clear(m.setChunks());
  await m.settle();
  m.close();
  for (const [size, chunk] of [[64 * MiB, 2 * MiB], [64 * MiB + 1, MiB], [63 * MiB + 1, MiB]]) {
    const r = await DirtyMap.open(p, size, chunk);
    try {
      assert.ok(r.fresh, `size ${size} chunk ${chunk}`);
      assert.is(r.count, r.chunks);
    } finally {
      r.close();
    }
  }
});

map("a corrupted or truncated map starts fresh", async () => {
  const p = path();
  const m = await DirtyMap.open(p, 32 * MiB, MiB);
  m.clear(m.setChunks());
  await m.settle();
  m.close();
  const bytes = Deno.readFileSync(p);
  const bad = bytes.slice();
  bad[0] ^= 0x20; // the magic
  Deno.writeFileSync(p, bad);
  let r = await DirtyMap.open(p, 32 * MiB, MiB);
  assert.ok(r.fresh);
  assert.is(r.count, 32);
  r.close();
  Deno.writeFileSync(p, bytes.subarray(0, bytes.length - 1));
  r = await DirtyMap.open(p, 32 * MiB, MiB);
  assert.ok(r.fresh);
  r.close();
  Deno.writeFileSync(p, new Uint8Array(0));
  r = await DirtyMap.open(p, 32 * MiB, MiB);
  assert.ok(r.fresh);
  assert.is(r.count, 32);
  r.close();
});

map("after a reset for a smaller volume, the bits survive the next reopen", async () => {
  // the map was made for a larger volume (a longer file); it is rewritten for the smaller one
  const p = path();
  const big = await DirtyMap.open(p, 1024 * MiB, MiB);
  big.close();
  const m = await DirtyMap.open(p, 64 * MiB, MiB);
  assert.ok(m.fresh);
  m.clear(m.setChunks());
  await m.settle();
  await settled(m.mark(chunkOf(m, 9), 1));
  m.close();
  const r = await DirtyMap.open(p, 64 * MiB, MiB);
  try {
    assert.not.ok(r.fresh, "the rewritten map must be recognised on the next open");
    assert.equal(r.setChunks(), [9]);
  } finally {
    r.close();
  }
});

map("a failed persist rejects the marks waiting for it and every later one", async () => {
  const m = await DirtyMap.open(path(), 8 * MiB, MiB);
  m.clear(m.setChunks());
  await m.settle();
  m.close(); // the descriptor is gone: the next write fails
  let first: unknown, later: unknown;
  try {
    await m.mark(0, 1);
  } catch (e) {
    first = e;
  }
  assert.instance(first, Error);
  assert.match((first as Error).message, /dirty map write failed/);
  try {
    await m.mark(chunkOf(m, 2), 1);
  } catch (e) {
    later = e;
  }
  assert.instance(later, Error, "the failure is sticky");
});

// ---------------------------------------------------------------------------
const ranges = suite("chunkRange");

ranges("edges of chunkRange", async () => {
  const d = await Deno.makeTempDir({ prefix: "cn-dirty-" });
  const m = await DirtyMap.open(`${d}/m`, 10 * 4096 + 100, 4096); // 11 chunks, the last one short
  try {
    assert.is(m.chunks, 11);
    assert.equal(m.chunkRange(0, 1), [0, 0]);
    assert.equal(m.chunkRange(0, 4096), [0, 0]);
    assert.equal(m.chunkRange(0, 4097), [0, 1]);
    assert.equal(m.chunkRange(4095, 1), [0, 0]);
    assert.equal(m.chunkRange(4095, 2), [0, 1]);
    assert.equal(m.chunkRange(4096, 4096), [1, 1]);
    assert.equal(m.chunkRange(4096 * 3 + 7, 4096 * 2), [3, 5]);
    assert.equal(m.chunkRange(10 * 4096, 100), [10, 10], "the short last chunk");
    assert.equal(m.chunkRange(10 * 4096 + 99, 1), [10, 10], "the last byte");
    assert.equal(m.chunkRange(0, 10 * 4096 + 100), [0, 10], "the whole volume");
    assert.equal(m.chunkRange(5000, 0), [1, 1], "an empty range names its chunk");
    // ranges reaching past the end are clamped to the last chunk
    assert.equal(m.chunkRange(10 * 4096, 1 << 30), [10, 10]);
    assert.equal(m.chunkRange(0, Number.MAX_SAFE_INTEGER), [0, 10]);
  } finally {
    m.close();
    await Deno.remove(d, { recursive: true });
  }
});

ranges("the bits of the first and last chunk are independent (bit order within bytes)", async () => {
  const d = await Deno.makeTempDir({ prefix: "cn-dirty-" });
  const m = await DirtyMap.open(`${d}/m`, 17 * 4096, 4096); // 17 chunks: 3 bytes of bits
  try {
    m.clear(m.setChunks());
    await m.settle();
    for (const c of [0, 7, 8, 15, 16]) {
      await settled(m.mark(c * 4096, 1));
      assert.ok(m.isSet(c));
    }
    assert.equal(m.setChunks(), [0, 7, 8, 15, 16]);
    m.clear([7, 16]);
    assert.equal(m.setChunks(), [0, 8, 15]);
    await m.settle();
  } finally {
    m.close();
    await Deno.remove(d, { recursive: true });
  }
});

map.run();
ranges.run();
