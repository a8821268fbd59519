// Unit tests of the ordered local writer (src/capture/local-writer.ts).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { closeSync, openSync } from "node:fs";
import { LocalWriter } from "../src/capture/local-writer.ts";
import { type BatchOp, NativeError, pread, pwrite } from "../src/native/mod.ts";

await (await import("../native/build.ts")).buildNative();

const SIZE = 256 * 1024;

let dir = "";
let fileNo = 0;

async function withFile(fn: (fd: number, path: string) => Promise<void>): Promise<void> {
  const path = `${dir}/f${++fileNo}`;
  const fd = openSync(path, "w+", 0o600);
  try {
    await pwrite(fd, new Uint8Array(SIZE), 0);
    await fn(fd, path);
  } finally {
    closeSync(fd);
  }
}

async function content(fd: number, len = SIZE): Promise<Uint8Array> {
  const b = new Uint8Array(len);
  await pread(fd, b, 0);
  return b;
}

/** The file after applying ops in order (reads ignored). */
function expected(ops: BatchOp[], base = new Uint8Array(SIZE)): Uint8Array {
  const d = base.slice();
  for (const o of ops) {
    if (o.op === "write") d.set(o.buf, o.off);
    else if (o.op !== "read") d.fill(0, o.off, o.off + o.len);
  }
  return d;
}

const write = (off: number, len: number, v: number): BatchOp => ({
  op: "write",
  buf: new Uint8Array(len).fill(v),
  off,
});

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  assert.unreachable("expected a rejection");
  throw new Error("unreachable");
}

// ---------------------------------------------------------------------------
const order = suite("LocalWriter order");

order.before(async () => {
  dir = await Deno.makeTempDir({ prefix: "cn-lw-" });
});
order.after(async () => {
  await Deno.remove(dir, { recursive: true });
});

order("overlapping operations enqueued in one turn apply in enqueue order", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    const ops: BatchOp[] = [];
    for (let i = 0; i < 200; i++) {
      const off = (i * 997) % (SIZE - 9000);
      const kind = i % 10;
      if (kind === 7) ops.push({ op: "zero", off, len: 3000 + i });
      else if (kind === 9) ops.push({ op: "trim", off, len: 5000 });
      else ops.push(write(off, 1 + (i * 131) % 9000, (i % 250) + 1));
    }
    await Promise.all(ops.map((o) => w.run(o)));
    assert.equal(await content(fd), expected(ops));
    assert.is(w.completed, ops.length);
    assert.is(w.depth, 0);
  });
});

order("operations enqueued while a batch runs form the next batch, still in order", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    const ops: BatchOp[] = [];
    const ps: Promise<void>[] = [];
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 10; i++) {
        const o = write(1000 * i + round * 10, 4000, round * 10 + i + 1);
        ops.push(o);
        ps.push(w.run(o));
      }
      // let some batches start before the next round is queued
      if (round % 3 === 0) await new Promise((r) => setTimeout(r, 0));
      else await Promise.resolve();
    }
    await Promise.all(ps);
    assert.equal(await content(fd), expected(ops));
  });
});

order("promises resolve in enqueue order", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    const done: number[] = [];
    const ps = [];
    for (let i = 0; i < 50; i++) {
      ps.push(w.run(write(0, 100, i)).then(() => done.push(i)));
      if (i % 7 === 0) await Promise.resolve();
    }
    await Promise.all(ps);
    assert.equal(done, [...Array(50).keys()]);
  });
});

order("a read sees every write enqueued before it and none after", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    const r1 = new Uint8Array(100).fill(0xee);
    const r2 = new Uint8Array(100).fill(0xee);
    const all = [
      w.run(write(0, 100, 1)),
      w.run({ op: "read", buf: r1, off: 0 }),
      w.run(write(50, 100, 2)),
      w.run({ op: "zero", off: 0, len: 10 }),
      w.run({ op: "read", buf: r2, off: 0 }),
      w.run(write(0, 100, 3)),
    ];
    await Promise.all(all);
    assert.ok(r1.every((x) => x === 1));
    const want = new Uint8Array(100).fill(1);
    want.fill(2, 50);
    want.fill(0, 0, 10);
    assert.equal(r2, want);
    assert.ok((await content(fd, 100)).every((x) => x === 3));
  });
});

order("sync() resolves after everything enqueued before it; sync writes resolve too", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    let wrote = false;
    const p = w.run(write(10, 10, 9)).then(() => wrote = true);
    await w.sync();
    assert.ok(wrote, "the earlier write finished first");
    await w.run(write(20, 10, 8), true);
    await p;
    const c = await content(fd, 40);
    assert.ok(c.subarray(10, 20).every((x) => x === 9));
    assert.ok(c.subarray(20, 30).every((x) => x === 8));
    await w.sync();
  });
});

