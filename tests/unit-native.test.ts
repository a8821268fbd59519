// Unit tests of the native binding (src/native/mod.ts → native/continuum.c) on
// temporary files: positional I/O, ordered batches, zeroing, hashing, errors.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { closeSync, openSync } from "node:fs";
import {
  applyBatch,
  type BatchOp,
  fdatasync,
  fileSize,
  hashRange,
  isBlockDevice,
  NativeError,
  pread,
  preadOnce,
  punchHole,
  pwrite,
  writeZeroes,
  xxh3,
} from "../src/native/mod.ts";
import { tempDir } from "./lib/cluster.ts";

await (await import("../native/build.ts")).buildNative();

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

async function withFile(fn: (fd: number, path: string) => Promise<void>, size = 0): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "cn-native-" });
  const path = `${dir}/f`;
  const fd = openSync(path, "w+", 0o600);
  try {
    if (size > 0) Deno.truncateSync(path, size);
    await fn(fd, path);
  } finally {
    try {
      closeSync(fd);
    } catch { /* closed by the test */ }
    await Deno.remove(dir, { recursive: true });
  }
}

async function nativeError(p: Promise<unknown> | (() => unknown), code: string): Promise<NativeError> {
  try {
    if (typeof p === "function") p();
    else await p;
  } catch (e) {
    assert.instance(e, NativeError, String(e));
    assert.is((e as NativeError).code, code, (e as Error).message);
    return e as NativeError;
  }
  assert.unreachable(`expected NativeError ${code}`);
  throw new Error("unreachable");
}

/** An fd number that is certainly not open (far above any descriptor limit), so no other file is hit. */
const BAD_FD = 0x3fffffff;

// ---------------------------------------------------------------------------
const hash = suite("xxh3");

hash("XXH3-128 matches the reference vectors (canonical big-endian)", () => {
  assert.is(hex(xxh3(new Uint8Array(0))), "99aa06d3014798d86001c324468d497f");
  assert.is(hex(xxh3(new TextEncoder().encode("abc"))), "06b05ab6733a618578af5f94892f3950");
});

hash("xxh3 writes into a given 16-byte view and differs for different input", () => {
  const out = new Uint8Array(20).fill(0xaa);
  const view = out.subarray(2, 18);
  const r = xxh3(pattern(1000, 1), view);
  assert.is(r, view);
  assert.equal(view, xxh3(pattern(1000, 1)));
  assert.is(out[0], 0xaa);
  assert.is(out[19], 0xaa);
  assert.not.equal(xxh3(pattern(1000, 1)), xxh3(pattern(1000, 2)));
  const p = pattern(1000, 1);
  const q = p.slice();
  q[999] ^= 1;
  assert.not.equal(xxh3(p), xxh3(q));
  // a subarray hashes only its own bytes
  assert.equal(xxh3(p.subarray(10, 20)), xxh3(p.slice(10, 20)));
});

// ---------------------------------------------------------------------------
const io = suite("pread / pwrite");

io("pwrite then pread round-trip at offsets, file size follows", async () => {
  await withFile(async (fd) => {
    assert.is(fileSize(fd), 0);
    assert.not.ok(isBlockDevice(fd));
    const a = pattern(10_000, 1);
    await pwrite(fd, a, 0);
    const b = pattern(5000, 2);
    await pwrite(fd, b, 1 << 20);
    assert.is(fileSize(fd), (1 << 20) + 5000);
    const got = new Uint8Array(10_000);
    assert.is(await pread(fd, got, 0), 10_000);
    assert.equal(got, a);
    const got2 = new Uint8Array(5000);
    assert.is(await pread(fd, got2, 1 << 20), 5000);
    assert.equal(got2, b);
    // the gap reads as zeroes
    const gap = new Uint8Array(100).fill(1);
    assert.is(await pread(fd, gap, 500_000), 100);
    assert.ok(gap.every((x) => x === 0));
    await fdatasync(fd);
  });
});

