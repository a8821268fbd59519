// Unit tests of the persistent dirty-chunk map (native/dirty.c, through src/capture/dirty-map.ts):
// the file format, durability (a mark resolves once its bits are on disk, and writes only when
// they were not), chunk ranges, and what a damaged or foreign map turns into.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { DirtyMap } from "../src/capture/dirty-map.ts";

await (await import("../native/build.ts")).buildNative();

const KiB = 1024;
const MiB = 1024 * KiB;

let dir = "";
let n = 0;
const path = () => `${dir}/map-${++n}`;

const chunkOf = (m: DirtyMap, c: number) => c * m.chunkSize;

async function cleared(p: string, size: number, chunk: number): Promise<DirtyMap> {
  const m = await DirtyMap.open(p, size, chunk);
  m.clear(m.setChunks());
  await m.settle();
  return m;
}

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
    assert.is(await m.mark(0, 4096), false, "already set and on disk: no write");
    assert.is(await m.mark(10 * MiB, 1), false);
    // the file is private
    assert.is(Deno.statSync(p).mode! & 0o077, 0);
  } finally {
    await m.close();
  }
  const again = await DirtyMap.open(p, 10 * MiB + 1, MiB);
  try {
    assert.not.ok(again.fresh, "the map written on creation is found again");
    assert.is(again.count, 11);
  } finally {
    await again.close();
  }
});

map("a mark writes only when its bits are not durable; a clear makes the next mark write again", async () => {
  const m = await cleared(path(), 64 * MiB, MiB);
  try {
    assert.is(m.count, 0);
    assert.is(await m.mark(chunkOf(m, 3) + 100, 200), true);
    assert.equal(m.setChunks(), [3]);
    assert.is(await m.mark(chunkOf(m, 3), MiB), false, "durable now");
    assert.is(await m.mark(chunkOf(m, 3) + 5, 1), false);
    // clearing forgets durability: the next mark must wait for a new write
    m.clear([3]);
    await m.settle();
    assert.equal(m.setChunks(), []);
    assert.is(await m.mark(chunkOf(m, 3), 1), true, "a new write happened");
    assert.is(await m.mark(chunkOf(m, 3), 1), false);
  } finally {
    await m.close();
  }
});

map(
  "marks issued together all resolve durable (the later ones find the earlier write or make their own)",
  async () => {
    const p = path();
    const m = await cleared(p, 16 * MiB, MiB);
    const wrote = await Promise.all([
      m.mark(chunkOf(m, 5), 10),
      m.mark(chunkOf(m, 5), 10),
      m.mark(chunkOf(m, 6), 1),
    ]);
    assert.equal(wrote, [true, false, true]);
    await m.close();
    const r = await DirtyMap.open(p, 16 * MiB, MiB);
    try {
      assert.equal(r.setChunks(), [5, 6]);
    } finally {
      await r.close();
    }
  },
);

map("a list of chunks is marked with one write, and only when one is not durable yet", async () => {
  const p = path();
  const m = await cleared(p, 16 * MiB, MiB);
  assert.is(await m.markChunks([2, 9, 2, 15, 99]), true, "out of range ones are ignored");
  assert.equal(m.setChunks(), [2, 9, 15]);
  assert.is(await m.markChunks([9, 15]), false, "durable already");
  assert.is(await m.markChunks([]), false);
  assert.is(await m.markChunks([9, 10]), true);
  await m.close();
  const r = await DirtyMap.open(p, 16 * MiB, MiB);
  try {
    assert.equal(r.setChunks(), [2, 9, 10, 15]);
  } finally {
    await r.close();
  }
});

map("a range crossing chunk boundaries marks every chunk it touches", async () => {
  const m = await cleared(path(), 16 * MiB, MiB);
  try {
    await m.mark(chunkOf(m, 2) - 1, MiB + 2); // last byte of 1, all of 2, first byte of 3
    assert.equal(m.setChunks(), [1, 2, 3]);
    await m.mark(chunkOf(m, 8), 2 * MiB); // exactly 8 and 9
    assert.equal(m.setChunks(), [1, 2, 3, 8, 9]);
  } finally {
    await m.close();
  }
});

