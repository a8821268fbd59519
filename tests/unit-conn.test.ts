// Unit tests of the buffered connection reader and the coalescing writer
// (src/io/conn-reader.ts) over fake streams that deliver data in awkward chunks, and of the
// journal read buffers a site sender uses again once its writer consumed them
// (src/journal/read-buffers.ts).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ConnReader, ConnWriter, type Readable, type Writable } from "../src/io/conn-reader.ts";
import { ReadBuffers } from "../src/journal/read-buffers.ts";

/** Deterministic pseudo-random numbers (xorshift32). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

function bytes(n: number, seed = 7): Uint8Array {
  const r = rng(seed);
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

/**
 * A stream over `data` that hands out at most chunks[i % chunks.length] bytes per
 * read (fewer if the caller's buffer is smaller), asynchronously, then null.
 */
class FakeReader implements Readable {
  at = 0;
  reads = 0;
  private i = 0;
  constructor(private readonly data: Uint8Array, private readonly chunks: number[] = [1]) {}
  async read(p: Uint8Array): Promise<number | null> {
    await Promise.resolve();
    this.reads++;
    if (this.at >= this.data.length) return null;
    assert.ok(p.length > 0, "read with an empty buffer would return 0 forever");
    const n = Math.min(p.length, this.chunks[this.i++ % this.chunks.length], this.data.length - this.at);
    p.set(this.data.subarray(this.at, this.at + n));
    this.at += n;
    return n;
  }
}

const chunkings: [string, number[]][] = [
  ["1-byte", [1]],
  ["awkward", [3, 1, 7, 2, 13, 1, 1, 5]],
  ["large", [1000]],
  ["mixed", [1, 64, 2, 9, 300, 1]],
];

// ---------------------------------------------------------------------------
const reader = suite("ConnReader");

reader("fill + take reassemble the stream exactly, for every chunking", async () => {
  const data = bytes(5000);
  for (const [name, chunks] of chunkings) {
    const r = new ConnReader(new FakeReader(data, chunks), 64);
    const out: number[] = [];
    const sizes = [1, 4, 16, 28, 64, 5, 63, 2];
    let k = 0;
    while (out.length < data.length) {
      const n = Math.min(sizes[k++ % sizes.length], data.length - out.length);
      assert.ok(await r.fill(n), `${name}: fill(${n}) at ${out.length}`);
      assert.ok(r.buffered >= n);
      out.push(...r.take(n));
    }
    assert.equal(new Uint8Array(out), data, name);
    assert.is(await r.fill(1), false, `${name}: end of stream`);
    assert.is(r.buffered, 0);
  }
});

reader("fill keeps working when the buffer must be compacted (tiny buffer, unaligned takes)", async () => {
  const data = bytes(2000, 3);
  const r = new ConnReader(new FakeReader(data, [5, 3]), 8);
  const out: number[] = [];
  let pos = 0;
  while (pos < data.length) {
    // take odd amounts so the data sits at odd places in the buffer
    const n = Math.min(pos % 2 === 0 ? 7 : 3, data.length - pos);
    assert.ok(await r.fill(n));
    out.push(...r.take(n));
    pos += n;
  }
  assert.equal(new Uint8Array(out), data);
});

reader("take gives views of consecutive bytes; fill(0) is a no-op", async () => {
  const data = bytes(100, 11);
  const r = new ConnReader(new FakeReader(data, [100]), 128);
  assert.ok(await r.fill(0));
  assert.ok(await r.fill(10));
  assert.is(r.buffered, 100, "one read brought everything");
  assert.equal(r.take(3), data.subarray(0, 3));
  assert.equal(r.take(4), data.subarray(3, 7));
  assert.is(r.buffered, 93);
  assert.equal(r.take(93), data.subarray(7));
  assert.is(r.buffered, 0);
});

reader("fill of more than the buffer size throws", async () => {
  const r = new ConnReader(new FakeReader(bytes(100)), 16);
  let threw = false;
  try {
    await r.fill(17);
  } catch {
    threw = true;
  }
  assert.ok(threw);
  assert.ok(await r.fill(16), "exactly the buffer size is fine");
});

