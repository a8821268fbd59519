// The slot file that keeps a standby's position: saves overwrite in place, a reopen reads the
// newest intact slot, a torn newest slot falls back to the one before, and a standby copy
// written by an older version (a JSON position file) keeps its position across the upgrade.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { SlotFile } from "../src/io/slot-file.ts";
import { StandbyVolume } from "../src/replication/standby.ts";
import { Volume } from "../src/volume/volume.ts";

const t = suite("slot file");
const text = (b: Uint8Array | undefined) => b && new TextDecoder().decode(b);
const bytes = (s: string) => new TextEncoder().encode(s);

async function inTempDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "cn-slot-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

t("a reopen reads the newest value; the file never grows", () =>
  inTempDir(async (dir) => {
    const path = `${dir}/p.pos`;
    const first = await SlotFile.open(path);
    assert.is(first.value, undefined);
    for (let i = 1; i <= 5; i++) await first.file.save(bytes(`value ${i}`));
    assert.is(text((await SlotFile.open(path)).value), "value 5");
    assert.is((await Deno.stat(path)).size, 1024);
    // saving again after a reopen goes on from the newest generation
    const again = await SlotFile.open(path);
    await again.file.save(bytes("value 6"));
    assert.is(text((await SlotFile.open(path)).value), "value 6");
  }));

t("saves made at once land one after the other: the last one is read back", () =>
  inTempDir(async (dir) => {
    const path = `${dir}/p.pos`;
    const { file } = await SlotFile.open(path);
    await Promise.all(["a", "b", "c"].map((v) => file.save(bytes(v))));
    assert.is(text((await SlotFile.open(path)).value), "c");
    // each save went to the slot the one before did not use: "c" (generation 3) in slot 1, "b" in
    // slot 0, so a torn "c" still leaves "b"
    const raw = await Deno.readFile(path);
    raw.fill(0, 512);
    await Deno.writeFile(path, raw);
    assert.is(text((await SlotFile.open(path)).value), "b");
  }));

t("a torn newest slot leaves the value before it", () =>
  inTempDir(async (dir) => {
    const path = `${dir}/p.pos`;
    const { file } = await SlotFile.open(path);
    await file.save(bytes("older")); // generation 1: slot 1
    await file.save(bytes("newer")); // generation 2: slot 0
    const raw = await Deno.readFile(path);
    raw[20] ^= 0xff; // a byte of slot 0's value, as a write cut short would leave it
    await Deno.writeFile(path, raw);
    assert.is(text((await SlotFile.open(path)).value), "older");
    raw.fill(0, 512); // slot 1 gone too
    await Deno.writeFile(path, raw);
    assert.is((await SlotFile.open(path)).value, undefined);
  }));

t("a value too large for a slot is refused before anything is written", () =>
  inTempDir(async (dir) => {
    const { file } = await SlotFile.open(`${dir}/p.pos`);
    await file.save(bytes("kept"));
    try {
      await file.save(new Uint8Array(1000));
      assert.unreachable("saved");
    } catch (e) {
      assert.instance(e, RangeError);
    }
    assert.is(text((await SlotFile.open(`${dir}/p.pos`)).value), "kept");
  }));

t(
  "a standby copy's position written by an older version survives the upgrade",
  () =>
    inTempDir(async (dir) => {
      const vol = Volume.createSparse(`${dir}/rsp.img`, 1 << 20);
      try {
        await Deno.writeTextFile(
          `${dir}/vol0.standby.json`,
          JSON.stringify({ lastSeq: 42, state: "consistent" }),
        );
        const copy = await StandbyVolume.open("vol0", vol, dir);
        assert.is(copy.lastSeq, 42);
        assert.is(copy.state, "consistent");
        copy.lastSeq = 43;
        await copy.persist();
        const old = await Deno.stat(`${dir}/vol0.standby.json`).then(() => "still there", (e) => e.name);
        assert.is(old, "NotFound", "the old file is gone once replaced");
        const reopened = await StandbyVolume.open("vol0", vol, dir);
        assert.is(reopened.lastSeq, 43);
        assert.is(reopened.state, "consistent");
      } finally {
        vol.close();
      }
    }),
);

t.run();
