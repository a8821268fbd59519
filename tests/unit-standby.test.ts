// A standby's copies in the agent's data plane (native/standby.c), fed records as its link thread
// feeds them, without a gateway: what is received is written, made durable with its position and
// acknowledged by count before a freeze returns; the position on disk never runs ahead of the
// data; a new link counts anew and skips what the copy holds; a copy that could not apply what it
// received refuses the promotion with the error; and every malformed record is refused with its
// reason, nothing written.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { StandbyApplier, StandbyVolume } from "../src/replication/standby.ts";
import { NativeAgent } from "../src/capture/native-agent.ts";
import { cstr, fromCstr, native } from "../src/native/ffi.ts";
import { Volume } from "../src/volume/volume.ts";
import { encodeRecord, Kind } from "../src/record/record.ts";

const t = suite("standby copies in the data plane");

const record = (
  seq: number,
  fill: number,
  over: Partial<{ kind: Kind; offset: number; flags: number; volume: number }> = {},
) =>
  encodeRecord(
    {
      kind: over.kind ?? Kind.Write,
      flags: over.flags ?? 0,
      volume: over.volume ?? 7,
      length: over.kind === Kind.SyncBegin || over.kind === Kind.SyncEnd ? 0 : 4096,
      seq,
      offset: over.offset ?? (seq - 1) * 4096,
      time: Date.now(),
      pos: 0,
    },
    over.kind === Kind.SyncBegin || over.kind === Kind.SyncEnd
      ? new Uint8Array(0)
      : new Uint8Array(4096).fill(fill),
  );

async function standbyOn(dir: string, beforeOpened?: () => Promise<void>) {
  const vol = Volume.createSparse(`${dir}/rsp.img`, 1 << 20);
  const copy = await StandbyVolume.open("vol0", vol, dir);
  await beforeOpened?.();
  // never started: nothing connects, the copies are fed as the link thread would feed them
  const agent = new NativeAgent({
    gateway: { transport: "unix", path: `${dir}/none.sock` },
    agent: "a1",
    secret: new Uint8Array(32),
    onGatewayLoss: "track",
    gatewayTimeoutMs: 1000,
    maxUnconfirmedBytes: 1 << 20,
  });
  const applier = new StandbyApplier([copy], agent);
  applier.opened("vol0", 7);
  /** Hands a record over as received on link number `link`: "" taken, else the reason it was refused. */
  const take = async (rec: Uint8Array, link = 1): Promise<string> => {
    const why = new Uint8Array(512);
    const r = await native().cn_agent_standby_take(
      agent.ptr,
      rec,
      BigInt(rec.length),
      BigInt(link),
      why,
      512n,
    );
    return r === 0 ? "" : fromCstr(why) || `result ${r}`;
  };
  const status = () => {
    const out = new BigUint64Array(5);
    assert.is(native().cn_agent_standby_status(agent.ptr, cstr("vol0"), new Uint8Array(out.buffer)), 0);
    return { last: Number(out[0]), durable: Number(out[1]), state: Number(out[2]), acked: Number(out[3]) };
  };
  const done = async () => {
    await agent.close();
    vol.close();
    await Deno.remove(dir, { recursive: true });
  };
  return { dir, vol, copy, agent, applier, take, status, done };
}

const temp = () => Deno.makeTempDir({ prefix: "cn-standby-" });
const until = async (ok: () => boolean) => {
  for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(ok(), "in time");
};

t(
  "what was received is written, durable with its position and acknowledged before a freeze returns",
  async () => {
    const s = await standbyOn(await temp());
    try {
      for (let seq = 1; seq <= 3; seq++) assert.is(await s.take(record(seq, seq)), "");
      await until(() => s.status().acked === 3);
      assert.equal(s.status(), { last: 3, durable: 3, state: 1, acked: 3 }, "consistent once written");
      await s.applier.freeze();
      assert.is(s.copy.lastSeq, 3, "the copy's figures read back from its slot file");
      assert.is(s.copy.state, "consistent");
      const bytes = await Deno.readFile(`${s.vol.path}`);
      assert.equal([bytes[0], bytes[4096], bytes[8192], bytes[12288]], [1, 2, 3, 0]);
      assert.is(await s.take(record(4, 4)), "", "frozen: later records are ignored");
      assert.is((await Deno.readFile(`${s.vol.path}`))[12288], 0, "and not written");
    } finally {
      await s.done();
    }
  },
);