reader("end of stream in the middle of a fill: false, the partial bytes stay buffered", async () => {
  for (const [name, chunks] of chunkings) {
    const data = bytes(10, 5);
    const r = new ConnReader(new FakeReader(data, chunks), 64);
    assert.is(await r.fill(16), false, name);
    assert.is(r.buffered, 10, name);
    assert.equal(r.take(10), data, name);
  }
  const empty = new ConnReader(new FakeReader(new Uint8Array(0)), 64);
  assert.is(await empty.fill(1), false);
  assert.is(empty.buffered, 0);
});

reader(
  "readExact: buffered bytes first, the rest straight from the stream, larger than the buffer",
  async () => {
    for (const [name, chunks] of chunkings) {
      const data = bytes(3000, 9);
      const r = new ConnReader(new FakeReader(data, chunks), 32);
      assert.ok(await r.fill(5));
      assert.equal(r.take(5), data.subarray(0, 5));
      const big = await r.readExact(2000);
      assert.ok(big, name);
      assert.equal(big, data.subarray(5, 2005), name);
      assert.ok(await r.fill(20), name);
      assert.equal(r.take(20), data.subarray(2005, 2025), name);
      const rest = await r.readExact(975);
      assert.equal(rest, data.subarray(2025), name);
      assert.is(await r.readExact(1), undefined, `${name}: nothing left`);
    }
  },
);

reader("readExact does not alias the shared buffer", async () => {
  const data = bytes(64, 2);
  const r = new ConnReader(new FakeReader(data, [64]), 64);
  assert.ok(await r.fill(8));
  const a = await r.readExact(16);
  const copy = a!.slice();
  assert.ok(await r.fill(8));
  r.take(8);
  assert.ok(await r.fill(8));
  assert.equal(a, copy, "later fills did not overwrite an earlier readExact result");
});

reader("readInto: true when filled; false at end of stream with dst partly filled", async () => {
  const data = bytes(50, 4);
  const r = new ConnReader(new FakeReader(data, [3, 1]), 16);
  assert.ok(await r.fill(4));
  const dst = new Uint8Array(30);
  assert.ok(await r.readInto(dst));
  assert.equal(dst, data.subarray(0, 30));
  const dst2 = new Uint8Array(30).fill(0xee);
  assert.is(await r.readInto(dst2), false);
  assert.equal(dst2.subarray(0, 20), data.subarray(30));
  assert.ok(dst2.subarray(20).every((x) => x === 0xee), "nothing written past the end of the stream");
  assert.ok(await r.readInto(new Uint8Array(0)), "an empty destination is always filled");
});

reader("readInto entirely from the buffer does not touch the stream", async () => {
  const data = bytes(40, 6);
  const fake = new FakeReader(data, [40]);
  const r = new ConnReader(fake, 64);
  assert.ok(await r.fill(1));
  const reads = fake.reads;
  const dst = new Uint8Array(25);
  assert.ok(await r.readInto(dst));
  assert.is(fake.reads, reads);
  assert.equal(dst, data.subarray(0, 25));
  assert.is(r.buffered, 15);
});

reader("discard skips across buffered and unbuffered bytes; false at end of stream", async () => {
  for (const [name, chunks] of chunkings) {
    const data = bytes(1000, 8);
    const r = new ConnReader(new FakeReader(data, chunks), 16);
    assert.ok(await r.fill(6));
    assert.equal(r.take(2), data.subarray(0, 2));
    assert.ok(await r.discard(500), name);
    assert.ok(await r.fill(4), name);
    assert.equal(r.take(4), data.subarray(502, 506), name);
    assert.ok(await r.discard(0), name);
    assert.ok(await r.fill(1), name);
    assert.equal(r.take(1), data.subarray(506, 507), name);
    assert.is(await r.discard(1000), false, `${name}: more than is left`);
  }
});

reader("random interleaving of every operation matches a simple model", async () => {
  const rand = rng(12345);
  for (let round = 0; round < 40; round++) {
    const data = bytes(4000, round + 100);
    const chunks = Array.from({ length: 5 }, () => 1 + Math.floor(rand() * (rand() < 0.5 ? 4 : 200)));
    const bufSize = 8 + Math.floor(rand() * 120);
    const r = new ConnReader(new FakeReader(data, chunks), bufSize);
    let pos = 0;
    while (pos < data.length) {
      const left = data.length - pos;
      const op = Math.floor(rand() * 4);
      const n = Math.min(left, 1 + Math.floor(rand() * (op === 0 ? bufSize : 300)));
      const what = `round ${round} op ${op} n ${n} pos ${pos} buf ${bufSize} chunks ${chunks}`;
      if (op === 0) {
        assert.ok(await r.fill(n), what);
        assert.equal(r.take(n), data.subarray(pos, pos + n), what);
      } else if (op === 1) {
        assert.equal(await r.readExact(n), data.subarray(pos, pos + n), what);
      } else if (op === 2) {
        const d = new Uint8Array(n);
        assert.ok(await r.readInto(d), what);
        assert.equal(d, data.subarray(pos, pos + n), what);
      } else {
        assert.ok(await r.discard(n), what);
      }
      pos += n;
    }
    assert.is(await r.fill(1), false);
  }
});

