// Regression (found by the fault runner, tests/faults/): a bit flipped in the byte
// stream of a site link must drop the link at once. Under node:tls, the receiving socket
// reported "error" and never "close", and replication stalled until the local gateway's
// idle timeout (10 s). Now the sealed batch fails its check, the stream ends with an
// error, the link reconnects, and the copies converge within a couple of seconds.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { hashAll, startTopology, waitFor } from "./lib/cluster.ts";
import { startOrdered } from "./lib/ordered-workload.ts";

const t = suite("transport: a corrupted sealed batch");

t(
  "a flipped bit on the site link drops it at once; the copies converge well before the idle timeout",
  async () => {
    const topo = await startTopology("tls-corrupt", {
      size: 16 << 20,
      sites: ["dr1"],
      proxied: ["dr1"],
      gatewayExtra: ["--buffer-size", "96M"],
      remoteExtra: ["--buffer-size", "96M"],
    });
    try {
      const w = startOrdered(topo.agent.socket, "vol0", 256);
      await new Promise((r) => setTimeout(r, 1000));
      const p = topo.proxies.dr1;
      p.flipChunks = 1;
      await waitFor(() => p.corrupted > 0, 5000, "a chunk of the site link corrupted");
      const t0 = performance.now();
      await waitFor(
        () => /site stream dropped/.test(topo.remotes.dr1.proc.log),
        5000,
        "the remote gateway to drop the corrupted stream",
      );
      await w.stop();
      await topo.caughtUp(8000);
      const ms = performance.now() - t0;
      console.log(`\n  converged ${Math.round(ms)} ms after the corruption`);
      assert.ok(ms < 8000, `converged before the 10 s idle timeout (${Math.round(ms)} ms)`);
      assert.not.match(topo.gw.proc.log, /no answer from the remote site/, "not found by the idle timeout");
      const sums = await hashAll(topo.copies());
      for (const [k, v] of Object.entries(sums)) assert.is(v, sums.lsp, `${k} equals the agent's volume`);
    } finally {
      await topo.stop();
    }
  },
);

t.run();
