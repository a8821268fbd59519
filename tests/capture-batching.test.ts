// Requests an NBD client sends together leave the agent together (native/nbd.c, capture.c): a
// submission whose next request is already read in whole leaves its record for that one to send,
// so a burst crosses to the gateway in a few sealed batches, not one per write. Whatever may wait
// sends first: a burst cut inside its last payload, one longer than the requests a connection may
// have in flight, or a read after writes, gets every earlier answer without more arriving.
// Checked through a real gateway and NBD client.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Gateway, tempDir, waitMirrorCaughtUp, writeSecret } from "./lib/cluster.ts";
import { NbdClient } from "./lib/nbd-client.ts";
import { within } from "./lib/within.ts";
import { CMD_FLUSH, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES } from "./lib/nbd-protocol.ts";
import { NativeAgent } from "../src/capture/native-agent.ts";
import { NbdServer } from "../src/nbd/server.ts";
import { Volume } from "../src/volume/volume.ts";
import { readSecretFile } from "../src/wire/secret-file.ts";

const t = suite("capture: bursts");
const SIZE = 4 << 20;

async function withAgent(
  name: string,
  body: (
    c: NbdClient,
    agent: NativeAgent,
    paths: { img: string; mirror: string; gw: Gateway },
  ) => Promise<void>,
) {
  const dir = await tempDir(name);
  await writeSecret(`${dir}/a1.secret`);
  const gw = await new Gateway({ dir, agents: { a1: `${dir}/a1.secret` } }).start();
  const agent = new NativeAgent({
    gateway: { transport: "unix", path: gw.socket },
    agent: "a1",
    secret: readSecretFile(`${dir}/a1.secret`),
    onGatewayLoss: "block",
    gatewayTimeoutMs: 20_000,
    maxUnconfirmedBytes: 64 << 20,
  });
  const img = Volume.createSparse(`${dir}/vol0.img`, SIZE);
  let nbd: NbdServer | undefined;
  try {
    const pv = await agent.addVolume(
      { linkId: 1, name: "vol0", fd: img.fd, size: SIZE },
      { path: `${dir}/vol0.dirty`, chunk: 1 << 20, mode: "equal" },
      (e) => {
        throw e;
      },
    );
    agent.start();
    await pv.opened;
    // the first synchronisation's batches are not the burst's
    assert.ok(await pv.quiescence(20_000), "the volume settles after its first synchronisation");
    nbd = await NbdServer.listen({ unixPath: `${dir}/nbd.sock` });
    nbd.exportVolume("vol0", agent, 1);
    const c = await NbdClient.connect(`${dir}/nbd.sock`);
    await c.go("vol0");
    await body(c, agent, { img: `${dir}/vol0.img`, mirror: gw.mirrorPath("a1", "vol0"), gw });
    await c.disconnect();
  } finally {
    await nbd?.close();
    await agent.close();
    img.close();
    await gw.proc.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

const block = (i: number) => new Uint8Array(512).fill(i + 1);
const writes = (n: number, from = 0) =>
  Array.from({ length: n }, (_, i) => ({
    type: CMD_WRITE,
    offset: (from + i) * 4096,
    length: 512,
    data: block(from + i),
  }));

t("64 writes read in one burst cross to the gateway in a few batches and land on both copies", async () => {
  await withAgent("burst", async (c, agent, p) => {
    const before = agent.linkStatus().batches;
    const { replies } = c.burst([...writes(64), { type: CMD_FLUSH, offset: 0, length: 0 }]);
    await within(Promise.all(replies), 20_000, "the burst's answers");
    const batches = agent.linkStatus().batches - before;
    // one per write before; the socket may hand the burst over in a few pieces
    assert.ok(batches >= 1 && batches <= 8, `65 requests in ${batches} batches`);
    await waitMirrorCaughtUp(p.gw, "a1", "vol0");
    const [disk, mirror] = await Promise.all([Deno.readFile(p.img), Deno.readFile(p.mirror)]);
    for (let i = 0; i < 64; i++) {
      assert.equal(disk.subarray(i * 4096, i * 4096 + 512), block(i), `write ${i} on the agent's disk`);
      assert.equal(mirror.subarray(i * 4096, i * 4096 + 512), block(i), `write ${i} in the gateway's mirror`);
    }
  });
});

t(
  "a burst cut inside its last payload answers the writes before it without waiting for the rest",
  async () => {
    await withAgent("burst-cut", async (c) => {
      const { replies, rest } = c.burst(writes(16), 100);
      await within(
        Promise.all(replies.slice(0, 15)),
        10_000,
        "the 15 whole writes' answers, the 16th incomplete",
      );
      let last = false;
      replies[15].then(() => last = true);
      await new Promise((r) => setTimeout(r, 200));
      assert.not.ok(last, "the incomplete write is not answered");
      await rest();
      await within(replies[15], 10_000, "the 16th write's answer once whole");
    });
  },
);

t("a burst longer than the connection's 128 requests in flight is all answered", async () => {
  await withAgent("burst-budget", async (c) => {
    // 200 zeroings fit the reader's buffer whole: the 129th waits for room, which the replies
    // give back only once the records owed to the gateway are sent
    const zeroes = Array.from(
      { length: 200 },
      (_, i) => ({ type: CMD_WRITE_ZEROES, offset: i * 4096, length: 512 }),
    );
    const { replies } = c.burst(zeroes);
    await within(Promise.all(replies), 20_000, "the answers to 200 zeroings in flight at once");
  });
});

t("writes followed by a read in one burst are all answered", async () => {
  await withAgent("burst-read", async (c) => {
    const { replies } = c.burst([...writes(8), {
      type: CMD_READ,
      offset: 3 * 4096,
      length: 512,
      replyLen: 512,
    }]);
    const got = await within(Promise.all(replies), 10_000, "the writes' and the read's answers");
    assert.is(got[8].length, 512);
  });
});

t.run();