// ---------------------------------------------------------------------------
const writer = suite("ConnWriter");

/** Records every write; accepts at most `max` bytes per call, after `delayMs`. */
class FakeWriter implements Writable {
  calls: Uint8Array[] = [];
  total: number[] = [];
  constructor(
    private readonly max = Infinity,
    private readonly delayMs = 0,
    private readonly failAfter = Infinity,
  ) {}
  async write(p: Uint8Array): Promise<number> {
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    else await Promise.resolve();
    if (this.calls.length >= this.failAfter) throw new Error("connection reset");
    const n = Math.min(p.length, this.max);
    this.calls.push(p.slice(0, n));
    this.total.push(...p.subarray(0, n));
    return n;
  }
}

writer("everything arrives in order, even with 1-byte partial writes", async () => {
  const w = new FakeWriter(1);
  const cw = new ConnWriter(w);
  const msgs = Array.from({ length: 30 }, (_, i) => bytes(1 + (i * 7) % 23, i + 1));
  for (const m of msgs) cw.send(m);
  await cw.drained();
  const expected = msgs.flatMap((m) => [...m]);
  assert.equal(w.total, expected);
  assert.is(cw.pending, 0);
  assert.is(cw.error, undefined);
});

writer("small messages sent in one turn are coalesced into fewer writes", async () => {
  const w = new FakeWriter();
  const cw = new ConnWriter(w);
  const msgs = Array.from({ length: 20 }, (_, i) => bytes(16, i + 50));
  for (const m of msgs) cw.send(m);
  assert.is(cw.pending, 20 * 16);
  await cw.drained();
  assert.equal(w.total, msgs.flatMap((m) => [...m]));
  assert.ok(w.calls.length <= 2, `${w.calls.length} writes for 20 small messages`);
});

writer("coalescing respects the limit; a large message goes out on its own", async () => {
  const w = new FakeWriter();
  const limit = 100;
  const cw = new ConnWriter(w, limit);
  const msgs = [
    bytes(10, 1),
    bytes(30, 2),
    bytes(30, 3),
    bytes(30, 4),
    bytes(30, 5),
    bytes(250, 6),
    bytes(5, 7),
    bytes(5, 8),
  ];
  for (const m of msgs) cw.send(m);
  await cw.drained();
  assert.equal(w.total, msgs.flatMap((m) => [...m]));
  for (const c of w.calls) {
    assert.ok(c.length <= limit || c.length === 250, `write of ${c.length} bytes`);
  }
  assert.ok(w.calls.some((c) => c.length === 250), "the large message was not merged");
  assert.ok(w.calls.length < msgs.length, "something was coalesced");
});

writer(
  "messages sent while a write is in flight follow in order; drained waits for all of them",
  async () => {
    const w = new FakeWriter(7, 5);
    const cw = new ConnWriter(w, 50);
    const sent: number[] = [];
    const send = (m: Uint8Array) => {
      sent.push(...m);
      cw.send(m);
    };
    send(bytes(40, 1));
    await new Promise((r) => setTimeout(r, 1));
    send(bytes(3, 2));
    send(bytes(60, 3));
    const d1 = cw.drained();
    send(bytes(9, 4));
    let done = false;
    d1.then(() => done = true);
    await new Promise((r) => setTimeout(r, 3));
    assert.not.ok(done, "drained does not resolve while bytes are queued");
    await d1;
    assert.equal(w.total, sent);
    assert.is(cw.pending, 0);
    // drained when idle resolves at once
    await cw.drained();
  },
);

