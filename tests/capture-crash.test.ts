// kill -9 of the agent, and separately of the gateway, in the middle of a flushing
// workload: every write acknowledged by a FLUSH is present in both images after a
// restart, and the two images converge to equal.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { startPair, waitEqual, waitFor } from "./lib/cluster.ts";
import { missingWrites, startWorkload } from "./lib/workload.ts";

const t = suite("capture: crashes during a flushing workload");
const MiB = 1024 * 1024;

t("kill -9 of the agent: flushed writes survive in both images, which converge", async () => {
  const pair = await startPair("crash-agent", { vol0: 64 * MiB });
  try {
    const w = startWorkload({ socket: pair.agent.socket, exportName: "vol0", blocks: 16384 });
    await waitFor(() => w.written() > 3000, 30_000, "the workload to get going");
    pair.agent.proc.kill("SIGKILL");
    const r = await w.done;
    assert.ok(r.error, "the workload saw the agent die");
    assert.ok(r.flushed.size > 500, `enough flushed writes to matter (${r.flushed.size})`);
    await pair.agent.start();
    const sum = await waitEqual(pair.paths.vol0, pair.gw.mirrorPath("a1", "vol0"), 60_000);
    assert.ok(sum);
    assert.equal(await missingWrites(pair.paths.vol0, r.flushed), [], "flushed writes on the agent's disk");
    assert.equal(
      await missingWrites(pair.gw.mirrorPath("a1", "vol0"), r.flushed),
      [],
      "flushed writes in the mirror",
    );
    assert.match(pair.agent.proc.log, /resending chunks that may differ/);
  } finally {
    await pair.stop();
  }
});

t("kill -9 of the gateway: the agent waits, resends, and nothing acknowledged is lost", async () => {
  const pair = await startPair("crash-gw", { vol0: 64 * MiB });
  try {
    const w = startWorkload({
      socket: pair.agent.socket,
      exportName: "vol0",
      blocks: 16384,
      maxWrites: 12000,
    });
    await waitFor(() => w.written() > 3000, 30_000, "the workload to get going");
    pair.gw.proc.kill("SIGKILL");
    await pair.gw.proc.exited;
    await new Promise((r) => setTimeout(r, 500));
    await pair.gw.start();
    const r = await w.done;
    assert.is(
      r.error?.message,
      undefined,
      "block mode: the writes waited for the gateway instead of failing",
    );
    assert.ok(r.flushed.size >= 12000, `every write was flushed at the end (${r.flushed.size})`);
    await waitEqual(pair.paths.vol0, pair.gw.mirrorPath("a1", "vol0"), 60_000);
    assert.equal(await missingWrites(pair.paths.vol0, r.acked), []);
    assert.equal(await missingWrites(pair.gw.mirrorPath("a1", "vol0"), r.acked), []);
  } finally {
    await pair.stop();
  }
});

t.run();