io("pread is short only at the end of the file", async () => {
  await withFile(async (fd) => {
    await pwrite(fd, pattern(100, 3), 0);
    const buf = new Uint8Array(64);
    assert.is(await pread(fd, buf, 80), 20);
    assert.equal(buf.subarray(0, 20), pattern(100, 3).subarray(80));
    assert.is(await pread(fd, buf, 100), 0);
    assert.is(await pread(fd, buf, 1 << 30), 0);
    assert.is(await pread(fd, new Uint8Array(0), 0), 0);
  });
});

io("large buffers round-trip (several MiB in one call)", async () => {
  await withFile(async (fd) => {
    const big = pattern(8 * 1024 * 1024 + 3, 4);
    await pwrite(fd, big, 7);
    const got = new Uint8Array(big.length);
    assert.is(await pread(fd, got, 7), big.length);
    assert.equal(xxh3(got), xxh3(big));
  });
});

io("a subarray is read into and written from in place", async () => {
  await withFile(async (fd) => {
    const src = pattern(64, 5);
    await pwrite(fd, src.subarray(16, 48), 0);
    const dst = new Uint8Array(64).fill(0xee);
    assert.is(await pread(fd, dst.subarray(8, 40), 0), 32);
    assert.equal(dst.subarray(8, 40), src.subarray(16, 48));
    assert.ok(dst.subarray(0, 8).every((x) => x === 0xee));
    assert.ok(dst.subarray(40).every((x) => x === 0xee));
  });
});

// ---------------------------------------------------------------------------
/** Bytes of the file in the page cache (util-linux fincore). */
function cachedBytes(path: string): number {
  const out = new Deno.Command("fincore", { args: ["--bytes", "--noheadings", "--output", "RES", path] })
    .outputSync();
  return Number(new TextDecoder().decode(out.stdout).trim());
}

io("preadOnce reads like pread and leaves nothing of what it read in the page cache", async () => {
  // a synchronisation's reads left cached (in large folios) made every later small write slow;
  // on the repository's disk, not /tmp: a tmpfs keeps every page it holds
  const dir = await tempDir("native-read-once");
  const path = `${dir}/f`;
  const fd = openSync(path, "w+", 0o600);
  try {
    const data = pattern(8 << 20, 11);
    // written 4 KiB at a time, as records are (small folios), then written back: clean, droppable
    const ops: BatchOp[] = [];
    for (let off = 0; off < data.length; off += 4096) {
      ops.push({ op: "write", off, buf: data.subarray(off, off + 4096) });
    }
    await applyBatch(fd, ops, true);
    assert.ok(cachedBytes(path) > 0, "what was written is cached");
    const got = new Uint8Array(data.length);
    for (let off = 0; off < data.length; off += 1 << 20) {
      assert.is(await preadOnce(fd, got.subarray(off, off + (1 << 20)), off), 1 << 20);
    }
    assert.ok(got.every((b, i) => b === data[i]), "the bytes read");
    assert.is(cachedBytes(path), 0, "nothing of the range stays cached");
    assert.is(await preadOnce(fd, new Uint8Array(4096), data.length - 1024), 1024, "short at the end");
  } finally {
    closeSync(fd);
    await Deno.remove(dir, { recursive: true });
  }
  await nativeError(preadOnce(BAD_FD, new Uint8Array(16), 0), "EBADF");
});

const batch = suite("applyBatch");

/** Applies ops to an in-memory model (reads return what the model holds then). */
function model(size: number, ops: BatchOp[]): { data: Uint8Array; reads: Uint8Array[] } {
  let data = new Uint8Array(size);
  const reads: Uint8Array[] = [];
  const grow = (end: number) => {
    if (end > data.length) {
      const d = new Uint8Array(end);
      d.set(data);
      data = d;
    }
  };
  for (const o of ops) {
    if (o.op === "write") {
      grow(o.off + o.buf.length);
      data.set(o.buf, o.off);
    } else if (o.op === "read") {
      const r = new Uint8Array(o.buf.length);
      r.set(data.subarray(o.off, o.off + o.buf.length));
      reads.push(r);
    } else {
      // trims and zeroes keep the size (KEEP_SIZE for holes; zero-range within the file here)
      data.fill(0, o.off, Math.min(o.off + o.len, data.length));
    }
  }
  return { data, reads };
}

