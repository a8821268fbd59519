// A remote site's stream to a standby agent goes through the gateway's session queue
// (src/link/gateway-listener.ts, native/gateway.c). The stream paces itself by that queue: when
// it holds more than the window, the stream waits for the queue to fall, told by the data
// plane's CN_FL_SENT flag (no timer). Here the agent stops reading, the queue grows behind the
// blocked socket, and the wait ends only once the agent reads again.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { openDatabase } from "../src/db/db.ts";
import { Journal } from "../src/journal/journal.ts";
import { GatewayListener } from "../src/link/gateway-listener.ts";
import type { Channel } from "../src/replication/sender.ts";
import { FRAME_HEADER, FrameType, jsonFrame } from "../src/wire/frames.ts";
import { HEADER_SIZE, MAX_PAYLOAD } from "../src/record/record.ts";
import { setLogSink } from "../src/log.ts";
import { LinkClient } from "./lib/link-client.ts";
import { DATA_START } from "./lib/ring-file.ts";

await (await import("../native/build.ts")).buildNative();
setLogSink(() => {});
const t = suite("gateway: a standby's session queue");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t("a wait on the queue ends when the agent reads again, not before and not on a timer", async () => {
  const dir = await Deno.makeTempDir();
  const db = await openDatabase(`${dir}/gateway.db`);
  const journal = await Journal.open(
    db.db,
    `${dir}/ring`,
    DATA_START + 2 * (HEADER_SIZE + MAX_PAYLOAD) + 65536,
  );
  const secret = crypto.getRandomValues(new Uint8Array(32));
  let ready: (c: Channel) => void;
  const channel = new Promise<Channel>((r) => ready = r);
  const gw = await GatewayListener.listen({
    listen: [{ transport: "unix", path: `${dir}/gw.sock` }],
    journal,
    secrets: new Map([["a1", secret]]),
    mirrorPath: (agent, volume) => `${dir}/${agent}-${volume}.img`,
    standby: {
      open: () => Promise.resolve(1),
      ready: (_agent, c) => ready(c),
      frame: () => {},
      closed: () => {},
    },
  });
  const link = await LinkClient.connect(`${dir}/gw.sock`, "a1", secret);
  try {
    await link.send(jsonFrame(FrameType.Control, { type: "standby-ready" }));
    const ch = await channel;
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
    link.close();
    await gw.close();
    await journal.close();
    db.close();
    await Deno.remove(dir, { recursive: true });
  }
});

t.run();
