// Retention at a remote site (src/retention/): a known sequence of writes, trims, zeroes and
// barriers (with a resynchronisation in the middle) goes into a volume's retention log while
// the test keeps the volume's content after every record; copies at random points must equal
// that content, after a restart and after expiry for the points still held. Bad points are
// refused with a clear reason and change nothing.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { encodeRecord, FLAG_SYNC, Kind, type RecordHeader } from "../src/record/record.ts";
import { PointError, PointIndex } from "../src/retention/points.ts";
import { planExpiry } from "../src/retention/expiry.ts";
import { VolumeLog } from "../src/retention/volume-log.ts";
import { Retention } from "../src/retention/retention.ts";
import { setLogSink } from "../src/log.ts";
import { retentionOf } from "../src/replication/site-link.ts";

await (await import("../native/build.ts")).buildNative();
setLogSink(() => {});

const SIZE = 256 * 1024;
const t = suite("retention");

/** A deterministic random source (the failing case can be replayed). */
function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

interface Step {
  body: Uint8Array;
  h: RecordHeader;
}

/**
 * A workload with its expected content at each captured sequence. Sync chunks of a
 * resynchronisation (between `syncAt` and its end) carry the right content for their chunk.
 */
function workload(seed: number, n: number, t0: number, syncAt = -1) {
  const r = rng(seed);
  const content = new Uint8Array(SIZE);
  const at = new Map<number, Uint8Array>([[0, content.slice()]]);
  const steps: Step[] = [];
  let seq = 0;
  const rec = (h: Omit<RecordHeader, "volume" | "pos">, payload?: Uint8Array) =>
    steps.push({ body: encodeRecord({ ...h, volume: 1, pos: 0 }, payload), h: { ...h, volume: 1, pos: 0 } });
  for (let i = 0; i < n; i++) {
    if (i === syncAt) {
      // a resynchronisation: SyncBegin, chunks of the current content, a live write, SyncEnd
      rec({ kind: Kind.SyncBegin, flags: 0, length: 0, seq, offset: 0, time: t0 + i });
      for (let c = 0; c < SIZE; c += 64 * 1024) {
        rec(
          { kind: Kind.Write, flags: FLAG_SYNC, length: 65536, seq: 0, offset: c, time: t0 + i },
          content.slice(c, c + 65536),
        );
      }
      // two live writes: the copy is inconsistent after the first (no point there), not after SyncEnd
      for (const fill of [0xee, 0xef]) {
        const off = 4096 * Math.floor(r() * 60), len = 4096;
        const p = new Uint8Array(len).fill(fill);
        content.set(p, off);
        seq++;
        rec({ kind: Kind.Write, flags: 0, length: len, seq, offset: off, time: t0 + i }, p);
      }
      at.set(seq, content.slice());
      rec({ kind: Kind.SyncEnd, flags: 0, length: 0, seq, offset: 0, time: t0 + i });
      continue;
    }
    seq++;
    const x = r();
    const off = 512 * Math.floor(r() * (SIZE / 512 - 64));
    const len = 512 * (1 + Math.floor(r() * 32));
    if (x < 0.6) {
      const p = new Uint8Array(len);
      for (let j = 0; j < len; j += 512) p.fill(Math.floor(r() * 256), j, j + 512);
      content.set(p, off);
      rec({ kind: Kind.Write, flags: 0, length: len, seq, offset: off, time: t0 + i }, p);
    } else if (x < 0.7) {
      content.fill(0, off, off + len);
      rec({ kind: Kind.Zero, flags: 0, length: len, seq, offset: off, time: t0 + i });
    } else if (x < 0.75) {
      // a discard reads back as zeroes on a file (punched hole)
      content.fill(0, off, off + len);
      rec({ kind: Kind.Trim, flags: 0, length: len, seq, offset: off, time: t0 + i });
    } else {
      rec({ kind: Kind.Flush, flags: 0, length: 0, seq, offset: 0, time: t0 + i });
    }
    at.set(seq, content.slice());
  }
  return { steps, at, last: seq };
}

