// The capture path keeps one order for every copy (native/capture.c): requests enter a
// volume's queue as they arrive, are sequenced at its head, and are applied to the local
// disk and journaled in that order. Checked through a real agent and gateway:
// - overlapping writes, zeroes and trims pipelined on one connection land as a model
//   applying them in send order says, on the agent's disk and in the gateway's mirror;
// - two connections writing the same blocks at once leave both copies equal;
// - a write the local disk refuses (ENOSPC) fails alone, the others land, and the chunk
//   the gateway holds from it is sent again from the disk, so the copies converge;
// - writes one at a time (written by the NBD reader itself when alone in the queue) while the
//   volume's chunks are resent all get their answers (a resync read waiting for such a write
//   once stalled the queue for good).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { sha256File, startPair, waitEqual, waitMirrorCaughtUp } from "./lib/cluster.ts";
import { NbdClient, NbdReplyError } from "./lib/nbd-client.ts";
import { need } from "./lib/env.ts";
import { within } from "./lib/within.ts";
import { mustExec } from "./lib/netns.ts";

const t = suite("capture: order");
const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

type Op = { op: "write"; off: number; data: Uint8Array } | { op: "zero" | "trim"; off: number; len: number };

function model(ops: Op[]): Uint8Array {
  const m = new Uint8Array(SIZE);
  for (const o of ops) {
    if (o.op === "write") m.set(o.data, o.off);
    else m.fill(0, o.off, o.off + o.len);
  }
  return m;
}

function overlapping(n: number, seed: number): Op[] {
  const ops: Op[] = [];
  for (let i = 0; i < n; i++) {
    const off = ((i * 997 + seed * 4093) % (SIZE / 512 - 64)) * 512;
    const kind = i % 10;
    if (kind === 7) ops.push({ op: "zero", off, len: 4096 * (1 + (i % 5)) });
    else if (kind === 9) ops.push({ op: "trim", off, len: 8192 });
    else ops.push({ op: "write", off, data: new Uint8Array(512 * (1 + (i * 131) % 40)).fill((i % 250) + 1) });
  }
  return ops;
}

function send(c: NbdClient, o: Op): Promise<void> {
  if (o.op === "write") return c.write(o.off, o.data);
  return o.op === "zero" ? c.zero(o.off, o.len) : c.trim(o.off, o.len);
}

async function fileBytes(path: string): Promise<Uint8Array> {
  return (await Deno.readFile(path)).subarray(0, SIZE);
}

t(
  "overlapping writes, zeroes and trims pipelined on one connection land in send order on both copies",
  async () => {
    const pair = await startPair("order", { vol0: SIZE });
    try {
      const c = await NbdClient.connect(pair.agent.socket);
      await c.go("vol0");
      const ops = overlapping(400, 1);
      // all in flight at once: only the server's queue orders them
      await Promise.all(ops.map((o) => send(c, o)));
      await c.flush();
      await c.disconnect();
      const want = model(ops);
      assert.equal(await fileBytes(pair.paths.vol0), want, "the agent's disk");
      await waitMirrorCaughtUp(pair.gw, "a1", "vol0");
      assert.equal(await fileBytes(pair.gw.mirrorPath("a1", "vol0")), want, "the gateway's mirror");
    } finally {
      await pair.stop();
    }
  },
);

t("two connections writing the same blocks at once leave the disk and the mirror equal", async () => {
  const pair = await startPair("order2", { vol0: SIZE });
  try {
    const [a, b] = await Promise.all([
      NbdClient.connect(pair.agent.socket),
      NbdClient.connect(pair.agent.socket),
    ]);
    await Promise.all([a.go("vol0"), b.go("vol0")]);
    await Promise.all([
      Promise.all(overlapping(300, 2).map((o) => send(a, o))),
      Promise.all(
        overlapping(300, 2).map((o, i) =>
          send(b, o.op === "write" ? { ...o, data: o.data.map(() => i % 200) } : o)
        ),
      ),
    ]);
    await a.flush();
    await Promise.all([a.disconnect(), b.disconnect()]);
    await waitMirrorCaughtUp(pair.gw, "a1", "vol0");
    assert.is(await sha256File(pair.gw.mirrorPath("a1", "vol0")), await sha256File(pair.paths.vol0));
  } finally {
    await pair.stop();
  }
});

