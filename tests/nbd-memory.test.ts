// A connection's requests leave nothing behind once answered, in the agent and in the gateway:
// after a warm-up that has cycled the volume's capture ring, 40000 more requests (writes,
// reads, flushes, 16 in flight) leave both processes' resident memory where it was. (The soak
// once found the agent growing by 400 bytes a request, in the TypeScript NBD server this data
// plane replaced; this is the same check on the native one.)
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { startPair } from "./lib/cluster.ts";
import { NbdClient } from "./lib/nbd-client.ts";

const t = suite("nbd memory");
const MiB = 1024 * 1024;

function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  return Number(m![1]) * 1024;
}

/** `count` requests, 16 in flight: mostly 4 KiB writes, some reads, a flush every 64. */
async function load(c: NbdClient, count: number): Promise<void> {
  const block = new Uint8Array(4096).fill(7);
  let next = 0;
  await Promise.all(Array.from({ length: 16 }, async () => {
    while (next < count) {
      const i = next++;
      const off = (i * 7919 % 8192) * 4096;
      if (i % 64 === 0) await c.flush();
      else if (i % 8 === 0) await c.read(off, 4096);
      else await c.write(off, block);
    }
  }));
}

t("40000 requests on one connection leave the agent's and the gateway's memory where they were", async () => {
  const pair = await startPair("nbd-mem", { vol0: 32 * MiB }, ["--max-unconfirmed", "64M"]);
  try {
    const c = await NbdClient.connect(pair.agent.socket);
    await c.go("vol0");
    // the capture ring (at least two of the largest frames: 64 MiB here) is touched once through,
    // and the gateway's heap reaches its working size (its index follows every commit)
    await load(c, 64_000);
    const before = { agent: rss(pair.agent.proc.pid), gateway: rss(pair.gw.proc.pid) };
    await load(c, 40_000);
    await c.disconnect();
    const after = { agent: rss(pair.agent.proc.pid), gateway: rss(pair.gw.proc.pid) };
    console.log(
      `\n  agent ${(before.agent / MiB).toFixed(1)} → ${(after.agent / MiB).toFixed(1)} MiB, ` +
        `gateway ${(before.gateway / MiB).toFixed(1)} → ${(after.gateway / MiB).toFixed(1)} MiB`,
    );
    // 100 bytes a request would be 4 MiB: allocator and page-cache noise stays well below
    assert.ok(after.agent - before.agent < 4 * MiB, "the agent kept memory per request");
    assert.ok(after.gateway - before.gateway < 4 * MiB, "the gateway kept memory per request");
  } finally {
    await pair.stop();
  }
});

t.run();
