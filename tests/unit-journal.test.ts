// Unit tests of the gateway journal (native/journal.c through src/journal/journal.ts, with its
// libsql index): group commit, cursors, wrap-around, backpressure, the checkpoint, and crash
// recovery.
//
// The crash test re-runs this file as a child process (CN_JOURNAL_CRASH_CHILD set)
// that appends records and exits without closing anything.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDatabase, type OpenedDb } from "../src/db/db.ts";
import { journalState, segments, volumes } from "../src/db/schema.ts";
import {
  type Cursor,
  Journal,
  type JournalEntry,
  type JournalOptions,
  type VolumeInfo,
} from "../src/journal/journal.ts";
import { CHECKPOINT_SLOTS, DATA_START, flipByte, place, writeAt } from "./lib/ring-file.ts";
import { native } from "../src/native/ffi.ts";
import {
  decodeHeader,
  encodeRecord,
  FLAG_FUA,
  HEADER_SIZE,
  Kind,
  payloadIntact,
  type RecordHeader,
} from "../src/record/record.ts";
import { xxh3 } from "../src/native/mod.ts";
import { setLogSink } from "../src/log.ts";
import { Volume } from "../src/volume/volume.ts";

await (await import("../native/build.ts")).buildNative();

const MiB = 1024 * 1024;
const MAX_PAYLOAD = 32 * MiB;
/** Just above the smallest ring the journal accepts (room for two largest records). */
const RING_SIZE = DATA_START + 2 * (HEADER_SIZE + MAX_PAYLOAD) + 64 * 1024;
const DB_FILE = "gw.db";
const RING_FILE = "journal.ring";

const logs: string[] = [];
setLogSink((line) => logs.push(line));

// ---------------------------------------------------------------------------
// helpers

function hex(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** Cheap deterministic payload for a sequence number. */
function payloadFor(seq: number, len: number): Uint8Array {
  const b = new Uint8Array(len);
  b.fill((seq * 37 + 11) & 0xff);
  const v = new DataView(b.buffer);
  for (let at = 0; at + 8 <= len; at += 4093) v.setFloat64(at, seq * 1000 + at);
  if (len > 0) b[len - 1] = seq & 0xff;
  return b;
}

interface Rec {
  header: RecordHeader;
  bytes: Uint8Array;
  sum: string;
}

/** A record as an agent sends it (volume id is the agent's; the journal restamps it). */
function rec(seq: number, len: number, o: { kind?: Kind; flags?: number } = {}): Rec {
  const kind = o.kind ?? Kind.Write;
  const payload = kind === Kind.Write ? payloadFor(seq, len) : undefined;
  const header: RecordHeader = {
    kind,
    flags: o.flags ?? 0,
    volume: 4242,
    length: kind === Kind.Flush ? 0 : len,
    seq,
    offset: (seq * 4096) % (1 << 30),
    time: 1_700_000_000_000 + seq,
    pos: 0,
  };
  return { header, bytes: encodeRecord(header, payload), sum: payload ? hex(xxh3(payload)) : "" };
}

interface Gw {
  dir: string;
  o: OpenedDb;
  j: Journal;
  close(): Promise<void>;
}

async function openGw(dir: string, opts: JournalOptions = {}): Promise<Gw> {
  const o = await openDatabase(`${dir}/${DB_FILE}`);
  let j: Journal;
  try {
    j = await Journal.open(o.db, `${dir}/${RING_FILE}`, RING_SIZE, { commitDelayMs: 2, ...opts });
  } catch (e) {
    o.close();
    throw e;
  }
  return {
    dir,
    o,
    j,
    close: async () => {
      await j.close();
      o.close();
    },
  };
}

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "cn-journal-" });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** True when p settles within ms. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let done = false;
  p.then(() => done = true, () => done = true);
  const end = Date.now() + ms;
  while (!done && Date.now() < end) await sleep(5);
  return done;
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, rej) =>
        timer = setTimeout(() => rej(new Error(`${what}: no result after ${ms} ms`)), ms)
      ),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Checks one entry read back from the journal against what was appended. */
function checkEntry(e: JournalEntry, volume: number, sums: Map<number, string>, what = ""): void {
  const h = decodeHeader(e.bytes, MAX_PAYLOAD);
  assert.equal(h, e.header, `${what} stored header = entry header`);
  assert.is(e.header.pos, e.pos, `${what} header carries its journal position`);
  assert.is(e.header.volume, volume, `${what} volume restamped to the journal's id`);
  assert.is(e.end, e.pos + e.bytes.length, `${what} end`);
  assert.ok(payloadIntact(e.bytes, h), `${what} payload intact (seq ${h.seq})`);
  const want = sums.get(h.seq);
  assert.ok(want !== undefined, `${what} seq ${h.seq} was appended`);
  if (h.kind === Kind.Write) {
    assert.is(hex(xxh3(e.bytes.subarray(HEADER_SIZE))), want, `${what} payload of seq ${h.seq}`);
  }
}

/** Reads with the cursor up to the journal's durable position; returns the non-wrap entries and the wrap count. */
async function readUpToDurable(
  j: Journal,
  c: Cursor,
  maxBytes = 64 * MiB,
): Promise<{ entries: JournalEntry[]; wraps: number }> {
  const entries: JournalEntry[] = [];
  let wraps = 0;
  while (c.position < j.positions.durable) {
    const got = await within(c.next(maxBytes), 10_000, "cursor.next");
    assert.ok(got.length > 0, "next returns at least one entry below the durable position");
    for (const e of got) {
      if (e.header.kind === Kind.Wrap) wraps++;
      else entries.push(e);
    }
  }
  return { entries, wraps };
}

async function appendAll(j: Journal, volume: number, recs: Rec[], sums: Map<number, string>): Promise<void> {
  for (const r of recs) {
    sums.set(r.header.seq, r.sum);
    await j.append(volume, r.bytes, r.header);
  }
}

/** Copies the regular files of one directory into another. */
async function copyDir(from: string, to: string): Promise<void> {
  for await (const e of Deno.readDir(from)) {
    if (e.isFile) await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
  }
}

/** Flips one bit of a byte of the ring file (ring positions are logical; the data starts at DATA_START). */
function flipRingByte(dir: string, dataSize: number, pos: number): void {
  flipByte(`${dir}/${RING_FILE}`, DATA_START + (pos % dataSize));
}

/**
 * Every reader is registered: the journal may release space from now on (a gateway starts its
 * mirror for that). Here a mirror with no images: it releases what is durable at once, so the
 * tests' own cursors are what holds the tail.
 */
function readersReady(j: Journal): void {
  assert.is(native().cn_journal_mirror_start(j.ptr, 0n, 1000, 0), 0);
}

// ---------------------------------------------------------------------------
const basics = suite("journal basics");