t("a new link counts anew and skips what the copy holds", async () => {
  const s = await standbyOn(await temp());
  try {
    for (let seq = 1; seq <= 4; seq++) assert.is(await s.take(record(seq, seq)), "");
    await until(() => s.status().acked === 4);
    // the gateway restarted and resends from an older position: 3 and 4 are held, 5 is new
    for (let seq = 3; seq <= 5; seq++) assert.is(await s.take(record(seq, 10 + seq), 2), "");
    await until(() => s.status().acked === 3);
    assert.is(s.status().last, 5);
    const bytes = await Deno.readFile(`${s.vol.path}`);
    assert.equal(
      [1, 2, 3, 4, 5].map((q) => bytes[(q - 1) * 4096]),
      [1, 2, 3, 4, 15],
      "held ones not rewritten",
    );
  } finally {
    await s.done();
  }
});

t("a synchronisation is inconsistent on disk before its first chunk, consistent after its end", async () => {
  const s = await standbyOn(await temp());
  try {
    assert.is(await s.take(record(1, 1)), "");
    assert.is(await s.take(record(1, 0, { kind: Kind.SyncBegin })), "");
    // the take of a SyncBegin returns once its state is saved: read it back as a restart would
    const during = await StandbyVolume.open("vol0", Volume.open(s.vol.path), s.dir);
    during.volume.close();
    assert.is(during.state, "inconsistent");
    assert.is(await s.take(record(0, 9, { flags: 4, offset: 8192 })), "", "a chunk carries 0 after a rebase");
    assert.is(await s.take(record(7, 7)), "", "the next captured write is taken whatever its number");
    assert.is(await s.take(record(7, 0, { kind: Kind.SyncEnd })), "");
    await s.applier.freeze();
    assert.is(s.copy.state, "consistent");
    assert.is(s.copy.lastSeq, 7);
  } finally {
    await s.done();
  }
});

t(
  "malformed, misplaced and out-of-sequence records are refused with their reason, nothing written",
  async () => {
    const s = await standbyOn(await temp());
    try {
      assert.is(await s.take(record(1, 1)), "");
      const bad = record(2, 2);
      bad[bad.length - 1] ^= 1;
      assert.match(await s.take(bad), /payload checksum mismatch/);
      const header = record(2, 2);
      header[20] ^= 1;
      assert.match(await s.take(header), /record from the gateway: /);
      assert.match(await s.take(record(2, 2, { offset: (1 << 20) - 2048 })), /reaches past the end of vol0/);
      assert.match(await s.take(record(3, 3)), /out of sequence \(have 1\)/);
      assert.match(
        await s.take(record(2, 2, { volume: 8 })),
        /record for volume 8, which this standby does not hold/,
      );
      assert.is(s.status().last, 1);
      const bytes = await Deno.readFile(`${s.vol.path}`);
      assert.is(bytes[4096], 0, "nothing of the refused records written");
    } finally {
      await s.done();
    }
  },
);

t("a copy that cannot be registered is reported, and its records are refused, not written", async () => {
  const dir = await temp();
  const s = await standbyOn(dir, () => Deno.remove(`${dir}/vol0.standby.pos`));
  try {
    assert.match(await s.take(record(1, 1)), /record for volume 7, which this standby does not hold/);
    assert.is((await Deno.readFile(`${s.vol.path}`))[0], 0);
  } finally {
    await s.done();
  }
});

t("a copy that could not apply what it received refuses the freeze with the error", async () => {
  const s = await standbyOn(await temp());
  try {
    assert.is(await s.take(record(1, 1)), "");
    await until(() => s.status().acked === 1);
    s.vol.close(); // its writes now fail (EBADF), as a failed disk's would
    assert.match(await s.take(record(2, 2)), /writing record 2: /);
    assert.match(
      await s.take(record(3, 3)),
      /writing record 2: /,
      "the link's later records are refused too",
    );
    const outcome = await Promise.race([
      s.applier.freeze().then(() => "applied", (e: Error) => `refused: ${e.message}`),
      new Promise<string>((r) => setTimeout(() => r("still waiting"), 2000)),
    ]);
    assert.match(outcome, /^refused: .*writing record 2/);
    assert.is(s.status().durable, 1, "the saved position is that of the data written");
  } finally {
    await s.agent.close();
    await Deno.remove(s.dir, { recursive: true });
  }
});

t.run();