batch("overlapping operations in one batch land in order", async () => {
  await withFile(async (fd) => {
    const size = 64 * 1024;
    await pwrite(fd, pattern(size, 9), 0);
    const ops: BatchOp[] = [
      { op: "write", buf: new Uint8Array(10_000).fill(1), off: 0 },
      { op: "write", buf: new Uint8Array(10_000).fill(2), off: 5000 },
      { op: "read", buf: new Uint8Array(12_000).fill(0xee), off: 1000 },
      { op: "zero", off: 6000, len: 100 },
      { op: "write", buf: new Uint8Array(50).fill(3), off: 6050 },
      { op: "trim", off: 8192, len: 8192 },
      { op: "write", buf: new Uint8Array(10).fill(4), off: 8200 },
      { op: "zero-may-trim", off: 20_000, len: 12_288 },
      { op: "read", buf: new Uint8Array(size).fill(0xee), off: 0 },
      { op: "write", buf: new Uint8Array(3).fill(5), off: 1 },
    ];
    const initial = pattern(size, 9);
    const m = model(size, [{ op: "write", buf: initial, off: 0 }, ...ops]);
    await applyBatch(fd, ops);
    const file = new Uint8Array(size);
    assert.is(await pread(fd, file, 0), size);
    assert.equal(file, m.data, "file content");
    assert.equal((ops[2] as { buf: Uint8Array }).buf, m.reads[0], "read in the middle saw only earlier ops");
    assert.equal((ops[8] as { buf: Uint8Array }).buf, m.reads[1], "read near the end");
    assert.is(fileSize(fd), size, "trims and zeroes keep the size");
  });
});

batch("many small overlapping writes: the last one wins at every byte", async () => {
  await withFile(async (fd) => {
    const ops: BatchOp[] = [];
    for (let i = 0; i < 500; i++) {
      const off = (i * 37) % 3000;
      ops.push({ op: "write", buf: new Uint8Array(1 + (i * 13) % 200).fill(i & 0xff), off });
    }
    await applyBatch(fd, ops, true);
    const m = model(0, ops);
    const file = new Uint8Array(m.data.length);
    assert.is(fileSize(fd), m.data.length);
    await pread(fd, file, 0);
    assert.equal(file, m.data);
  });
});

batch("a read past the end is filled with zeroes (no stale buffer bytes)", async () => {
  await withFile(async (fd) => {
    await pwrite(fd, pattern(100, 6), 0);
    const buf = new Uint8Array(300).fill(0xee);
    const beyond = new Uint8Array(50).fill(0xee);
    await applyBatch(fd, [{ op: "read", buf, off: 50 }, { op: "read", buf: beyond, off: 10_000 }]);
    assert.equal(buf.subarray(0, 50), pattern(100, 6).subarray(50));
    assert.ok(buf.subarray(50).every((x) => x === 0), "zeroes after the end");
    assert.ok(beyond.every((x) => x === 0));
  });
});

batch("zero and trim make ranges read as zeroes, partial blocks included", async () => {
  await withFile(async (fd) => {
    const size = 3 * 65536;
    await pwrite(fd, new Uint8Array(size).fill(0x5a), 0);
    await applyBatch(fd, [
      { op: "trim", off: 100, len: 5000 },
      { op: "zero", off: 70_000, len: 333 },
      { op: "zero-may-trim", off: 131_072, len: 65536 },
    ]);
    const file = new Uint8Array(size);
    await pread(fd, file, 0);
    const expect = new Uint8Array(size).fill(0x5a);
    expect.fill(0, 100, 5100);
    expect.fill(0, 70_000, 70_333);
    expect.fill(0, 131_072, size);
    assert.equal(file, expect);
    assert.is(fileSize(fd), size);
    // the single-call helpers behave the same
    await pwrite(fd, new Uint8Array(size).fill(0x33), 0);
    await punchHole(fd, 10, 20);
    await writeZeroes(fd, 40, 5, false);
    await writeZeroes(fd, 50, 4096, true);
    await pread(fd, file, 0);
    const e2 = new Uint8Array(size).fill(0x33);
    e2.fill(0, 10, 30);
    e2.fill(0, 40, 45);
    e2.fill(0, 50, 4146);
    assert.equal(file, e2);
  });
});