map("bits survive close and reopen", async () => {
  const p = path();
  const m = await cleared(p, 100 * MiB, 4 * MiB);
  await Promise.all([m.mark(0, 1), m.mark(chunkOf(m, 7) + 3, 10), m.mark(100 * MiB - 1, 1)]);
  await m.close();
  const r = await DirtyMap.open(p, 100 * MiB, 4 * MiB);
  try {
    assert.not.ok(r.fresh);
    assert.equal(r.setChunks(), [0, 7, 24]);
    // reopened bits are durable: no write needed to mark them again
    assert.is(await r.mark(chunkOf(r, 7), 1), false);
    assert.is(await r.mark(chunkOf(r, 8), 1), true, "a clear bit still needs a write");
  } finally {
    await r.close();
  }
});

map("a clear reaches the disk without being awaited (settle waits for it)", async () => {
  const p = path();
  const m = await DirtyMap.open(p, 8 * MiB, MiB);
  m.clear([0, 2, 4, 6]);
  await m.settle();
  await m.close();
  const r = await DirtyMap.open(p, 8 * MiB, MiB);
  try {
    assert.equal(r.setChunks(), [1, 3, 5, 7]);
  } finally {
    await r.close();
  }
});

map("many marks all resolve and all reach the disk", async () => {
  const p = path();
  const m = await cleared(p, 1024 * MiB, MiB);
  const ps: Promise<boolean>[] = [];
  const want: number[] = [];
  for (let c = 0; c < 1024; c += 7) {
    want.push(c);
    ps.push(m.mark(chunkOf(m, c), 1));
    if (c % 5 === 0) await new Promise((r) => setTimeout(r, 0)); // some arrive while a write is in flight
  }
  assert.ok((await Promise.all(ps)).every((w) => w));
  assert.equal(m.setChunks(), want);
  await m.close();
  const r = await DirtyMap.open(p, 1024 * MiB, MiB);
  try {
    assert.equal(r.setChunks(), want);
  } finally {
    await r.close();
  }
});

map("a clear between two marks of the same chunk: the later mark wins and is durable", async () => {
  const p = path();
  const m = await cleared(p, 8 * MiB, MiB);
  const first = m.mark(chunkOf(m, 1), 1);
  m.clear([1]);
  const second = m.mark(chunkOf(m, 1), 1);
  assert.equal(await Promise.all([first, second]), [true, true], "marked again after a clear: a new write");
  await m.close();
  const r = await DirtyMap.open(p, 8 * MiB, MiB);
  try {
    assert.equal(r.setChunks(), [1]);
  } finally {
    await r.close();
  }
});

map("markAll sets every bit durably", async () => {
  const p = path();
  const m = await cleared(p, 5 * MiB, MiB);
  await m.markAll();
  assert.is(m.count, 5);
  assert.is(await m.mark(0, 5 * MiB), false);
  await m.close();
  const r = await DirtyMap.open(p, 5 * MiB, MiB);
  try {
    assert.not.ok(r.fresh);
    assert.is(r.count, 5);
  } finally {
    await r.close();
  }
});

map("a map made for another volume size or chunk size starts fresh (all set)", async () => {
  const p = path();
  await (await cleared(p, 64 * MiB, MiB)).close();
  for (const [size, chunk] of [[64 * MiB, 2 * MiB], [64 * MiB + 1, MiB], [63 * MiB + 1, MiB]]) {
    const r = await DirtyMap.open(p, size, chunk);
    try {
      assert.ok(r.fresh, `size ${size} chunk ${chunk}`);
      assert.is(r.count, r.chunks);
    } finally {
      await r.close();
    }
  }
});

map("a corrupted or truncated map starts fresh", async () => {
  const p = path();
  await (await cleared(p, 32 * MiB, MiB)).close();
  const bytes = Deno.readFileSync(p);
  const bad = bytes.slice();
  bad[0] ^= 0x20; // the magic
  Deno.writeFileSync(p, bad);
  let r = await DirtyMap.open(p, 32 * MiB, MiB);
  assert.ok(r.fresh);
  assert.is(r.count, 32);
  await r.close();
  Deno.writeFileSync(p, bytes.subarray(0, bytes.length - 1));
  r = await DirtyMap.open(p, 32 * MiB, MiB);
  assert.ok(r.fresh);
  await r.close();
  Deno.writeFileSync(p, new Uint8Array(0));
  r = await DirtyMap.open(p, 32 * MiB, MiB);
  assert.ok(r.fresh);
  assert.is(r.count, 32);
  await r.close();
});

