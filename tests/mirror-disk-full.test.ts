// Regression (found by the fault runner, tests/faults/): a full disk under the
// gateway's mirror images made the mirror applier's batch fail with ENOSPC, an
// unhandled rejection that killed the whole local gateway (and, through the same
// applier, a remote gateway with a full replica disk). The applier now waits for
// space: the gateway stays up, the writes go on (the journal holds them), and once
// space is freed the mirror catches up and equals the agent's volume.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  Agent,
  Gateway,
  sparseImage,
  tempDir,
  waitEqual,
  waitFor,
  waitMirrorCaughtUp,
  writeSecret,
} from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { exec, mustExec } from "./lib/netns.ts";
import { missingWrites, startWorkload } from "./lib/workload.ts";

const t = suite("mirror: disk full");
const MiB = 1024 * 1024;

t("a full mirror disk is waited out: the gateway stays up and the mirror converges", async () => {
  if (!need("mirror disk full", { root: true, tools: ["mount", "fallocate"] })) return;
  const dir = await tempDir("mirror-full");
  const mirrors = `${dir}/mirrors`;
  await Deno.mkdir(mirrors, { mode: 0o700 });
  await mustExec(["mount", "-t", "tmpfs", "-o", "size=16M,mode=0700", "mirror-full", mirrors]);
  const mirror = `${mirrors}/a1/vol0.img`;
  let gw: Gateway | undefined;
  let agent: Agent | undefined;
  try {
    const secret = `${dir}/agent.secret`;
    await writeSecret(secret);
    gw = await new Gateway({
      dir,
      agents: { a1: secret },
      bufferSize: "96M",
      extra: ["--mirror-dir", mirrors],
    })
      .start();
    const lsp = await sparseImage(`${dir}/vol0.img`, 64 * MiB);
    agent = await new Agent({
      dir,
      id: "a1",
      secretFile: secret,
      gatewaySocket: gw.socket,
      volumes: { vol0: lsp },
    })
      .start();
    await waitFor(() => gw!.status().then((s) => s.agents.includes("a1")), 20_000, "agent to connect");
    // the mirror image exists (sparse); now nothing is left on its filesystem
    await waitFor(() => Deno.stat(mirror).then(() => true), 20_000, "the mirror image");
    const free = Number((await mustExec(["df", "-B1", "--output=avail", mirrors])).trim().split("\n").pop());
    await mustExec(["fallocate", "-l", String(free), `${mirrors}/ballast`]);
    // 8 MiB of new blocks: more than could fit even before the ballast
    const w = startWorkload({ socket: agent.socket, exportName: "vol0", blocks: 2048, maxWrites: 2048 });
    const r = await w.done;
    assert.is(r.error?.message, undefined, "every write was acknowledged");
    assert.is(r.flushed.size, 2048);
    await new Promise((res) => setTimeout(res, 1000));
    const alive = await Promise.race([gw.proc.exited.then(() => false), Promise.resolve(true)]);
    assert.ok(alive, `the gateway is alive while its mirror disk is full:\n${gw.proc.log.slice(-1500)}`);
    assert.match(gw.proc.log, /image disk full: waiting for space/);
    await Deno.remove(`${mirrors}/ballast`);
    await waitMirrorCaughtUp(gw, "a1", "vol0", 60_000);
    await waitEqual(lsp, mirror, 30_000);
    assert.equal(await missingWrites(mirror, r.flushed), []);
  } finally {
    await agent?.proc.stop();
    await gw?.proc.stop();
    await exec(["umount", "-l", mirrors]);
  }
});

t.run();