order("an idle writer starts again for later work", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    await w.run(write(0, 10, 1));
    await new Promise((r) => setTimeout(r, 5));
    await w.run(write(5, 10, 2));
    const c = await content(fd, 20);
    assert.equal([...c.subarray(0, 16)], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0]);
  });
});

// ---------------------------------------------------------------------------
const failures = suite("LocalWriter failures");

failures.before(async () => {
  dir = await Deno.makeTempDir({ prefix: "cn-lw-" });
});
failures.after(async () => {
  await Deno.remove(dir, { recursive: true });
});

failures("on a read-only descriptor writes fail alone; reads in the same batch succeed", async () => {
  await withFile(async (fd, path) => {
    await pwrite(fd, new Uint8Array(100).fill(7), 0);
    const ro = openSync(path, "r");
    try {
      const w = new LocalWriter(ro);
      const a = new Uint8Array(50), c = new Uint8Array(50);
      const pa = w.run({ op: "read", buf: a, off: 0 });
      const pb = w.run(write(0, 10, 1));
      const pc = w.run({ op: "read", buf: c, off: 50 });
      const pd = w.run({ op: "trim", off: 0, len: 4096 });
      const pe = w.sync();
      const [eb, ed] = await Promise.all([rejection(pb), rejection(pd)]);
      await pa;
      await pc;
      await pe;
      assert.instance(eb, NativeError);
      assert.is((eb as NativeError).code, "EBADF");
      assert.instance(ed, NativeError);
      assert.ok(a.every((x) => x === 7));
      assert.ok(c.every((x) => x === 7));
    } finally {
      closeSync(ro);
    }
    assert.ok((await content(fd, 100)).every((x) => x === 7), "nothing was written");
  });
});

failures("a failing write rejects only itself; the others land, in order", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    const bad: BatchOp = { op: "write", buf: new Uint8Array(8).fill(0xbb), off: 2 ** 63 }; // EINVAL
    const ops: BatchOp[] = [write(0, 100, 1), write(50, 100, 2), bad, write(75, 10, 3), write(0, 10, 4)];
    const ps = ops.map((o) => w.run(o));
    const results = await Promise.allSettled(ps);
    assert.equal(results.map((r) => r.status), [
      "fulfilled",
      "fulfilled",
      "rejected",
      "fulfilled",
      "fulfilled",
    ]);
    const e = (results[2] as PromiseRejectedResult).reason;
    assert.instance(e, NativeError);
    assert.is((e as NativeError).code, "EINVAL");
    const good = ops.filter((o) => o !== bad);
    assert.equal(await content(fd), expected(good));
  });
});

failures("a failure in one batch does not disturb the next one", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    const bad = w.run({ op: "write", buf: new Uint8Array(1), off: 2 ** 63 });
    const e = await rejection(bad);
    assert.instance(e, NativeError);
    await w.run(write(0, 20, 5));
    const reads = new Uint8Array(20);
    await w.run({ op: "read", buf: reads, off: 0 });
    assert.ok(reads.every((x) => x === 5));
  });
});

failures("overlapping writes around a failing one keep their order on the retry path", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    const ops: BatchOp[] = [];
    const ps: Promise<unknown>[] = [];
    for (let i = 0; i < 30; i++) {
      const o = i % 10 === 5
        ? { op: "write" as const, buf: new Uint8Array(4), off: 2 ** 63 }
        : write(i * 3, 40, i + 1);
      if (i % 10 !== 5) ops.push(o);
      ps.push(w.run(o).catch(() => "failed"));
    }
    const res = await Promise.all(ps);
    assert.equal(res.filter((r) => r === "failed").length, 3);
    assert.equal(await content(fd), expected(ops));
  });
});

failures("completed counts operations that succeeded, not sync points, on the retry path too", async () => {
  await withFile(async (fd) => {
    const w = new LocalWriter(fd);
    await Promise.all([w.run(write(0, 10, 1)), w.sync()]);
    assert.is(w.completed, 1, "a sync point is not an operation");
    const ps = [
      w.run({ op: "write", buf: new Uint8Array(1), off: 2 ** 63 }).catch(() => {}),
      w.run(write(10, 10, 2)),
      w.sync(),
    ];
    await Promise.all(ps);
    assert.is(
      w.completed,
      2,
      "one more successful operation; the failed one and the sync point do not count",
    );
  });
});

order.run();
failures.run();