writer("chunks coalesced one after another, each written slowly in parts, arrive intact", async () => {
  // every coalesced chunk goes through one buffer: the next may fill it only once the write is done
  const w = new FakeWriter(10, 1);
  const cw = new ConnWriter(w, 32);
  const msgs = Array.from({ length: 40 }, (_, i) => bytes(8, i + 1));
  for (const m of msgs) cw.send(m);
  await cw.drained();
  assert.equal(w.total, msgs.flatMap((m) => [...m]));
  assert.ok(w.calls.length >= 40 * 8 / 10, "written in parts");
});

writer("drained resolves immediately on a fresh writer", async () => {
  const cw = new ConnWriter(new FakeWriter());
  const r = await Promise.race([
    cw.drained().then(() => "drained"),
    new Promise((r) => setTimeout(() => r("timeout"), 50)),
  ]);
  assert.is(r, "drained");
});

writer("several drained() waiters all resolve", async () => {
  const w = new FakeWriter(5, 1);
  const cw = new ConnWriter(w);
  cw.send(bytes(20));
  const all = await Promise.all([cw.drained(), cw.drained(), cw.drained()]);
  assert.is(all.length, 3);
  assert.is(w.total.length, 20);
});

writer("a failed write: error is kept, drained resolves, later sends are dropped", async () => {
  const w = new FakeWriter(4, 0, 2);
  const cw = new ConnWriter(w, 8);
  cw.send(bytes(20, 1));
  cw.send(bytes(20, 2));
  await cw.drained();
  assert.instance(cw.error, Error);
  assert.match(cw.error!.message, /reset/);
  assert.is(cw.pending, 0);
  const calls = w.calls.length;
  cw.send(bytes(4, 3));
  await cw.drained();
  assert.is(w.calls.length, calls, "nothing written after the failure");
});

writer(
  "mark: true once everything queued before it is written, not before; a failure drops the rest",
  async () => {
    const w = new FakeWriter(Infinity, 20, 3);
    const cw = new ConnWriter(w, 8);
    assert.ok(cw.mark()(), "nothing queued: consumed");
    cw.send(bytes(20, 1));
    const first = cw.mark();
    cw.send(bytes(20, 2));
    const second = cw.mark();
    assert.not.ok(first(), "queued, not written");
    while (w.calls.length < 1) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 0));
    assert.ok(first(), "written");
    assert.not.ok(second(), "the second is still to write");
    cw.send(bytes(20, 3));
    cw.send(bytes(20, 4));
    const third = cw.mark();
    await cw.drained();
    assert.ok(cw.error, "the fourth write failed");
    assert.ok(second() && third(), "what a failed connection dropped is no longer held");
  },
);

const buffers = suite("ReadBuffers");

buffers(
  "a buffer is taken again only once what was sent from it is written, and its bytes stay put until then",
  async () => {
    const w = new FakeWriter(Infinity, 10);
    const cw = new ConnWriter(w, 8);
    const rb = new ReadBuffers(2, () => cw.mark());
    // as a sender does: a read into a buffer, frames sent as views of it, then the next read
    const a = rb.take(1000);
    a.set(bytes(1000, 1));
    cw.send(a.subarray(0, 600));
    cw.send(a.subarray(600, 1000));
    const b = rb.take(1000);
    assert.is.not(b.buffer, a.buffer, "the first buffer is still queued");
    b.set(bytes(1000, 2));
    cw.send(b);
    const c = rb.take(500);
    assert.ok(c.buffer !== a.buffer && c.buffer !== b.buffer, "both are queued: a buffer of its own");
    c.fill(0xee); // not kept: nothing sent from it matters
    await cw.drained();
    assert.equal(
      new Uint8Array(w.total),
      new Uint8Array([...bytes(1000, 1), ...bytes(1000, 2)]),
      "sent intact",
    );
    const again = rb.take(800);
    assert.ok(again.buffer === a.buffer || again.buffer === b.buffer, "a written buffer is used again");
  },
);

buffers("a buffer grows for a larger read; one beyond the kept size is not kept", () => {
  const rb = new ReadBuffers(1, () => () => true);
  const small = rb.take(100);
  const larger = rb.take(5000);
  assert.ok(larger.length >= 5000 && larger.buffer !== small.buffer);
  assert.is(rb.take(10).buffer, larger.buffer, "the larger one is kept");
  const huge = rb.take(64 << 20);
  assert.is.not(huge.buffer, larger.buffer);
  assert.is(rb.take(10).buffer, larger.buffer, "the huge one was not kept");
});

reader.run();
writer.run();
buffers.run();