basics("volumes: registered once, found again, a size change refused", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir);
  try {
    const a = await gw.j.registerVolume("agent-a", "disk", 64 * MiB, "/mirror/a/disk");
    assert.is(a.known, false);
    assert.is(a.lastSeq, 0);
    assert.is(a.durableSeq, 0);
    const again = await gw.j.registerVolume("agent-a", "disk", 64 * MiB, "/mirror/a/disk");
    assert.is(again.id, a.id);
    const b = await gw.j.registerVolume("agent-b", "disk", 64 * MiB, "/mirror/b/disk");
    assert.is.not(b.id, a.id);
    let refused = false;
    try {
      await gw.j.registerVolume("agent-a", "disk", 32 * MiB, "/x");
    } catch (e) {
      refused = /cannot change size/.test((e as Error).message);
    }
    assert.ok(refused, "a size change is refused");
    assert.equal(gw.j.volumes().map((v) => v.id).sort(), [a.id, b.id].sort());
    assert.is(gw.j.volume(a.id)?.name, "disk");
    let unknown = false;
    try {
      await gw.j.append(a.id + b.id + 100, rec(1, 10).bytes, rec(1, 10).header);
    } catch {
      unknown = true;
    }
    assert.ok(unknown, "append to an unregistered volume is refused");
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

basics(
  "appended records become durable: the listener reports the last seq, a cursor reads all in order",
  async () => {
    const dir = await tempDir();
    const gw = await openGw(dir);
    try {
      const v = await gw.j.registerVolume("agent-a", "disk", 1024 * MiB, "/m");
      const heard: [number, number][] = [];
      const off = gw.j.onDurable((vol, seq) => heard.push([vol, seq]));
      const sums = new Map<number, string>();
      const recs = Array.from({ length: 50 }, (_, i) => {
        const seq = i + 1;
        if (seq % 10 === 0) return rec(seq, 0, { kind: Kind.Flush });
        if (seq % 7 === 0) return rec(seq, 65536, { kind: Kind.Trim });
        return rec(seq, 1 + (seq * 7919) % 70_000);
      });
      await appendAll(gw.j, v.id, recs, sums);
      assert.is(v.lastSeq, 50, "accepted");
      await within(gw.j.flushed(), 10_000, "flushed");
      assert.ok(heard.length > 0, "the durable listener fired");
      assert.equal(heard[heard.length - 1], [v.id, 50]);
      for (let i = 1; i < heard.length; i++) {
        assert.ok(
          heard[i][1] >= heard[i - 1][1],
          "durable seqs never go back",
        );
      }
      assert.is(gw.j.volume(v.id)!.durableSeq, 50);
      const p = gw.j.positions;
      assert.is(p.durable, p.head);
      assert.is(p.head, recs.reduce((n, r) => n + r.bytes.length, 0), "records are laid end to end");
      off();

      const c = gw.j.cursor("reader", 0);
      const { entries, wraps } = await readUpToDurable(gw.j, c, 100_000);
      assert.is(wraps, 0);
      assert.equal(entries.map((e) => e.header.seq), recs.map((r) => r.header.seq));
      for (const e of entries) checkEntry(e, v.id, sums);
      assert.equal(entries.map((e) => e.header.kind), recs.map((r) => r.header.kind));
    } finally {
      await gw.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

basics("a FUA record or a FLUSH is committed at once, without waiting for the commit delay", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir, { commitDelayMs: 60_000 });
  try {
    const v = await gw.j.registerVolume("a", "d", 64 * MiB, "/m");
    const heard: number[] = [];
    gw.j.onDurable((_vol, seq) => heard.push(seq));
    const sums = new Map<number, string>();
    await appendAll(gw.j, v.id, [rec(1, 100), rec(2, 100)], sums);
    await sleep(100);
    assert.equal(heard, [], "plain writes wait for the (long) commit delay");
    await appendAll(gw.j, v.id, [rec(3, 100, { flags: FLAG_FUA })], sums);
    const t0 = Date.now();
    while (heard.at(-1) !== 3 && Date.now() - t0 < 5000) await sleep(2);
    assert.is(heard.at(-1), 3, "FUA made everything up to it durable");
    await appendAll(gw.j, v.id, [rec(4, 100), rec(5, 0, { kind: Kind.Flush })], sums);
    const t1 = Date.now();
    while (heard.at(-1) !== 5 && Date.now() - t1 < 5000) await sleep(2);
    assert.is(heard.at(-1), 5, "a FLUSH barrier too");
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

basics("a pause in the appends commits at once (--commit-idle); a stream keeps them together", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir, { commitDelayMs: 60_000, commitIdleMs: 300 });
  try {
    const v = await gw.j.registerVolume("a", "d", 64 * MiB, "/m");
    const heard: number[] = [];
    gw.j.onDurable((_vol, seq) => heard.push(seq));
    const sums = new Map<number, string>();
    // appends every 10 ms: never a 300 ms pause, so no commit while they go on
    for (let s = 1; s <= 10; s++) {
      await appendAll(gw.j, v.id, [rec(s, 100)], sums);
      await sleep(10);
    }
    assert.equal(heard, [], "a steady stream waits for a pause (or the delay, or a barrier)");
    const t0 = Date.now();
    while (heard.at(-1) !== 10 && Date.now() - t0 < 5000) await sleep(2);
    assert.equal(heard, [10], "one commit for the whole stream, once it paused");
    assert.ok(Date.now() - t0 < 2000, `committed ${Date.now() - t0} ms after the pause began`);
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

basics("a FUA record queued behind a ring write in flight is still committed at once", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir, { commitDelayMs: 60_000, commitBytes: 2 ** 40 });
  try {
    const v = await gw.j.registerVolume("a", "d", 1024 ** 3, "/m");
    let last = 0;
    gw.j.onDurable((_vol, seq) => last = seq);
    const sums = new Map<number, string>();
    // a tiny first batch starts the writer; the rest (with the FUA last) queue behind it
    const recs = [rec(1, 10), ...Array.from({ length: 20 }, (_, i) => rec(i + 2, 2 * MiB))];
    recs.push(rec(22, 10, { flags: FLAG_FUA }));
    await Promise.all(recs.map((r) => {
      sums.set(r.header.seq, r.sum);
      return gw.j.append(v.id, r.bytes, r.header);
    }));
    const t0 = Date.now();
    while (last < 22 && Date.now() - t0 < 3000) await sleep(5);
    assert.is(last, 22, `FUA record durable within 3 s (commit delay is 60 s); durable seq is ${last}`);
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

basics("flushed() right after appends does not wait for the commit delay", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir, { commitDelayMs: 60_000, commitBytes: 2 ** 40 });
  try {
    const v = await gw.j.registerVolume("a", "d", 1024 ** 3, "/m");
    // appended in one turn: the first ring write is still in flight when flushed() is called
    const recs = Array.from({ length: 10 }, (_, i) => rec(i + 1, 1000));
    const appends = recs.map((r) => gw.j.append(v.id, r.bytes, r.header));
    const ok = await settlesWithin(gw.j.flushed(), 3000);
    await Promise.all(appends);
    assert.ok(ok, "flushed() resolved within 3 s although the commit delay is 60 s");
    assert.is(gw.j.volume(v.id)!.durableSeq, 10);
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

basics("a batch over commitBytes is committed without waiting for the delay", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir, { commitDelayMs: 60_000, commitBytes: 1 * MiB });
  try {
    const v = await gw.j.registerVolume("a", "d", 64 * MiB, "/m");
    let last = 0;
    gw.j.onDurable((_vol, seq) => last = seq);
    await appendAll(gw.j, v.id, [rec(1, 600_000), rec(2, 600_000)], new Map());
    const t0 = Date.now();
    while (last < 2 && Date.now() - t0 < 5000) await sleep(2);
    assert.is(last, 2);
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

basics("records, volumes and positions survive close and reopen; reading mixes ring and memory", async () => {
  const dir = await tempDir();
  const sums = new Map<number, string>();
  let id = 0;
  let head = 0;
  {
    const gw = await openGw(dir);
    const v = await gw.j.registerVolume("agent-a", "disk", 64 * MiB, "/m/disk");
    id = v.id;
    await appendAll(gw.j, id, Array.from({ length: 20 }, (_, i) => rec(i + 1, 10_000 + i)), sums);
    await gw.close();
    head = gw.j.positions.head;
  }
  const gw = await openGw(dir);
  try {
    const v = gw.j.volume(id)!;
    assert.ok(v, "volume known after reopen");
    assert.is(v.known, true);
    assert.is(v.lastSeq, 20);
    assert.is(v.durableSeq, 20);
    assert.is(v.mirrorPath, "/m/disk");
    assert.equal(gw.j.positions.head, head);
    assert.equal(gw.j.positions.durable, head);
    const again = await gw.j.registerVolume("agent-a", "disk", 64 * MiB, "/m/disk");
    assert.is(again.id, id);
    // new records after the reopen live in memory; the old ones come from the ring
    await appendAll(gw.j, id, [rec(21, 5000), rec(22, 0, { kind: Kind.Flush }), rec(23, 7)], sums);
    await gw.j.flushed();
    const { entries } = await readUpToDurable(gw.j, gw.j.cursor("r", 0), 50_000);
    assert.equal(entries.map((e) => e.header.seq), Array.from({ length: 23 }, (_, i) => i + 1));
    for (const e of entries) checkEntry(e, id, sums);
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

basics("nothing is released before every reader is registered (the mirror's start)", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir);
  try {
    const v = await gw.j.registerVolume("a", "d", 64 * MiB, "/m");
    await appendAll(gw.j, v.id, Array.from({ length: 10 }, (_, i) => rec(i + 1, 1000)), new Map());
    await gw.j.flushed();
    await sleep(50);
    assert.is(gw.j.positions.tail, 0, "a site's reader opened later may still need every record");
    readersReady(gw.j);
    const t0 = Date.now();
    while (gw.j.positions.tail < gw.j.positions.durable && Date.now() - t0 < 5000) await sleep(5);
    assert.is(gw.j.positions.tail, gw.j.positions.durable, "with no reader left, all of it");
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

basics(
  "the tail and the mirror's position come back from the ring's checkpoint, also when the index lags",
  async () => {
    const dir = await tempDir();
    try {
      const gw = await openGw(dir);
      const v = await gw.j.registerVolume("a", "d", 64 * MiB, "/m");
      const c = gw.j.cursor("site", 0);
      readersReady(gw.j);
      await appendAll(gw.j, v.id, Array.from({ length: 10 }, (_, i) => rec(i + 1, 1000)), new Map());
      await gw.j.flushed();
      const [, , third] = await c.next(3 * 1072);
      c.release(third.end);
      const t0 = Date.now();
      while (gw.j.positions.tail < third.end && Date.now() - t0 < 5000) await sleep(5);
      assert.is(gw.j.positions.tail, third.end);
      const head = gw.j.positions.head;
      await gw.close();
      // an index that did not follow (its writes are not on the commit's path)
      const o = await openDatabase(`${dir}/${DB_FILE}`);
      await o.db.update(journalState).set({ tail: 0, head: 0, appliedPos: 0 });
      o.close();
      const gw2 = await openGw(dir);
      try {
        assert.is(gw2.j.positions.tail, third.end, "tail");
        assert.is(gw2.j.positions.head, head, "head: the records past the index were walked");
        assert.is(gw2.j.mirrorPositions.synced, head, "the mirror had applied everything");
        assert.is(gw2.j.volume(v.id)!.lastSeq, 10);
        assert.is(gw2.j.cursor("site", 0).position, third.end, "a cursor cannot start before the tail");
      } finally {
        await gw2.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

basics("a torn checkpoint slot: the other one is used, and the walk finds the records after it", async () => {
  const dir = await tempDir();
  try {
    const gw = await openGw(dir);
    const v = await gw.j.registerVolume("a", "d", 64 * MiB, "/m");
    const sums = new Map<number, string>();
    for (let i = 1; i <= 6; i++) {
      await appendAll(gw.j, v.id, [rec(i, 2000, { flags: FLAG_FUA })], sums); // a commit each
      await gw.j.flushed();
    }
    await gw.close();
    // damage both slots' newest: find the slot with the larger generation and tear it
    const f = Deno.readFileSync(`${dir}/${RING_FILE}`).subarray(0, DATA_START);
    const gen = (at: number) => new DataView(f.buffer, f.byteOffset + at + 8, 8).getBigUint64(0);
    const newest = gen(CHECKPOINT_SLOTS[0]) > gen(CHECKPOINT_SLOTS[1])
      ? CHECKPOINT_SLOTS[0]
      : CHECKPOINT_SLOTS[1];
    flipByte(`${dir}/${RING_FILE}`, newest + 20);
    const gw2 = await openGw(dir);
    try {
      assert.is(gw2.j.volume(v.id)!.lastSeq, 6, "nothing lost: the walk goes past the older checkpoint");
      const { entries } = await readUpToDurable(gw2.j, gw2.j.cursor("r", 0));
      assert.equal(entries.map((e) => e.header.seq), [1, 2, 3, 4, 5, 6]);
      for (const e of entries) checkEntry(e, v.id, sums);
    } finally {
      await gw2.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

basics("a replaced ring (another buffer file) is refused", async () => {
  const dir = await tempDir();
  try {
    const gw = await openGw(dir);
    await gw.j.registerVolume("a", "d", MiB, "/m");
    await gw.close();
    await Deno.remove(`${dir}/${RING_FILE}`);
    let err: Error | undefined;
    try {
      const again = await openGw(dir);
      await again.close();
    } catch (e) {
      err = e as Error;
    }
    assert.ok(err, "opening with a new ring must fail");
    assert.match(err!.message, /not the one this database indexed/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------
const ring = suite("ring");

ring(
  "a ring file created written through has no preallocated (unwritten) extent left; a reserved one has",
  async () => {
    // an unwritten extent makes the first sync of each of its blocks commit the filesystem's journal
    // too: what writing the ring through at creation saves every group commit of the first lap
    const dir = await tempDir();
    const unwritten = async (path: string) => {
      const out = await new Deno.Command("filefrag", { args: ["-v", path], stdout: "piped", stderr: "piped" })
        .output();
      assert.ok(out.success, `filefrag: ${new TextDecoder().decode(out.stderr)}`);
      return (new TextDecoder().decode(out.stdout).match(/unwritten/g) ?? []).length;
    };
    try {
      const o = await openDatabase(`${dir}/${DB_FILE}`);
      const o2 = await openDatabase(`${dir}/other.db`);
      try {
        const size = RING_SIZE;
        const through = await Journal.open(o.db, `${dir}/through`, size, { writeThrough: true });
        const reserved = await Journal.open(o2.db, `${dir}/reserved`, size);
        await through.close();
        await reserved.close();
        assert.ok(await unwritten(`${dir}/reserved`) > 0, "a reserved ring starts as unwritten extents");
        assert.is(await unwritten(`${dir}/through`), 0, "a ring written through has none");
        assert.is(Deno.statSync(`${dir}/through`).size, size);
        // and it opens again as the same ring
        const again = await Journal.open(o.db, `${dir}/through`, size, { writeThrough: true });
        assert.is(again.ring.id, through.ring.id);
        await again.close();
      } finally {
        o.close();
        o2.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

ring("a buffer below the minimum and foreign content are refused; the ring keeps its id", async () => {
  const dir = await tempDir();
  try {
    const o = await openDatabase(`${dir}/${DB_FILE}`);
    try {
      const err = await Journal.open(o.db, `${dir}/small`, RING_SIZE - 64 * 1024 - 1).then(
        () => undefined,
        (e) => e,
      );
      assert.match((err as Error)?.message ?? "", /at least/);
      const j = await Journal.open(o.db, `${dir}/ok`, RING_SIZE);
      const id = j.ring.id;
      assert.is(j.ring.dataSize, RING_SIZE - DATA_START);
      assert.is(j.positions.capacity, RING_SIZE - DATA_START);
      await j.close();
      const j2 = await Journal.open(o.db, `${dir}/ok`, RING_SIZE);
      assert.is(j2.ring.id, id, "the superblock names the ring");
      await j2.close();
    } finally {
      o.close();
    }
    // a file of the right size holding something else
    const o2 = await openDatabase(`${dir}/other.db`);
    try {
      const foreign = `${dir}/foreign`;
      Deno.writeFileSync(foreign, new TextEncoder().encode("#!/bin/sh\necho important data\n"));
      Deno.truncateSync(foreign, RING_SIZE);
      const err2 = await Journal.open(o2.db, foreign, RING_SIZE).then(() => undefined, (e) => e);
      assert.match((err2 as Error)?.message ?? "", /refusing to overwrite/);
      assert.ok(
        new TextDecoder().decode(Deno.readFileSync(foreign).subarray(0, 9)).startsWith("#!/bin/sh"),
        "left alone",
      );
    } finally {
      o2.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

ring(
  "a record stamped for another lap, or damaged, reads as unreadable; a Wrap filler ends a lap",
  async () => {
    const dir = await tempDir();
    const gw = await openGw(dir);
    try {
      const v = await gw.j.registerVolume("a", "d", 1024 ** 3, "/m");
      const D = gw.j.positions.capacity;
      const sums = new Map<number, string>();
      await appendAll(gw.j, v.id, [rec(1, 500), rec(2, 500)], sums);
      await gw.j.flushed();
      const [first, second] = await gw.j.readFrom(0, 1 << 20);
      assert.equal([first.header.seq, second.header.seq], [1, 2]);
      // the first record's header claims the next lap: the same physical place, another position
      const moved = { ...first.header, volume: v.id, pos: first.pos + D };
      writeAt(`${dir}/${RING_FILE}`, D, [{
        pos: first.pos,
        bytes: encodeRecord(moved, first.bytes.subarray(HEADER_SIZE)),
      }]);
      const err = await gw.j.readFrom(0, 1 << 20).then(() => undefined, (e) => e);
      assert.match((err as Error)?.message ?? "", /unreadable or corrupt/);
      // the second one, damaged in its payload
      flipRingByte(dir, D, second.pos + HEADER_SIZE + 7);
      const err2 = await gw.j.readFrom(second.pos, 1 << 20).then(() => undefined, (e) => e);
      assert.match((err2 as Error)?.message ?? "", /unreadable or corrupt/);
      // where a record would straddle the lap's end, a filler goes first
      assert.equal(place(D, 0, 1000), { at: 0 });
      assert.equal(place(D, D - 1000, 1000), { at: D - 1000 }, "exactly to the end");
      const p = place(D, D - 1000, 1001);
      assert.is(p.at, D);
      assert.is(decodeHeader(p.filler!.bytes, MAX_PAYLOAD).length, 1000);
      assert.equal(place(D, 2 * D - 71, 100), { at: 2 * D }, "a gap shorter than a header gets no filler");
    } finally {
      await gw.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

// ---------------------------------------------------------------------------
const laps = suite("wrap-around");

laps("several laps with a reader releasing as it goes: every record intact, in order", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir);
  const sums = new Map<number, string>();
  try {
    const v = await gw.j.registerVolume("agent-a", "disk", 1024 ** 3, "/m");
    const D = gw.j.positions.capacity;
    const c = gw.j.cursor("reader", 0);
    readersReady(gw.j);
    const N = 100;
    const recs = (seq: number): Rec => {
      if (seq % 10 === 0) return rec(seq, 0, { kind: Kind.Flush });
      if (seq % 9 === 0) return rec(seq, 8 * MiB, { kind: Kind.Zero });
      return rec(seq, MiB + ((seq * 7919 * 4099) % (3 * MiB)) + (seq % 13));
    };
    const producer = (async () => {
      for (let seq = 1; seq <= N; seq++) {
        const r = recs(seq);
        sums.set(seq, r.sum);
        await within(gw.j.append(v.id, r.bytes, r.header), 10_000, `append ${seq}`);
      }
    })();
    let wraps = 0;
    const consumer = (async () => {
      let want = 1;
      while (want <= N) {
        const got = await within(c.next(16 * MiB), 10_000, "cursor.next");
        for (const e of got) {
          if (e.header.kind === Kind.Wrap) {
            wraps++;
            continue;
          }
          assert.is(e.header.seq, want, "in order");
          checkEntry(e, v.id, sums);
          want++;
        }
        if (got.length > 0) c.release(got[got.length - 1].end);
      }
    })();
    await Promise.all([producer, consumer]);
    const p = gw.j.positions;
    assert.ok(p.head > 3 * D, `passed three laps (head ${p.head}, capacity ${D})`);
    assert.ok(wraps >= 3, `a wrap filler at each lap end (${wraps})`);
    assert.ok(p.head - p.tail <= D);

    // phase 2: read back from the ring (after a reopen) across a lap end with a short gap
    let seq = N;
    const lapEnd = () => (Math.floor(gw.j.positions.head / D) + 1) * D;
    while (true) {
      const room = lapEnd() - gw.j.positions.head;
      if (room > MiB && room <= 6 * MiB) break;
      const r = rec(++seq, room > 6 * MiB ? 4 * MiB : 2 * MiB);
      sums.set(seq, r.sum);
      await gw.j.append(v.id, r.bytes, r.header);
      if (seq % 4 === 0) {
        await gw.j.flushed();
        await readUpToDurable(gw.j, c);
        c.release(c.position);
      }
    }
    await gw.j.flushed();
    await readUpToDurable(gw.j, c);
    c.release(c.position);
    const firstKept = seq + 1;
    const left = lapEnd() - gw.j.positions.head;
    const gapMaker = rec(++seq, left - HEADER_SIZE - 40); // leaves 40 bytes: no room for a filler
    sums.set(seq, gapMaker.sum);
    await gw.j.append(v.id, gapMaker.bytes, gapMaker.header);
    const firstKeptPos = gapMaker.header.pos;
    assert.is(gw.j.positions.head % D, D - 40);
    for (let i = 0; i < 3; i++) {
      const r = rec(++seq, MiB + i);
      sums.set(seq, r.sum);
      await gw.j.append(v.id, r.bytes, r.header);
    }
    await gw.close();

    const gw2 = await openGw(dir);
    try {
      const c2 = gw2.j.cursor("reader", firstKeptPos);
      const back = await readUpToDurable(gw2.j, c2, 3 * MiB);
      assert.equal(
        back.entries.map((e) => e.header.seq),
        Array.from({ length: seq - firstKept + 1 }, (_, i) => firstKept + i),
      );
      for (const e of back.entries) checkEntry(e, v.id, sums, "after reopen");
      assert.is(back.wraps, 1, "the short gap reads as a wrap");
      assert.is(back.entries.at(-3)!.pos % D, 0, "the record after the gap starts the lap");
    } finally {
      await gw2.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------
const pressure = suite("backpressure");

/** Fills a fresh journal (a required cursor holds the tail at 0) until the next 4 MiB record no longer fits. */
async function fillRing(
  gw: Gw,
  volume: number,
  sums: Map<number, string>,
  first: Rec[] = [],
): Promise<{ seq: number; recs: Rec[] }> {
  const D = gw.j.positions.capacity;
  const recs: Rec[] = [];
  let seq = 0;
  for (const r of first) {
    seq = r.header.seq;
    recs.push(r);
    await appendAll(gw.j, volume, [r], sums);
  }
  const L = HEADER_SIZE + 4 * MiB;
  while (true) {
    const p = place(D, gw.j.positions.head, L);
    if (p.at + L - gw.j.positions.tail > D) break;
    const r = rec(++seq, 4 * MiB);
    recs.push(r);
    await appendAll(gw.j, volume, [r], sums);
  }
  await gw.j.flushed();
  return { seq, recs };
}

/** A journal of one volume whose ring a required cursor keeps full (fillRing), handed to `body`. */
async function withFullRing(
  body: (r: { gw: Gw; v: VolumeInfo; c: Cursor; seq: number; sums: Map<number, string> }) => Promise<void>,
): Promise<void> {
  const dir = await tempDir();
  const gw = await openGw(dir);
  const sums = new Map<number, string>();
  try {
    const v = await gw.j.registerVolume("a", "d", 1024 ** 3, "/m");
    const c = gw.j.cursor("site", 0);
    readersReady(gw.j);
    const { seq } = await fillRing(gw, v.id, sums);
    await body({ gw, v, c, seq, sums });
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
}

pressure("a full ring makes the appender wait until a cursor releases space", async () => {
  await withFullRing(async ({ gw, v, c, seq, sums }) => {
    const D = gw.j.positions.capacity;
    const next = rec(seq + 1, 4 * MiB);
    sums.set(seq + 1, next.sum);
    const p = gw.j.append(v.id, next.bytes, next.header);
    assert.not.ok(await settlesWithin(p, 150), "the append waits while the ring is full");
    const first = await c.next(1);
    assert.is(first.length, 1);
    assert.is(first[0].header.seq, 1);
    assert.not.ok(await settlesWithin(p, 50), "reading alone frees nothing");
    c.release(first[0].end);
    await within(p, 5000, "append after release");
    assert.is(next.header.pos, D, "it went to the start of the next lap");
    await gw.j.flushed();
    const { entries, wraps } = await readUpToDurable(gw.j, c);
    assert.equal(entries.map((e) => e.header.seq), Array.from({ length: seq }, (_, i) => i + 2));
    assert.is(wraps, 1);
    for (const e of entries) checkEntry(e, v.id, sums);
  });
});

pressure(
  "an append copies its bytes at once: records from one reused buffer, some left waiting for space and some made meanwhile, arrive intact and in order",
  async () => {
    await withFullRing(async ({ gw, v, c, seq, sums }) => {
      // one buffer for every record, overwritten once each is appended, as a site's stream reader does
      const buf = new Uint8Array(HEADER_SIZE + 4 * MiB);
      const appendFrom = (r: Rec) => {
        sums.set(r.header.seq, r.sum);
        buf.set(r.bytes);
        const p = gw.j.append(v.id, buf.subarray(0, r.bytes.length), r.header);
        buf.fill(0xee);
        return p;
      };
      // one batch: the first fits in what is left of the lap, the second waits for space
      const appended = [rec(seq + 1, 4096), rec(seq + 2, 4 * MiB), rec(seq + 3, 32 * 1024)].map(appendFrom);
      // made while the data plane takes that batch (it starts a microtask after the first append)
      await Promise.resolve();
      appended.push(appendFrom(rec(seq + 4, 100_000)));
      assert.not.ok(await settlesWithin(Promise.all(appended), 150), "they wait while the ring is full");
      // and made while the rest waits for space
      appended.push(appendFrom(rec(seq + 5, 4096)));
      const read = await c.next(8 * MiB + 2 * HEADER_SIZE);
      c.release(read[read.length - 1].end);
      await within(Promise.all(appended), 5000, "the appends once space was released");
      await gw.j.flushed();
      const { entries } = await readUpToDurable(gw.j, c);
      const mine = entries.filter((e) => e.header.seq > seq);
      assert.equal(mine.map((e) => e.header.seq), [seq + 1, seq + 2, seq + 3, seq + 4, seq + 5]);
      for (const e of mine) checkEntry(e, v.id, sums);
    });
  },
);

pressure(
  "an append waiting for space makes the mirror sync at once, however rarely it syncs else",
  async () => {
    const dir = await tempDir();
    const gw = await openGw(dir);
    const img = Volume.createSparse(`${dir}/image`, 1024 ** 3);
    try {
      const v = await gw.j.registerVolume("a", "d", 1024 ** 3, `${dir}/image`);
      gw.j.setImage(v, img.fd);
      // synced after 2^40 bytes or a minute: only an append that waits for space makes it sync sooner
      assert.is(native().cn_journal_mirror_start(gw.j.ptr, 1n << 40n, 60_000, -1), 0);
      const { seq } = await fillRing(gw, v.id, new Map());
      assert.is(gw.j.positions.tail, 0, "the mirror holds everything it applied");
      const next = rec(seq + 1, 4 * MiB);
      await within(gw.j.append(v.id, next.bytes, next.header), 5000, "the append once the mirror synced");
      assert.ok(gw.j.positions.tail > 0, "the synced records are released");
      await gw.j.flushed();
      const t0 = Date.now();
      while (gw.j.mirrorPositions.applied < gw.j.positions.durable && Date.now() - t0 < 5000) await sleep(5);
      const last = new Uint8Array(4 * MiB);
      await img.read(next.header.offset, last);
      assert.is(hex(xxh3(last)), next.sum, "and the mirror applies the new record too");
    } finally {
      await gw.close();
      img.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

pressure(
  "a volume over its bound waits; the tail passing a record frees room; lifting the bound frees it",
  async () => {
    const dir = await tempDir();
    const gw = await openGw(dir);
    const sums = new Map<number, string>();
    try {
      const a = await gw.j.registerVolume("a", "bounded", 1024 ** 3, "/m");
      const c = gw.j.cursor("site", 0);
      readersReady(gw.j);
      const pressured: number[] = [];
      gw.j.onPressure((tail) => pressured.push(tail));
      const len = HEADER_SIZE + 64 * 1024;
      gw.j.setBound(a.id, 2 * len);
      await appendAll(gw.j, a.id, [rec(1, 64 * 1024), rec(2, 64 * 1024)], sums);
      assert.is(gw.j.heldBytes(a.id), 2 * len);
      const third = rec(3, 64 * 1024);
      const waiting = gw.j.append(a.id, third.bytes, third.header);
      assert.not.ok(await settlesWithin(waiting, 150), "over its bound, the append waits");
      assert.ok(pressured.length > 0, "the readers are told (a pull-ahead site may give way)");
      // the reader releases the first record: the tail passes it, one more fits
      const first = await c.next(1);
      c.release(first[0].end);
      await within(waiting, 2000, "the append once the tail passed a record");
      const fourth = rec(4, 64 * 1024);
      const behind = gw.j.append(a.id, fourth.bytes, fourth.header);
      assert.not.ok(await settlesWithin(behind, 150), "the next one waits: the bound is full again");
      // lifting the bound lets it go at once
      gw.j.setBound(a.id, undefined);
      await within(behind, 2000, "the append once the bound is lifted");
      assert.is(gw.j.heldBytes(a.id), 3 * len);
      await gw.j.flushed();
      const { entries } = await readUpToDurable(gw.j, c);
      assert.equal(entries.map((e) => e.header.seq), [2, 3, 4], "in order");
    } finally {
      await gw.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

pressure(
  "the lag bound: appends wait for a paced reader beyond its allowance, not for others",
  async () => {
    const dir = await tempDir();
    const gw = await openGw(dir);
    try {
      const v = await gw.j.registerVolume("a", "d", 1024 ** 3, "/m");
      const site = gw.j.cursor("site", 0);
      gw.j.cursor("other", 0);
      readersReady(gw.j);
      const put = (seq: number, len: number) => {
        const r = rec(seq, len);
        return gw.j.append(v.id, r.bytes, r.header);
      };
      // not paced: nothing waits for it
      for (let seq = 1; seq <= 4; seq++) await within(put(seq, MiB), 2000, `unpaced append ${seq}`);
      // paced with an allowance of 2 MiB while 4 MiB behind: the next append waits until it reads
      site.pace = 2 * MiB;
      const waiting = put(5, 4096);
      assert.not.ok(await settlesWithin(waiting, 150), "waits: the reader is past its allowance");
      const read = await site.next(3 * MiB);
      site.release(read.at(-1)!.end);
      await within(waiting, 2000, "append once the reader is within its allowance");
      await within(put(6, MiB), 2000, "an append within the allowance");
      const held = put(7, 4096);
      assert.not.ok(await settlesWithin(held, 150), "waits again: 2 MiB and more behind");
      site.pace = 0;
      await within(held, 2000, "append once the reader is no longer paced");
    } finally {
      await gw.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

pressure("a non-required cursor does not hold space; dropping a required one frees it", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir);
  const sums = new Map<number, string>();
  try {
    const v = await gw.j.registerVolume("a", "d", 1024 ** 3, "/m");
    gw.j.cursor("site", 0);
    gw.j.cursor("observer", 0, false);
    readersReady(gw.j);
    const { seq } = await fillRing(gw, v.id, sums);
    const next = rec(seq + 1, 4 * MiB);
    const p = gw.j.append(v.id, next.bytes, next.header);
    assert.not.ok(await settlesWithin(p, 100));
    gw.j.dropCursor("site");
    await within(p, 5000, "append after the required cursor is dropped");
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

pressure("waiting appends keep their order when a larger one waits before a smaller one", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir);
  const sums = new Map<number, string>();
  try {
    const v = await gw.j.registerVolume("a", "d", 1024 ** 3, "/m");
    const c = gw.j.cursor("site", 0);
    readersReady(gw.j);
    const { seq } = await fillRing(gw, v.id, sums, [rec(1, 1024)]);
    const D = gw.j.positions.capacity;
    const gap = D - gw.j.positions.head;
    assert.ok(gap > HEADER_SIZE + 1024, "precondition: a small record would fit at the end of the lap");
    const big = rec(seq + 1, 4 * MiB), small = rec(seq + 2, 1024);
    sums.set(seq + 1, big.sum);
    sums.set(seq + 2, small.sum);
    const pBig = gw.j.append(v.id, big.bytes, big.header);
    const pSmall = gw.j.append(v.id, small.bytes, small.header);
    assert.not.ok(await settlesWithin(Promise.race([pBig, pSmall]), 100), "both wait (FIFO)");
    const [first] = await c.next(1);
    const [second] = await c.next(1);
    assert.is(first.header.seq, 1);
    assert.is(second.header.seq, 2);
    c.release(first.end); // frees the small record only: not enough for the big one
    await sleep(30);
    c.release(second.end); // now the big one fits at the start of the next lap
    await within(Promise.all([pBig, pSmall]), 5000, "both appends");
    assert.ok(
      big.header.pos < small.header.pos,
      `seq ${seq + 1} (appended first) at ${big.header.pos} must precede seq ${
        seq + 2
      } at ${small.header.pos}`,
    );
    await gw.j.flushed();
    const { entries } = await readUpToDurable(gw.j, c);
    const seqs = entries.map((e) => e.header.seq);
    assert.equal(
      seqs,
      [...seqs].sort((a, b) => a - b),
      "the journal holds the volume's records in sequence order",
    );
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

pressure("an append arriving just as space is released does not overtake the one that waited", async () => {
  const dir = await tempDir();
  const gw = await openGw(dir);
  const sums = new Map<number, string>();
  try {
    const v = await gw.j.registerVolume("a", "d", 1024 ** 3, "/m");
    const c = gw.j.cursor("site", 0);
    readersReady(gw.j);
    const { seq } = await fillRing(gw, v.id, sums);
    const waiting = rec(seq + 1, 4 * MiB), late = rec(seq + 2, 1024);
    const pWaiting = gw.j.append(v.id, waiting.bytes, waiting.header);
    assert.not.ok(await settlesWithin(pWaiting, 100));
    const [first] = await c.next(1);
    const [second] = await c.next(1);
    // room for both (the late one fits behind the waiting one), released in the same turn as the late append
    c.release(first.end);
    c.release(second.end);
    const pLate = gw.j.append(v.id, late.bytes, late.header);
    await within(Promise.all([pWaiting, pLate]), 5000, "both appends");
    assert.ok(
      waiting.header.pos < late.header.pos,
      `the waiting append (at ${waiting.header.pos}) was overtaken by a later one (at ${late.header.pos})`,
    );
  } finally {
    await gw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------
const recovery = suite("crash recovery");

/** Opens a journal, registers a volume, appends seq 1..n durably, closes. */
async function prepared(
  dir: string,
  n: number,
  sums: Map<number, string>,
): Promise<{ id: number; head: number; dataSize: number }> {
  const gw = await openGw(dir);
  const v = await gw.j.registerVolume("agent-a", "disk", 1024 ** 3, "/m");
  await appendAll(gw.j, v.id, Array.from({ length: n }, (_, i) => rec(i + 1, 3000 + i * 100)), sums);
  await gw.close();
  return { id: v.id, head: gw.j.positions.head, dataSize: gw.j.positions.capacity };
}

/** Writes records straight into the ring after `head`, as a crashed gateway would have left them. */
function writeBehindIndex(
  dir: string,
  id: number,
  head: number,
  recs: Rec[],
  sums: Map<number, string>,
  dataSize = RING_SIZE - DATA_START,
): number[] {
  const positions: number[] = [];
  let pos = head;
  const items: { pos: number; bytes: Uint8Array }[] = [];
  for (const x of recs) {
    const p = place(dataSize, pos, x.bytes.length);
    if (p.filler) items.push(p.filler);
    x.header.volume = id;
    x.header.pos = p.at;
    const payload = x.bytes.subarray(HEADER_SIZE);
    const bytes = encodeRecord(x.header, x.header.kind === Kind.Write ? payload : undefined);
    items.push({ pos: p.at, bytes });
    sums.set(x.header.seq, x.sum);
    positions.push(p.at);
    pos = p.at + bytes.length;
  }
  writeAt(`${dir}/${RING_FILE}`, dataSize, items);
  return positions;
}

recovery("records in the ring beyond the index are re-indexed on open", async () => {
  const dir = await tempDir();
  const sums = new Map<number, string>();
  try {
    const { id, head } = await prepared(dir, 3, sums);
    const recs = [rec(4, 5000), rec(5, 0, { kind: Kind.Flush }), rec(6, 123)];
    const pos = writeBehindIndex(dir, id, head, recs, sums);
    logs.length = 0;
    const gw = await openGw(dir);
    try {
      const v = gw.j.volume(id)!;
      assert.is(v.lastSeq, 6);
      assert.is(v.durableSeq, 6);
      assert.is(gw.j.positions.head, pos[2] + HEADER_SIZE + 123);
      assert.is(gw.j.positions.durable, gw.j.positions.head);
      assert.ok(logs.some((l) => l.includes("recovered")), "recovery is logged");
      const { entries } = await readUpToDurable(gw.j, gw.j.cursor("r", 0));
      assert.equal(entries.map((e) => e.header.seq), [1, 2, 3, 4, 5, 6]);
      for (const e of entries) checkEntry(e, id, sums);
    } finally {
      await gw.close();
    }
    // the recovery was committed: a second open finds nothing more to do
    logs.length = 0;
    const gw2 = await openGw(dir);
    try {
      assert.is(gw2.j.volume(id)!.lastSeq, 6);
      assert.not.ok(logs.some((l) => l.includes("recovered")));
    } finally {
      await gw2.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

recovery("a reader saved past the head (records lost to corruption) reads on from the head", async () => {
  const dir = await tempDir();
  const sums = new Map<number, string>();
  try {
    const { id, head } = await prepared(dir, 3, sums);
    logs.length = 0;
    const gw = await openGw(dir);
    try {
      readersReady(gw.j);
      const c = gw.j.cursor("site", head + 5000);
      assert.is(c.position, head);
      assert.ok(logs.some((l) => l.includes("past the journal's head")), "said so");
      await appendAll(gw.j, id, [rec(4, 700)], sums);
      await gw.j.flushed();
      const [e] = await c.next(1 << 20);
      assert.is(e.header.seq, 4, "the next record, not a read inside it");
      checkEntry(e, id, sums);
      c.release(e.end);
      assert.ok(gw.j.positions.tail <= gw.j.positions.head, "the tail never passes the head");
    } finally {
      await gw.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

recovery(
  "an index whose sequences are ahead of its head (a commit between the two reads) loses no committed record",
  async () => {
    const dir = await tempDir();
    const sums = new Map<number, string>();
    try {
      const gw = await openGw(dir);
      const v = await gw.j.registerVolume("agent-a", "disk", 1024 ** 3, "/m");
      await appendAll(gw.j, v.id, Array.from({ length: 10 }, (_, i) => rec(i + 1, 2000)), sums);
      await gw.j.flushed();
      const [, , , fourth] = await gw.j.cursor("probe", 0).next(4 * 2072);
      await gw.close();
      // the index as a kill left it (CI saw it): its head before record 4, its sequence 8
      const o = await openDatabase(`${dir}/${DB_FILE}`);
      await o.db.update(journalState).set({ tail: 0, head: fourth.pos, appliedPos: 0 });
      await o.db.update(volumes).set({ lastSeq: 8 });
      o.close();
      logs.length = 0;
      const gw2 = await openGw(dir);
      try {
        assert.not.ok(logs.some((l) => l.includes("unreadable")), logs.join("\n"));
        assert.is(gw2.j.volume(v.id)!.lastSeq, 10);
        const { entries } = await readUpToDurable(gw2.j, gw2.j.cursor("r", 0));
        assert.equal(entries.map((e) => e.header.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        for (const e of entries) checkEntry(e, v.id, sums);
      } finally {
        await gw2.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

recovery(
  "recovery stops at a corrupted record (flipped payload byte) and new appends reuse its place",
  async () => {
    const dir = await tempDir();
    const sums = new Map<number, string>();
    try {
      const { id, head, dataSize } = await prepared(dir, 3, sums);
      const pos = writeBehindIndex(dir, id, head, [rec(4, 5000), rec(5, 6000), rec(6, 7000)], sums);
      flipRingByte(dir, dataSize, pos[1] + HEADER_SIZE + 4321);
      const gw = await openGw(dir);
      try {
        assert.is(gw.j.volume(id)!.lastSeq, 4, "only the record before the damaged one");
        assert.is(gw.j.positions.head, pos[1]);
        const { entries } = await readUpToDurable(gw.j, gw.j.cursor("r", 0));
        assert.equal(entries.map((e) => e.header.seq), [1, 2, 3, 4]);
        for (const e of entries) checkEntry(e, id, sums);
        // the agent resends 5 and 6
        const again = [rec(5, 100), rec(6, 200)];
        await appendAll(gw.j, id, again, sums);
        assert.is(again[0].header.pos, pos[1]);
      } finally {
        await gw.close();
      }
      const gw2 = await openGw(dir);
      try {
        const { entries } = await readUpToDurable(gw2.j, gw2.j.cursor("r", 0));
        assert.equal(entries.map((e) => e.header.seq), [1, 2, 3, 4, 5, 6]);
        for (const e of entries) checkEntry(e, id, sums);
        assert.is(entries[4].bytes.length, HEADER_SIZE + 100, "the resent record, not the damaged one");
      } finally {
        await gw2.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

recovery("recovery stops at a damaged header, a sequence gap, a stale lap or an unknown volume", async () => {
  const cases: [string, (id: number) => Rec[], (dir: string, D: number, pos: number[]) => void, number][] = [
    [
      "damaged header",
      () => [rec(4, 10), rec(5, 10), rec(6, 10)],
      (dir, D, pos) => flipRingByte(dir, D, pos[1] + 20),
      4,
    ],
    ["sequence gap", () => [rec(4, 10), rec(6, 10)], () => {}, 4],
    ["repeated seq", () => [rec(4, 10), rec(4, 10)], () => {}, 4],
    ["seq behind the index", () => [rec(3, 10)], () => {}, 3],
    ["unknown volume", () => [rec(4, 10)], () => {}, 3],
  ];
  for (const [name, make, damage, want] of cases) {
    const dir = await tempDir();
    const sums = new Map<number, string>();
    try {
      const { id, head, dataSize } = await prepared(dir, 3, sums);
      const pos = writeBehindIndex(dir, name === "unknown volume" ? id + 77 : id, head, make(id), sums);
      damage(dir, dataSize, pos);
      const gw = await openGw(dir);
      try {
        assert.is(gw.j.volume(id)!.lastSeq, want, name);
        const { entries } = await readUpToDurable(gw.j, gw.j.cursor("r", 0));
        assert.equal(entries.map((e) => e.header.seq), Array.from({ length: want }, (_, i) => i + 1), name);
      } finally {
        await gw.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  // a record stamped for another lap at the next position is stale data
  const dir = await tempDir();
  const sums = new Map<number, string>();
  try {
    const { id, head, dataSize } = await prepared(dir, 3, sums);
    const x = rec(4, 10);
    x.header.volume = id;
    x.header.pos = head + dataSize; // same physical place, next lap
    writeAt(`${dir}/${RING_FILE}`, dataSize, [{
      pos: head,
      bytes: encodeRecord(x.header, x.bytes.subarray(HEADER_SIZE)),
    }]);
    const gw = await openGw(dir);
    try {
      assert.is(gw.j.volume(id)!.lastSeq, 3, "stale lap");
    } finally {
      await gw.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

recovery("recovery follows a Wrap filler, and a gap too short for one, into the next lap", async () => {
  for (const gap of [10_000, 40]) {
    const dir = await tempDir();
    const sums = new Map<number, string>();
    try {
      const gw = await openGw(dir);
      const v = await gw.j.registerVolume("a", "d", 1024 ** 3, "/m");
      const D = gw.j.positions.capacity;
      const c = gw.j.cursor("site", 0);
      readersReady(gw.j);
      let seq = 0;
      while (D - gw.j.positions.head > 6 * MiB) {
        await appendAll(gw.j, v.id, [rec(++seq, 4 * MiB)], sums);
        if (seq % 4 === 0) {
          await gw.j.flushed();
          await readUpToDurable(gw.j, c);
          c.release(c.position);
        }
      }
      const left = D - gw.j.positions.head;
      await appendAll(gw.j, v.id, [rec(++seq, left - HEADER_SIZE - gap)], sums);
      await gw.j.flushed();
      await readUpToDurable(gw.j, c);
      c.release(c.position);
      await gw.close();
      const head = gw.j.positions.head;
      assert.is(head, D - gap);
      const pos = writeBehindIndex(dir, v.id, head, [rec(seq + 1, 20_000), rec(seq + 2, 30)], sums);
      assert.is(pos[0], D, "the record went to the next lap");
      const gw2 = await openGw(dir);
      try {
        assert.is(gw2.j.volume(v.id)!.lastSeq, seq + 2, `gap ${gap}`);
        assert.is(gw2.j.positions.head, pos[1] + HEADER_SIZE + 30);
        const { entries, wraps } = await readUpToDurable(gw2.j, gw2.j.cursor("site", head));
        assert.equal(entries.map((e) => e.header.seq), [seq + 1, seq + 2]);
        assert.is(wraps, 1);
        for (const e of entries) checkEntry(e, v.id, sums);
      } finally {
        await gw2.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

recovery("recovered records are counted in the segment index", async () => {
  const dir = await tempDir();
  const sums = new Map<number, string>();
  try {
    const { id, head } = await prepared(dir, 3, sums);
    writeBehindIndex(dir, id, head, [rec(4, 10), rec(5, 20)], sums);
    const gw = await openGw(dir);
    try {
      const rows = await gw.o.db.select().from(segments);
      rows.sort((a, b) => a.startPos - b.startPos);
      assert.is(rows[0].startPos, 0);
      for (let i = 1; i < rows.length; i++) {
        assert.is(rows[i].startPos, rows[i - 1].endPos, "segments tile the journal");
      }
      assert.is(rows.at(-1)!.endPos, gw.j.positions.head);
      assert.is(rows.reduce((n, r) => n + r.records, 0), 5, "every record is counted once");
      const last = rows.at(-1)!;
      assert.is(last.bytes, last.endPos - last.startPos);
      assert.is(last.lastTime, 1_700_000_000_000 + 5, "the newest record's time");
    } finally {
      await gw.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

recovery("a gateway process killed after the ring write but before the commit loses nothing", async () => {
  const dir = await tempDir();
  const copy = await tempDir();
  try {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL(import.meta.url).pathname],
      env: { CN_JOURNAL_CRASH_CHILD: dir, NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const killer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    const out = await child.output();
    clearTimeout(killer);
    const text = new TextDecoder().decode(out.stdout);
    assert.is(out.code, 0, `child failed: ${new TextDecoder().decode(out.stderr)}`);
    const state = JSON.parse(text.trim().split("\n").at(-1)!) as {
      id: number;
      positions: number[];
      sums: [number, string][];
    };
    await copyDir(dir, copy);

    // as the child left it: seq 1..3 indexed, 4..8 only in the ring
    const db = await openDatabase(`${dir}/${DB_FILE}`);
    const [row] = await db.db.select().from(volumes);
    db.close();
    assert.is(row.lastSeq, 3, "precondition: the index stopped at seq 3");

    const sums = new Map(state.sums);
    const gw = await openGw(dir);
    try {
      assert.is(gw.j.volume(state.id)!.lastSeq, 8);
      const { entries } = await readUpToDurable(gw.j, gw.j.cursor("r", 0));
      assert.equal(entries.map((e) => e.header.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
      for (const e of entries) checkEntry(e, state.id, sums);
    } finally {
      await gw.close();
    }

    // the same crash with record 6 damaged on disk: 4 and 5 come back, 6.. do not
    const cap = RING_SIZE - DATA_START;
    flipRingByte(copy, cap, state.positions[5] + HEADER_SIZE + 1);
    const gw2 = await openGw(copy);
    try {
      assert.is(gw2.j.volume(state.id)!.lastSeq, 5);
      assert.is(gw2.j.positions.head, state.positions[5]);
      const { entries } = await readUpToDurable(gw2.j, gw2.j.cursor("r", 0));
      assert.equal(entries.map((e) => e.header.seq), [1, 2, 3, 4, 5]);
      for (const e of entries) checkEntry(e, state.id, sums);
    } finally {
      await gw2.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(copy, { recursive: true });
  }
});

/** The child side of the crash test: append, wait for the ring write, exit without commit or close. */
async function crashChild(dir: string): Promise<void> {
  const sums = new Map<number, string>();
  const recs = Array.from({ length: 8 }, (_, i) => rec(i + 1, 10_000 + i * 1000));
  // 1..3 durable and indexed by a clean run
  let o = await openDatabase(`${dir}/${DB_FILE}`);
  let j = await Journal.open(o.db, `${dir}/${RING_FILE}`, RING_SIZE, { commitDelayMs: 2 });
  const v = await j.registerVolume("agent-a", "disk", 1024 ** 3, "/m");
  await appendAll(j, v.id, recs.slice(0, 3), sums);
  await j.close();
  o.close();
  // 4..8 reach the ring; the commit is far away when the process dies
  o = await openDatabase(`${dir}/${DB_FILE}`);
  j = await Journal.open(o.db, `${dir}/${RING_FILE}`, RING_SIZE, {
    commitDelayMs: 600_000,
    commitBytes: 2 ** 40,
  });
  // an append resolves once its record is in the ring (the page cache: a process kill keeps it)
  await appendAll(j, v.id, recs.slice(3), sums);
  if (j.volume(v.id)!.durableSeq !== 3) {
    throw new Error("records 4.. were committed: not a crash in the window");
  }
  console.log(JSON.stringify({ id: v.id, positions: recs.map((r) => r.header.pos), sums: [...sums] }));
  Deno.exit(0); // no commit, no close: the process dies here
}

const childDir = Deno.env.get("CN_JOURNAL_CRASH_CHILD");
if (childDir) {
  await crashChild(childDir);
} else {
  basics.run();
  ring.run();
  laps.run();
  pressure.run();
  recovery.run();
}
