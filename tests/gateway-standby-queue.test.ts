// A remote site's stream to a standby agent goes through the gateway's session queue
// (src/link/gateway-listener.ts, native/gateway.c). The stream paces itself by that queue: when
// it holds more than the window, the stream waits for the queue to fall, told by the data
// plane's CN_FL_SENT flag (no timer). Here the agent stops reading, the queue grows behind the
// blocked socket, and the wait ends only once the agent reads again. Its records go by
// reference: the feeder reads their headers, and the session's sender reads each record from
// the journal into its batch; one overwritten since its header was read ends the session.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDatabase } from "../src/db/db.ts";
import { Journal } from "../src/journal/journal.ts";
import { GatewayListener } from "../src/link/gateway-listener.ts";
import type { Channel } from "../src/replication/sender.ts";
import { FRAME_HEADER, FrameType, jsonFrame } from "../src/wire/frames.ts";
import { encodeRecord, HEADER_SIZE, Kind, MAX_PAYLOAD, type RecordHeader } from "../src/record/record.ts";
import { native } from "../src/native/ffi.ts";
import { setLogSink } from "../src/log.ts";
import { LinkClient } from "./lib/link-client.ts";
import { DATA_START } from "./lib/ring-file.ts";
import { bytesEqual } from "./lib/fuzz.ts";

await (await import("../native/build.ts")).buildNative();
setLogSink(() => {});
const t = suite("gateway: a standby's session queue");

