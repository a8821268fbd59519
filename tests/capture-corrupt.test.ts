// A flipped bit on the agent → gateway link (TCP, so sealed) fails the batch's authentication;
// the connection is reset, the agent resends what the gateway does not hold, and the copies
// converge. (A record whose own checksums fail inside a valid batch is the fuzzer's case:
// tests/fuzz-replication.test.ts.)
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Agent, Gateway, sparseImage, tempDir, waitEqual, waitFor, writeSecret } from "./lib/cluster.ts";
import { Proxy } from "./lib/proxy.ts";
import { missingWrites, startWorkload } from "./lib/workload.ts";

const t = suite("capture: corrupted frames");
const MiB = 1024 * 1024;

t(
  "a flipped bit is caught by the link's authentication; the link resets and the data converges",
  async () => {
    const dir = await tempDir("corrupt");
    const secret = `${dir}/agent.secret`;
    await writeSecret(secret);
    const gw = await new Gateway({ dir, agents: { a1: secret }, tcp: true }).start();
    const proxy = new Proxy({ hostname: "127.0.0.1", port: gw.agentPort });
    const lsp = await sparseImage(`${dir}/lsp.img`, 32 * MiB);
    const agent = await new Agent({
      dir,
      id: "a1",
      secretFile: secret,
      gatewayPort: proxy.port,
      volumes: { vol0: lsp },
    })
      .start();
    try {
      await waitFor(() => gw.status().then((s) => s.agents.includes("a1")), 20_000, "agent to connect");
      assert.match(agent.proc.log, /"link":"sealed \(AES-256-GCM\)"/);
      await waitFor(
        () => gw.status().then((s) => s.volumes[0]?.lastSeq >= 32),
        20_000,
        "initial synchronisation",
      );
      const w = startWorkload({ socket: agent.socket, exportName: "vol0", blocks: 8192, maxWrites: 3000 });
      await waitFor(() => w.written() > 200, 20_000, "the workload to get going");
      proxy.flipChunks = 1;
      const r = await w.done;
      assert.is(r.error, undefined, "the client never saw an error");
      assert.is(proxy.corrupted, 1, "one chunk was corrupted on the way");
      await waitFor(() => /failed authentication/.test(gw.proc.log), 10_000, "the gateway's rejection");
      assert.match(agent.proc.log, /gateway link down|gateway link failed/);
      await waitEqual(lsp, gw.mirrorPath("a1", "vol0"), 60_000);
      assert.equal(await missingWrites(gw.mirrorPath("a1", "vol0"), r.acked), []);
    } finally {
      proxy.close();
      await agent.proc.stop();
      await gw.proc.stop();
    }
  },
);

t.run();