t(
  "a write the local disk refuses fails alone with ENOSPC; the copies converge on the disk's content",
  async () => {
    if (!need("local disk full", { root: true, tools: ["mount"] })) return;
    const dir = await Deno.makeTempDir({ prefix: "cn-order-full-" });
    await mustExec(["mount", "-t", "tmpfs", "-o", "size=4M,mode=0700", "order-full", dir]);
    try {
      // the agent's volume lives on a 4 MiB file system: most of the 8 MiB sparse image cannot be written
      const lsp = `${dir}/vol0.img`;
      const f = await Deno.open(lsp, { create: true, write: true });
      await f.truncate(SIZE);
      f.close();
      const pair = await startPair("order-full", { vol0: SIZE });
      await pair.agent.proc.stop();
      pair.agent.o.volumes.vol0 = lsp;
      await pair.agent.start();
      try {
        const c = await NbdClient.connect(pair.agent.socket);
        await c.go("vol0");
        const small = new Uint8Array(4096).fill(0x11);
        await c.write(0, small);
        await c.write(8192, small);
        // more than the file system holds: refused, and the connection goes on
        const big = new Uint8Array(6 * MiB).fill(0x22);
        const err = await c.write(MiB, big).then(() => undefined, (e) => e);
        assert.instance(err, NbdReplyError);
        assert.is((err as NbdReplyError).code, 28, "ENOSPC");
        // blocks already allocated are still written in place
        const again = new Uint8Array(4096).fill(0x33);
        await c.write(0, again);
        await c.flush();
        await c.disconnect();
        // the gateway received the refused write's record: the agent sends its chunks again from the disk
        await waitEqual(lsp, pair.gw.mirrorPath("a1", "vol0"), 30_000);
        const disk = await Deno.readFile(lsp);
        assert.equal(disk.subarray(0, 4096), again);
        assert.equal(disk.subarray(8192, 8192 + 4096), small);
      } finally {
        await pair.stop();
      }
    } finally {
      await mustExec(["umount", dir]);
      await Deno.remove(dir, { recursive: true });
    }
  },
);

t("writes one at a time during the volume's first full resynchronisation are all answered", async () => {
  const size = 1024 * MiB;
  // random content: the gateway has no copy, so every chunk is read from this disk and resent
  const pair = await startPair("order-resync", { vol0: size }, [], async ({ vol0 }) => {
    const f = await Deno.open(vol0, { write: true });
    const block = new Uint8Array(MiB);
    for (let i = 0; i < size / MiB; i++) {
      crypto.getRandomValues(block.subarray(0, 65536));
      block[0] = i;
      await f.write(block);
    }
    f.close();
  });
  const { gw, agent } = pair;
  const img = pair.paths.vol0;
  try {
    const c = await NbdClient.connect(agent.socket);
    await c.go("vol0");
    // 1 MiB writes one after another, as a copy tool makes them: each alone in the queue
    const data = new Uint8Array(MiB).fill(0x5a);
    let done = 0;
    const writes = (async () => {
      for (; done < 600; done++) await c.write((done % (size / MiB)) * MiB, data);
    })();
    await within(writes, 60_000, () => `stalled after ${done} of 600 writes`);
    await c.flush();
    await c.disconnect();
    await agent.proc.waitForLog("every chunk that may differ was resent", 60_000);
    await waitMirrorCaughtUp(gw, "a1", "vol0");
    assert.is(
      await sha256File(gw.mirrorPath("a1", "vol0")),
      await sha256File(img),
      "the mirror equals the disk",
    );
  } finally {
    await pair.stop();
  }
});

t.run();