batch("an empty batch is a no-op, with sync a fdatasync; empty buffers are allowed", async () => {
  await withFile(async (fd) => {
    await applyBatch(fd, []);
    await applyBatch(fd, [], true);
    await applyBatch(fd, [{ op: "write", buf: new Uint8Array(0), off: 10 }, {
      op: "read",
      buf: new Uint8Array(0),
      off: 0,
    }]);
    assert.is(fileSize(fd), 0);
  });
});

batch("a failing operation stops the batch: earlier ops applied, later ones not", async () => {
  await withFile(async (fd) => {
    await pwrite(fd, new Uint8Array(100), 0);
    const later = new Uint8Array(10).fill(0xee);
    // 2^63 is a negative off_t: the kernel refuses it with EINVAL
    const err = await nativeError(
      applyBatch(fd, [
        { op: "write", buf: new Uint8Array(10).fill(1), off: 0 },
        { op: "write", buf: new Uint8Array(10).fill(2), off: 2 ** 63 },
        { op: "write", buf: new Uint8Array(10).fill(3), off: 50 },
        { op: "read", buf: later, off: 0 },
      ]),
      "EINVAL",
    );
    assert.is(err.errno, 22);
    const file = new Uint8Array(100);
    await pread(fd, file, 0);
    assert.ok(file.subarray(0, 10).every((x) => x === 1), "the op before the failure landed");
    assert.ok(file.subarray(50, 60).every((x) => x === 0), "the op after the failure did not run");
    assert.ok(later.every((x) => x === 0xee), "the read after the failure did not run");
  });
});

// ---------------------------------------------------------------------------
const hr = suite("hashRange");

hr("equals xxh3 of each chunk, including a short last chunk", async () => {
  await withFile(async (fd) => {
    const data = pattern(10_000, 7);
    await pwrite(fd, data, 0);
    const h = await hashRange(fd, 0, 10_000, 4096);
    assert.is(h.length, 3 * 16);
    assert.equal(h.subarray(0, 16), xxh3(data.subarray(0, 4096)));
    assert.equal(h.subarray(16, 32), xxh3(data.subarray(4096, 8192)));
    assert.equal(
      h.subarray(32, 48),
      xxh3(data.subarray(8192, 10_000)),
      "short last chunk hashed over its own length",
    );
  });
});

hr("an offset range, exact multiples, one chunk, and chunk larger than the range", async () => {
  await withFile(async (fd) => {
    const data = pattern(20_000, 8);
    await pwrite(fd, data, 0);
    const h = await hashRange(fd, 1000, 8192, 1024);
    assert.is(h.length, 8 * 16);
    for (let i = 0; i < 8; i++) {
      assert.equal(
        h.subarray(16 * i, 16 * i + 16),
        xxh3(data.subarray(1000 + 1024 * i, 1000 + 1024 * (i + 1))),
        `chunk ${i}`,
      );
    }
    assert.equal(await hashRange(fd, 5, 100, 100), xxh3(data.subarray(5, 105)));
    assert.equal(await hashRange(fd, 5, 100, 1 << 20), xxh3(data.subarray(5, 105)));
    assert.is((await hashRange(fd, 0, 0, 4096)).length, 0);
  });
});

hr("past the end of the file reads as zeroes", async () => {
  await withFile(async (fd) => {
    const data = pattern(100, 2);
    await pwrite(fd, data, 0);
    const h = await hashRange(fd, 0, 300, 200);
    const padded = new Uint8Array(300);
    padded.set(data);
    assert.equal(h.subarray(0, 16), xxh3(padded.subarray(0, 200)));
    assert.equal(h.subarray(16, 32), xxh3(padded.subarray(200, 300)));
    assert.equal(await hashRange(fd, 5000, 64, 64), xxh3(new Uint8Array(64)));
  });
});

