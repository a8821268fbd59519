// The standby's applier on its own, on a real file: what it receives is applied and acknowledged
// before a promotion freezes it, and a copy that could not apply what it received refuses the
// promotion with the error instead of waiting for ever. Records queued when the gateway's link
// drops are still applied, and the position kept on disk never runs ahead of the data.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { StandbyApplier, StandbyVolume } from "../src/replication/standby.ts";
import { Volume } from "../src/volume/volume.ts";
import { encodeRecord, Kind } from "../src/record/record.ts";
import { decodeSeqFrame, FRAME_HEADER } from "../src/wire/frames.ts";
import { setImmediate } from "node:timers";

const t = suite("standby applier");

const record = (seq: number, fill: number) =>
  encodeRecord(
    {
      kind: Kind.Write,
      flags: 0,
      volume: 7,
      length: 4096,
      seq,
      offset: (seq - 1) * 4096,
      time: Date.now(),
      pos: 0,
    },
    new Uint8Array(4096).fill(fill),
  );

async function applierOn(dir: string) {
  const vol = Volume.createSparse(`${dir}/rsp.img`, 1 << 20);
  const copy = await StandbyVolume.open("vol0", vol, dir);
  const frames: Uint8Array[] = [];
  const applier = new StandbyApplier([copy], (f) => frames.push(f));
  applier.opened("vol0", 7);
  return { vol, copy, frames, applier };
}

t("what was received is applied and acknowledged before a freeze returns", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-standby-" });
  const { vol, copy, frames, applier } = await applierOn(dir);
  try {
    for (let seq = 1; seq <= 3; seq++) await applier.record(record(seq, seq));
    await applier.freeze();
    assert.is(copy.seq.lastSeq, 3);
    assert.ok(frames.length > 0, "acknowledged");
    const bytes = await Deno.readFile(`${dir}/rsp.img`);
    assert.equal([bytes[0], bytes[4096], bytes[8192], bytes[12288]], [1, 2, 3, 0]);
  } finally {
    vol.close();
    await Deno.remove(dir, { recursive: true });
  }
});

t("a copy that could not apply what it received refuses the freeze with the error", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-standby-" });
  const { vol, applier } = await applierOn(dir);
  try {
    vol.close(); // its writes now fail (EBADF), as a failed disk's would
    await applier.record(record(1, 1));
    const outcome = await Promise.race([
      applier.freeze().then(() => "applied", (e: Error) => `refused: ${e.message}`),
      new Promise<string>((r) => setTimeout(() => r("still waiting"), 2000)),
    ]);
    assert.match(outcome, /^refused: /);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const tick = () => new Promise((r) => setImmediate(r));

t(
  "records queued when the link drops are applied, and the new link resumes after the durable position",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "cn-standby-" });
    const { vol, copy, frames, applier } = await applierOn(dir);
    try {
      await applier.record(record(1, 1));
      await tick(); // the first batch is being applied
      for (let seq = 2; seq <= 4; seq++) await applier.record(record(seq, seq));
      applier.reset(); // the gateway's link dropped and came back (a restarted remote gateway)
      const resumed = copy.durableSeq;
      assert.ok(resumed < 4, `the new link is told the durable position (${resumed}), not 4`);
      frames.length = 0;
      // the new link resends from there: what was admitted is skipped, the rest applied
      for (let seq = resumed + 1; seq <= 5; seq++) await applier.record(record(seq, seq));
      await applier.freeze();
      const bytes = await Deno.readFile(`${dir}/rsp.img`);
      assert.equal([1, 2, 3, 4, 5].map((s) => bytes[(s - 1) * 4096]), [1, 2, 3, 4, 5], "nothing dropped");
      assert.is(copy.durableSeq, 5);
      const acks = frames.map((f) => decodeSeqFrame(f.subarray(FRAME_HEADER)).seq);
      assert.is(
        acks.at(-1),
        5 - resumed,
        `the new link's records are acknowledged by its own count (${acks})`,
      );
    } finally {
      vol.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

t("the position on disk is that of the data on disk while later records wait", async () => {
  const dir = await Deno.makeTempDir({ prefix: "cn-standby-" });
  const vol = Volume.createSparse(`${dir}/rsp.img`, 1 << 20);
  // the disk fails right after the first batch is acknowledged, as in a crash before the next
  const applier = new StandbyApplier([await StandbyVolume.open("vol0", vol, dir)], () => vol.close());
  applier.opened("vol0", 7);
  try {
    await applier.record(record(1, 1));
    await tick(); // the first batch is being applied
    for (let seq = 2; seq <= 3; seq++) await applier.record(record(seq, seq));
    await applier.freeze().catch(() => {});
    const reopened = await StandbyVolume.open("vol0", Volume.open(`${dir}/rsp.img`), dir);
    const bytes = await Deno.readFile(`${dir}/rsp.img`);
    const applied = [1, 2, 3].filter((s) => bytes[(s - 1) * 4096] === s).length;
    reopened.volume.close();
    assert.ok(applied < 3, "the test stopped the disk before the second batch");
    assert.ok(reopened.seq.lastSeq <= applied, `position ${reopened.seq.lastSeq}, data through ${applied}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

t.run();