/** The smallest journal there is (two records of the largest size). */
const RING_BYTES = DATA_START + 2 * (HEADER_SIZE + MAX_PAYLOAD) + 65536;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A gateway over a small journal with one volume, and a standby agent's link to it. */
async function standbyLink() {
  const dir = await Deno.makeTempDir();
  const db = await openDatabase(`${dir}/gateway.db`);
  const journal = await Journal.open(db.db, `${dir}/ring`, RING_BYTES, { commitDelayMs: 2 });
  const v = await journal.registerVolume("a1", "vol0", 1 << 30, `${dir}/mirror.img`);
  // the mirror applier releases journal space: the ring is reused
  assert.is(native().cn_journal_mirror_start(journal.ptr, 0n, 1000, 0), 0);
  const secret = crypto.getRandomValues(new Uint8Array(32));
  let ready: (c: Channel) => void;
  const channel = new Promise<Channel>((r) => ready = r);
  let ended = 0;
  const gw = await GatewayListener.listen({
    listen: [{ transport: "unix", path: `${dir}/gw.sock` }],
    journal,
    secrets: new Map([["a1", secret]]),
    mirrorPath: (agent, volume) => `${dir}/${agent}-${volume}.img`,
    standby: {
      open: () => Promise.resolve(1),
      ready: (_agent, c) => ready(c),
      frame: () => {},
      closed: () => ended++,
    },
  });
  const link = await LinkClient.connect(`${dir}/gw.sock`, "a1", secret);
  await link.send(jsonFrame(FrameType.Control, { type: "standby-ready" }));
  let seq = 0;
  return {
    journal,
    link,
    ch: await channel,
    ended: () => ended,
    /** Appends writes of these payload sizes (each filled with its sequence number), durably. */
    async append(...sizes: number[]) {
      for (const n of sizes) {
        const header: RecordHeader = {
          kind: Kind.Write,
          flags: 0,
          volume: v.id,
          length: n,
          seq: ++seq,
          offset: 0,
          time: Date.now(),
          pos: 0,
        };
        await journal.append(v.id, encodeRecord(header, new Uint8Array(n).fill(seq & 255)), header);
      }
      await journal.flushed();
    },
    async close() {
      link.close();
      await gw.close();
      await journal.close();
      db.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

t("a wait on the queue ends when the agent reads again, not before and not on a timer", async () => {
  const { ch, link, close } = await standbyLink();
  try {
    // 16 MiB of frames the agent does not read: the socket fills, the rest waits in the queue
    const body = new Uint8Array(256 * 1024 - FRAME_HEADER);
    const head = new Uint8Array(FRAME_HEADER);
    new DataView(head.buffer).setUint32(0, 1 + body.length);
    head[4] = FrameType.Pong;
    for (let i = 0; i < 64; i++) ch.send(head, body);
    await sleep(100);
    const queued = ch.pending;
    assert.ok(queued > 4 << 20, `the queue holds what the socket cannot take (${queued} bytes)`);

    const ac = new AbortController();
    let fell = false;
    const waiting = ch.drained(ac.signal).then(() => fell = true);
    await sleep(300);
    assert.not.ok(fell, "nothing was sent: the wait goes on");
    assert.is(ch.pending, queued);

    // the agent reads again: the data plane takes the queue and says so
    const reading = link.drain(10_000);
    await Promise.race([waiting, sleep(5_000)]);
    assert.ok(fell, "the wait ended once the queue was taken for sending");
    assert.ok(ch.pending < queued, `the queue fell (${ch.pending} of ${queued} bytes)`);
    ac.abort();
    link.close();
    await reading;
  } finally {
    await close();
  }
});

t(
  "a record sent by reference arrives as the journal holds it: the feeder reads its header only",
  async () => {
    const s = await standbyLink();
    try {
      await s.append(4096, 1 << 20, 100_000, 0);
      const heads = await s.journal.readFrom(0, 64 << 20, { heads: true });
      const full = await s.journal.readFrom(0, 64 << 20);
      assert.is(heads.length, 4);
      assert.equal(heads.map((e) => e.bytes.length), [HEADER_SIZE, HEADER_SIZE, HEADER_SIZE, HEADER_SIZE]);
      assert.equal(heads.map((e) => e.length), full.map((e) => e.bytes.length));
      assert.equal(heads.map((e) => e.header), full.map((e) => e.header));
      for (const e of heads) s.ch.sendStored!(e.pos, e.length);
      const got = [];
      while (got.length < 4) {
        const f = await s.link.next();
        if (!f) break;
        if (f.type === FrameType.Record) got.push(f.body);
      }
      assert.is(got.length, 4);
      for (const [i, body] of got.entries()) {
        assert.ok(
          bytesEqual(body, full[i].bytes),
          `record ${i + 1} arrived intact`,
        );
      }
    } finally {
      await s.close();
    }
  },
);

t(
  "a record overwritten in the journal before it is sent ends the session: nothing of it or after it is sent",
  async () => {
    const s = await standbyLink();
    try {
      await s.append(1 << 20);
      const [lost] = await s.journal.readFrom(0, 1 << 20, { heads: true });
      // no reader holds it: the ring's next laps overwrite its place
      while (s.journal.positions.head < s.journal.positions.capacity + lost.length + 4096) {
        await s.append(1 << 20);
      }
      const [recent] = await s.journal.readFrom(s.journal.positions.durable - lost.length, 1 << 20, {
        heads: true,
      });
      s.ch.sendStored!(recent.pos, recent.length);
      let first = await s.link.next();
      while (first && first.type !== FrameType.Record) first = await s.link.next();
      assert.ok(
        first && bytesEqual(first.body.subarray(0, HEADER_SIZE), recent.bytes),
        "a record still there is sent",
      );
      s.ch.sendStored!(lost.pos, lost.length);
      s.ch.send(jsonFrame(FrameType.Control, { type: "after" }));
      const rest = await s.link.drain(5_000);
      assert.not.ok(rest.timedOut, "the gateway closed the session");
      assert.equal(
        rest.frames.map((f) => f.type),
        [],
        "neither the lost record nor what followed it was sent",
      );
      for (let i = 0; i < 50 && s.ended() === 0; i++) await sleep(20);
      assert.is(s.ended(), 1, "the feeder heard the session end");
    } finally {
      await s.close();
    }
  },
);

t.run();