map("after a reset for a smaller volume, the bits survive the next reopen", async () => {
  // the map was made for a larger volume (a longer file); it is rewritten for the smaller one
  const p = path();
  await (await DirtyMap.open(p, 1024 * MiB, MiB)).close();
  const m = await DirtyMap.open(p, 64 * MiB, MiB);
  assert.ok(m.fresh);
  m.clear(m.setChunks());
  await m.settle();
  assert.is(await m.mark(chunkOf(m, 9), 1), true);
  await m.close();
  const r = await DirtyMap.open(p, 64 * MiB, MiB);
  try {
    assert.not.ok(r.fresh, "the rewritten map must be recognised on the next open");
    assert.equal(r.setChunks(), [9]);
  } finally {
    await r.close();
  }
});

map("an unwritable map file is a clear error at open", async () => {
  const d = `${dir}/ro`;
  await Deno.mkdir(d, { mode: 0o500 });
  try {
    if (Deno.uid() === 0) {
      // root writes anyway: a path under a regular file cannot be created by anyone
      Deno.writeFileSync(`${d}-file`, new Uint8Array(1));
      const e = await DirtyMap.open(`${d}-file/map`, MiB, 4096).catch((e) => e);
      assert.instance(e, Error);
      assert.match((e as Error).message, /dirty map .*map/);
    } else {
      const e = await DirtyMap.open(`${d}/map`, MiB, 4096).catch((e) => e);
      assert.instance(e, Error);
      assert.match((e as Error).message, /Permission denied/);
    }
  } finally {
    await Deno.chmod(d, 0o700);
  }
});

// ---------------------------------------------------------------------------
const ranges = suite("chunk ranges");

ranges(
  "edges: exact chunks, one byte over, the short last chunk, a range reaching past the end",
  async () => {
    const d = await Deno.makeTempDir({ prefix: "cn-dirty-" });
    const m = await cleared(`${d}/m`, 10 * 4096 + 100, 4096); // 11 chunks, the last one short
    const marked = async (off: number, len: number) => {
      m.clear(m.setChunks());
      await m.settle();
      await m.mark(off, len);
      return m.setChunks();
    };
    try {
      assert.is(m.chunks, 11);
      assert.equal(await marked(0, 1), [0]);
      assert.equal(await marked(0, 4096), [0]);
      assert.equal(await marked(0, 4097), [0, 1]);
      assert.equal(await marked(4095, 1), [0]);
      assert.equal(await marked(4095, 2), [0, 1]);
      assert.equal(await marked(4096, 4096), [1]);
      assert.equal(await marked(4096 * 3 + 7, 4096 * 2), [3, 4, 5]);
      assert.equal(await marked(10 * 4096, 100), [10], "the short last chunk");
      assert.equal(await marked(10 * 4096 + 99, 1), [10], "the last byte");
      assert.equal((await marked(0, 10 * 4096 + 100)).length, 11, "the whole volume");
      assert.equal(await marked(5000, 0), [1], "an empty range names its chunk");
      // ranges reaching past the end are clamped to the last chunk
      assert.equal(await marked(10 * 4096, 1 << 30), [10]);
    } finally {
      await m.close();
      await Deno.remove(d, { recursive: true });
    }
  },
);

ranges("the bits of the first and last chunk are independent (bit order within bytes)", async () => {
  const d = await Deno.makeTempDir({ prefix: "cn-dirty-" });
  const m = await cleared(`${d}/m`, 17 * 4096, 4096); // 17 chunks: 3 bytes of bits
  try {
    for (const c of [0, 7, 8, 15, 16]) assert.is(await m.mark(c * 4096, 1), true);
    assert.equal(m.setChunks(), [0, 7, 8, 15, 16]);
    m.clear([7, 16]);
    await m.settle();
    assert.equal(m.setChunks(), [0, 8, 15]);
  } finally {
    await m.close();
    await Deno.remove(d, { recursive: true });
  }
});

map.run();
ranges.run();
