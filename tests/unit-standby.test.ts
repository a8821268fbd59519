// The standby's applier on its own, on a real file: what it receives is applied and acknowledged
// before a promotion freezes it, and a copy that could not apply what it received refuses the
// promotion with the error instead of waiting for ever.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { StandbyApplier, StandbyVolume } from "../src/replication/standby.ts";
import { Volume } from "../src/volume/volume.ts";
import { encodeRecord, Kind } from "../src/record/record.ts";

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

t.run();