hr("hashes change when a byte of one chunk changes, and only that chunk's", async () => {
  await withFile(async (fd) => {
    const data = pattern(4 * 512, 3);
    await pwrite(fd, data, 0);
    const before = await hashRange(fd, 0, data.length, 512);
    await pwrite(fd, new Uint8Array([data[700] ^ 1]), 700);
    const after = await hashRange(fd, 0, data.length, 512);
    for (let i = 0; i < 4; i++) {
      const same = hex(before.subarray(16 * i, 16 * i + 16)) === hex(after.subarray(16 * i, 16 * i + 16));
      assert.is(same, i !== 1, `chunk ${i}`);
    }
  });
});

hr("a chunk size of 0 is EINVAL", async () => {
  await withFile(async (fd) => {
    await pwrite(fd, pattern(10, 1), 0);
    await nativeError(hashRange(fd, 0, 0, 0), "EINVAL");
  });
});

// ---------------------------------------------------------------------------
const errors = suite("errors");

errors("a descriptor that is not open: EBADF from every call", async () => {
  const fd = BAD_FD;
  const calls: [string, () => Promise<unknown>][] = [
    ["pread", () => pread(fd, new Uint8Array(10), 0)],
    ["pwrite", () => pwrite(fd, new Uint8Array(10), 0)],
    ["applyBatch", () => applyBatch(fd, [{ op: "write", buf: new Uint8Array(1), off: 0 }])],
    ["fdatasync", () => fdatasync(fd)],
    ["punchHole", () => punchHole(fd, 0, 10)],
    ["writeZeroes", () => writeZeroes(fd, 0, 10, false)],
    ["hashRange", () => hashRange(fd, 0, 10, 10)],
  ];
  for (const [what, call] of calls) {
    const e = await nativeError(call(), "EBADF");
    assert.is(e.errno, 9, what);
    assert.match(e.message, /EBADF/);
  }
  await nativeError(() => fileSize(fd), "EBADF");
  assert.not.ok(isBlockDevice(fd));
});

errors("writing through a read-only fd is EBADF; reading works", async () => {
  await withFile(async (_fd, path) => {
    await pwrite(_fd, pattern(100, 1), 0);
    const ro = openSync(path, "r");
    try {
      const e = await nativeError(pwrite(ro, new Uint8Array(4), 0), "EBADF");
      assert.is(e.op, "pwrite");
      await nativeError(applyBatch(ro, [{ op: "zero", off: 0, len: 10 }]), "EBADF");
      const buf = new Uint8Array(100);
      assert.is(await pread(ro, buf, 0), 100);
      assert.equal(buf, pattern(100, 1));
    } finally {
      closeSync(ro);
    }
  });
});

errors("NativeError names errnos: ENOENT, EBADF, unknown ones", () => {
  const e = new NativeError("open", 2);
  assert.is(e.code, "ENOENT");
  assert.is(e.errno, 2);
  assert.is(e.op, "open");
  assert.is(e.name, "NativeError");
  assert.instance(e, Error);
  assert.match(e.message, /open failed: ENOENT/);
  assert.is(new NativeError("x", 9).code, "EBADF");
  assert.is(new NativeError("x", 28).code, "ENOSPC");
  const u = new NativeError("x", 200);
  assert.is(u.code, "E200");
  assert.match(u.message, /errno 200/);
});

errors("a read into a directory fd is EISDIR (an errno without a name keeps its number)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-native-" });
  const fd = openSync(dir, "r");
  try {
    const e = await nativeError(pread(fd, new Uint8Array(10), 0), "E21");
    assert.is(e.errno, 21);
  } finally {
    closeSync(fd);
    await Deno.remove(dir, { recursive: true });
  }
});

hash.run();
io.run();
batch.run();
hr.run();
errors.run();