const zeroSeed = async (into: string) => {
  const f = await Deno.open(into, { write: true, create: true, mode: 0o600 });
  await f.truncate(SIZE);
  f.close();
  return { seq: 0, time: 0, consistent: true };
};

async function copyAt(l: VolumeLog, which: number | string, dir: string): Promise<Uint8Array> {
  const into = `${dir}/copy-${crypto.randomUUID()}.img`;
  await l.materialize(l.resolve(which), into);
  const b = await Deno.readFile(into);
  await Deno.remove(into);
  return b;
}

function same(a: Uint8Array, b: Uint8Array, what: string): void {
  assert.is(a.length, b.length, `${what}: size`);
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) assert.unreachable(`${what}: first difference at byte ${i}`);
  }
}

t("a copy at any point equals the volume's content at that point, before and after a restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
  try {
    const w = workload(7, 400, 1_000_000, 200);
    let l = await VolumeLog.open(`${dir}/a1/vol0`, SIZE, zeroSeed, 64 * 1024);
    for (const s of w.steps) l.take(s.body, s.h);
    await l.flush();
    const seqs = [...w.at.keys()];
    const r = rng(99);
    const probe = [0, w.last, ...Array.from({ length: 40 }, () => seqs[Math.floor(r() * seqs.length)])];
    for (const seq of probe) {
      same(await copyAt(l, seq, dir), w.at.get(seq)!, `point ${seq}`);
    }
    // the same log after a restart (closed, opened again: nothing seeded anew)
    await l.close();
    l = await VolumeLog.open(
      `${dir}/a1/vol0`,
      SIZE,
      () => Promise.reject(new Error("no seed expected")),
      64 * 1024,
    );
    for (const seq of probe.slice(0, 15)) {
      same(await copyAt(l, seq, dir), w.at.get(seq)!, `point ${seq} after restart`);
    }
    // records the site had already taken are duplicates after a reconnect
    assert.not.ok(l.take(w.steps[5].body, w.steps[5].h), "a record held already is dropped");
    await l.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

t("a torn tail is cut off at open; the points before it stay", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
  try {
    const w = workload(3, 60, 5000);
    let l = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed, 1 << 30);
    for (const s of w.steps) l.take(s.body, s.h);
    await l.close();
    const seg = `${dir}/v/0000000000000000.seg`;
    const size = (await Deno.stat(seg)).size;
    await Deno.truncate(seg, size - 100);
    l = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed, 1 << 30);
    assert.is(l.index.newestSeq, w.last - 1, "the torn record is gone");
    same(await copyAt(l, w.last - 1, dir), w.at.get(w.last - 1)!, "the newest whole record");
    // the stream resends the torn record: it is taken again
    assert.ok(l.take(w.steps[w.steps.length - 1].body, w.steps[w.steps.length - 1].h));
    same(await copyAt(l, w.last, dir), w.at.get(w.last)!, "the resent record");
    await l.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// regression: a task's retention reached the site after the volume's first resynchronisation had
// filled the replica (sync records carry sequence 0); seeded at sequence 0, the log refused the
// next captured write as out of sequence and kept no point at all
t("a base seeded at no known sequence (after a resynchronisation) takes the next write's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
  try {
    const w = workload(5, 40, 9000);
    // the replica as the resynchronisation left it: the content at sequence 20, whose number
    // the site does not know
    const seedAt = 20;
    const rebaseSeed = async (into: string) => {
      await Deno.writeFile(into, w.at.get(seedAt)!, { mode: 0o600 });
      return { seq: 0, time: 0, consistent: true, rebase: true };
    };
    const l = await VolumeLog.open(`${dir}/v`, SIZE, rebaseSeed, 1 << 30);
    assert.equal(l.points(10), [], "no point before the sequence is known");
    for (const s of w.steps.filter((x) => x.h.seq > seedAt)) {
      assert.ok(l.take(s.body, s.h), `record ${s.h.seq}`);
    }
    assert.is(l.index.newestSeq, w.last);
    same(
      await copyAt(l, seedAt, dir),
      w.at.get(seedAt)!,
      "the base, now at the sequence before the first write",
    );
    same(await copyAt(l, w.last, dir), w.at.get(w.last)!, "the newest point");
    await l.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

t("expiry folds the oldest segments into the base; the points still held stay exact", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
  try {
    const now = 10_000_000;
    const w = workload(11, 600, now - 600_000); // one record a ms, from 10 min ago
    let l = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed, 32 * 1024);
    for (const s of w.steps) {
      l.take(s.body, s.h);
      if (s.h.seq % 20 === 0) await l.flush();
    }
    await l.flush();
    const before = l.bytes;
    // by time: everything older than 599.7 s goes (whole segments only)
    const plan = await l.expire({ windowMs: 599_700, maxBytes: 2 ** 40 }, now);
    assert.ok(plan.segments > 0 && !plan.forced, `old segments expire by age: ${JSON.stringify(plan)}`);
    const oldest = l.index.base.seq;
    assert.ok(oldest > 0 && oldest < w.last, `the base moved to ${oldest}`);
    assert.ok(l.bytes < before);
    assert.throws(
      () => l.resolve(oldest - 1),
      (e: PointError) => e.code === "expired" && /has expired: the oldest point held is/.test(e.message),
    );
    for (const seq of [oldest, oldest + 1, Math.floor((oldest + w.last) / 2), w.last]) {
      same(await copyAt(l, seq, dir), w.at.get(seq)!, `point ${seq} after expiry`);
    }
    // the stream names its checkpoints again at each session: an expired one is not kept again
    await l.checkpoint("expired", oldest - 1);
    assert.not.ok(l.names.has("expired"));
    await l.checkpoint("held", oldest);
    assert.equal(l.resolve("held").seq, oldest);
    // by space: the oldest go although the window keeps them, and that is reported
    const plan2 = await l.expire({ windowMs: 3_600_000, maxBytes: 100 * 1024 }, now);
    assert.ok(plan2.forced && l.forced === 1);
    assert.ok(l.bytes <= 100 * 1024 + 32 * 1024 + 20_000, `${l.bytes} bytes held`);
    await l.close();
    l = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed, 32 * 1024);
    const base = l.index.base.seq;
    for (const seq of [base, Math.floor((base + w.last) / 2), w.last]) {
      same(await copyAt(l, seq, dir), w.at.get(seq)!, `point ${seq} after expiry and restart`);
    }
    await l.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

t("an interrupted fold is completed at open", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
  try {
    const w = workload(5, 200, 1000);
    let l = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed, 16 * 1024);
    for (const [i, s] of w.steps.entries()) {
      l.take(s.body, s.h);
      if (i % 10 === 0) await l.flush();
    }
    await l.close();
    // the intent was written, the base image got some of the records, then the process died
    const base = JSON.parse(await Deno.readTextFile(`${dir}/v/base.json`));
    const segs = [...Deno.readDirSync(`${dir}/v`)].map((e) => e.name).filter((n) => n.endsWith(".seg"))
      .sort();
    const upTo = parseInt(segs[2].slice(0, 16), 16);
    await Deno.writeTextFile(`${dir}/v/base.json`, JSON.stringify({ ...base, folding: upTo }));
    l = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed, 16 * 1024);
    assert.is(l.index.base.logStart, upTo);
    same(await copyAt(l, l.index.base.seq, dir), w.at.get(l.index.base.seq)!, "the new base");
    same(await copyAt(l, w.last, dir), w.at.get(w.last)!, "the newest point");
    await l.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

t("bad points: unknown, not yet, expired, inside a resynchronisation, unknown checkpoint", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
  try {
    const w = workload(13, 100, 1000, 50);
    const l = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed);
    for (const s of w.steps) l.take(s.body, s.h);
    const code = (f: () => unknown, c: string, re: RegExp) =>
      assert.throws(f, (e: PointError) => e instanceof PointError && e.code === c && re.test(e.message));
    code(() => l.resolve(w.last + 5), "not-yet", /is not held yet: the newest is/);
    code(() => l.resolve(-1), "unknown", /not a sequence number/);
    code(() => l.resolve("nope"), "unknown", /no checkpoint named "nope"/);
    // the SyncBegin at 50 starts an inconsistent stretch; the first live write inside it is seq 51
    code(() => l.resolve(51), "inconsistent", /inside a resynchronisation/);
    assert.is(l.resolve(52).kind, "sync", "the resynchronisation's end is a point");
    assert.is(l.resolve(49).kind !== undefined, true, "before the resynchronisation: usable");
    // names: one name one sequence, clear errors
    await l.checkpoint("before-upgrade", 40);
    await l.checkpoint("before-upgrade", 40); // the same again (a resend): fine
    const refused = async (p: Promise<unknown>, re: RegExp) => {
      const e = await p.then(() => undefined, (e: Error) => e);
      assert.match(e?.message ?? "(resolved)", re);
    };
    await refused(l.checkpoint("before-upgrade", 41), /already names sequence 40/);
    await refused(l.checkpoint("bad name", 41), /letters, digits/);
    same(await copyAt(l, "before-upgrade", dir), w.at.get(40)!, "the checkpoint's copy");
    assert.ok(l.points().some((p) => p.seq === 40 && p.names?.includes("before-upgrade")));
    await l.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

t("the index and the expiry plan (pure)", () => {
  const ix = new PointIndex({ seq: 10, time: 100, logStart: 0, consistent: true });
  ix.add({ kind: Kind.Write, flags: 0, seq: 11, time: 101 }, 100);
  ix.add({ kind: Kind.Flush, flags: 0, seq: 12, time: 102 }, 172);
  assert.equal(ix.points().map((p) => [p.seq, p.kind]), [[10, "base"], [12, "barrier"]]);
  assert.is(ix.resolve(11).end, 100);
  ix.fold(100);
  assert.equal(ix.base, { seq: 11, time: 101, logStart: 100, consistent: true });
  // a base folded in the middle of a rebasing resynchronisation: older points have expired, and the
  // oldest one held is the resynchronisation's end (its sequence told by the next write)
  const rx = new PointIndex({ seq: 0, time: 0, logStart: 0, consistent: true });
  for (let q = 1; q <= 5; q++) rx.add({ kind: Kind.Write, flags: 0, seq: q, time: q }, q * 100);
  rx.add({ kind: Kind.SyncBegin, flags: 0, seq: 0, time: 6 }, 600);
  rx.add({ kind: Kind.Write, flags: FLAG_SYNC, seq: 0, time: 6 }, 700);
  rx.add({ kind: Kind.Write, flags: FLAG_SYNC, seq: 0, time: 6 }, 800);
  rx.add({ kind: Kind.SyncEnd, flags: 0, seq: 0, time: 6 }, 900);
  rx.add({ kind: Kind.Write, flags: 0, seq: 30, time: 7 }, 1000);
  rx.fold(700);
  assert.is(rx.base.consistent, false);
  assert.throws(
    () => rx.resolve(3),
    (e: PointError) => e.code === "expired" && /the oldest point held is 29/.test(e.message),
  );
  assert.is(rx.resolve(29).kind, "sync");
  const segs = [{ start: 0, end: 10, newestTime: 50 }, { start: 10, end: 20, newestTime: 150 }];
  assert.equal(planExpiry(segs, 25, { windowMs: 100, maxBytes: 100 }, 200), {
    upTo: 10,
    segments: 1,
    forced: false,
  });
  assert.equal(planExpiry(segs, 25, { windowMs: 100, maxBytes: 10 }, 200), {
    upTo: 20,
    segments: 2,
    forced: true,
  });
  assert.equal(planExpiry(segs, 25, { windowMs: 1000, maxBytes: 100 }, 200), {
    upTo: 0,
    segments: 0,
    forced: false,
  });
});

t("the site's retention acknowledges only what is durable, and expires by its policy", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
  const forced: string[] = [];
  const r = new Retention({
    dir,
    policy: { windowMs: 3_600_000, maxBytes: 256 * 1024 },
    onForced: (v) => forced.push(v),
    expireEveryMs: 20,
  });
  try {
    const w = workload(17, 800, Date.now());
    assert.is(
      r.take("a1/vol0", w.steps[0].body, w.steps[0].h),
      undefined,
      "no retention open: nothing taken",
    );
    await r.open("a1/vol0", SIZE, zeroSeed);
    let mark = 0;
    for (const s of w.steps) mark = r.take("a1/vol0", s.body, s.h)!;
    assert.ok(mark > 0 && r.synced < mark, "not durable yet");
    const t0 = performance.now();
    while (r.synced < mark && performance.now() - t0 < 10_000) await new Promise((x) => setTimeout(x, 5));
    assert.is(r.synced, mark);
    while (forced.length === 0 && performance.now() - t0 < 10_000) {
      await new Promise((x) => setTimeout(x, 20));
    }
    assert.equal(forced.slice(0, 1), ["a1/vol0"], "the space bound expired points early, with an alarm");
    const [st] = r.status();
    assert.ok(st.bytes <= 256 * 1024, `${st.bytes} bytes held`);
    assert.ok(st.forcedExpiries >= 1 && st.newest.seq === w.last);
    assert.throws(() => r.points("a1/other"), /no recovery points are kept here for a1\/other/);
  } finally {
    await r.close();
    await Deno.remove(dir, { recursive: true });
  }
});

t(
  "a rebasing resynchronisation (sequence 0) is the point before the next write, also once folded",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
    try {
      const l = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed, 16 * 1024);
      const rec = (h: Omit<RecordHeader, "volume" | "pos">, payload?: Uint8Array) => {
        const full = { ...h, volume: 1, pos: 0 };
        l.take(encodeRecord(full, payload), full);
      };
      for (let seq = 1; seq <= 5; seq++) {
        rec(
          { kind: Kind.Write, flags: 0, length: 4096, seq, offset: 0, time: 100 },
          new Uint8Array(4096).fill(seq),
        );
      }
      // the local site's content was replaced: a synchronisation that rebases, its chunks and end carry 0
      rec({ kind: Kind.SyncBegin, flags: 0, length: 0, seq: 0, offset: 0, time: 200 });
      const replaced = new Uint8Array(SIZE).fill(0x77);
      for (let c = 0; c < SIZE; c += 65536) {
        rec(
          { kind: Kind.Write, flags: FLAG_SYNC, length: 65536, seq: 0, offset: c, time: 200 },
          replaced.slice(c, c + 65536),
        );
      }
      rec({ kind: Kind.SyncEnd, flags: 0, length: 0, seq: 0, offset: 0, time: 200 });
      await l.flush();
      assert.throws(
        () => l.resolve(6),
        (e: PointError) => e.code === "not-yet",
        "its sequence is not known yet",
      );
      same(
        await copyAt(l, 5, dir),
        (() => {
          const before = new Uint8Array(SIZE);
          before.fill(5, 0, 4096);
          return before;
        })(),
        "the point before the resynchronisation",
      );
      assert.is(l.index.newestSeq, 5, "the end of the rebase has no sequence yet");
      // everything so far expires: the base is that resynchronisation's end, its sequence unknown
      await l.expire({ windowMs: 1, maxBytes: 2 ** 40 }, 10_000);
      assert.is(l.index.base.rebase, true);
      assert.throws(
        () => l.index.resolve(7),
        (e: PointError) => e.code === "not-yet",
        "with the base inside a rebase, nothing older is usable",
      );
      assert.throws(
        () => l.resolve(3),
        (e: PointError) => e.code === "not-yet" && /its next write is not here yet/.test(e.message),
        "nothing with a sequence is held",
      );
      rec(
        { kind: Kind.Write, flags: 0, length: 4096, seq: 40, offset: 8192, time: 300 },
        new Uint8Array(4096).fill(0x40),
      );
      assert.throws(
        () => l.resolve(3),
        (e: PointError) => e.code === "expired" && /the oldest point held is 39/.test(e.message),
        "the next write tells the base's sequence: older points have expired",
      );
      await l.flush();
      assert.is(l.index.base.seq, 39, "the next write tells the resynchronisation's sequence");
      same(await copyAt(l, 39, dir), replaced, "the point before the next write");
      const after = replaced.slice();
      after.fill(0x40, 8192, 12288);
      same(await copyAt(l, 40, dir), after, "the next write's point");
      await l.close();
      const again = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed, 16 * 1024);
      assert.is(again.index.base.seq, 39, "after a restart too");
      same(await copyAt(again, 39, dir), replaced, "the point after a restart");
      await again.close();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

t(
  "a task's retention: announced in the hello (malformed ones ignored), its window and space per volume",
  async () => {
    assert.equal(retentionOf({ windowMs: 3_600_000, maxBytes: 1 << 30 }), {
      windowMs: 3_600_000,
      maxBytes: 1 << 30,
    });
    assert.equal(
      retentionOf({ windowMs: 60_000, maxBytes: -1 }),
      { windowMs: 60_000 },
      "a bad bound: the site's",
    );
    for (const bad of [undefined, null, 5, "1h", { windowMs: 0 }, { windowMs: -5 }, { windowMs: 1.5 }, {}]) {
      assert.is(retentionOf(bad), undefined, JSON.stringify(bad));
    }
    const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
    const r = new Retention({ dir, policy: { windowMs: 0, maxBytes: 10 * 1024 * 1024 } });
    try {
      await r.open("a1/vol0", SIZE, zeroSeed, { windowMs: 7_200_000 });
      await r.open("a1/vol0", SIZE, zeroSeed); // a standby's registration: the task's policy stays
      assert.equal(r.policyOf("a1/vol0"), { windowMs: 7_200_000, maxBytes: 10 * 1024 * 1024 });
      assert.equal(r.policyOf("a1/other"), { windowMs: 0, maxBytes: 10 * 1024 * 1024 }, "the site's flags");
      assert.equal(r.status().map((s) => [s.volume, s.windowMs]), [["a1/vol0", 7_200_000]]);
    } finally {
      await r.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

t("appends go on while a copy at a point is made and while old points expire", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-ret-" });
  try {
    const now = 10_000_000;
    const w = workload(23, 600, now - 600_000);
    const l = await VolumeLog.open(`${dir}/v`, SIZE, zeroSeed, 16 * 1024);
    const half = Math.floor(w.steps.length / 2);
    for (const st of w.steps.slice(0, half)) l.take(st.body, st.h);
    await l.flush();
    const seq = l.index.newestSeq;
    const into = `${dir}/copy.img`;
    // the copy and an expiry of the oldest segments run while the second half is taken and flushed
    const copying = l.materialize(l.resolve(seq), into);
    const expiring = l.expire({ windowMs: 599_800, maxBytes: 2 ** 40 }, now);
    for (const [i, st] of w.steps.slice(half).entries()) {
      l.take(st.body, st.h);
      if (i % 25 === 0) await l.flush();
    }
    await Promise.all([copying, expiring, l.flush()]);
    same(await Deno.readFile(into), w.at.get(seq)!, "the copy made during appends");
    same(await copyAt(l, w.last, dir), w.at.get(w.last)!, "the newest point after both");
    await l.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

t.run();
