// One slow site (bandwidth-limited) and one fast: the fast one keeps up; with
// `block` the journal holds records for the slow one; with `pull-ahead` the slow
// one becomes degraded, then consistent again with equal bytes.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { hashAll, type SiteStatus, startTopology } from "./lib/cluster.ts";

const t = suite("replication: a slow site");
const MiB = 1024 * 1024;

function fio(uri: string, seconds: number): Deno.ChildProcess {
  return new Deno.Command("fio", {
    args: [
      "--name=slow",
      "--ioengine=nbd",
      `--uri=${uri}`,
      "--rw=randwrite",
      "--bs=64k",
      "--iodepth=8",
      "--size=8M",
      "--time_based",
      `--runtime=${seconds}`,
      "--verify_state_save=0",
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
}

async function sample(topo: Awaited<ReturnType<typeof startTopology>>) {
  const s = await topo.gw.status();
  const sites = (s as unknown as { sites: SiteStatus[] }).sites;
  return {
    used: s.journal.used,
    fast: sites.find((x) => x.site === "dr1")!,
    slow: sites.find((x) => x.site === "dr2")!,
  };
}

t("block: the fast site keeps up while the journal holds records for the slow one", async () => {
  if (!need("slow site", { tools: ["fio"] })) return;
  const topo = await startTopology("rep-block", {
    size: 64 * MiB,
    sites: ["dr1", "dr2"],
    gatewayExtra: ["--remote-bandwidth", "dr2=4M", "--buffer-size", "80M"],
  });
  try {
    const w = fio(topo.agent.uri("vol0"), 8);
    let held = 0, fastLag = 0, slowLag = 0;
    while (
      (await Promise.race([
        w.status.then(() => true),
        new Promise((r) => setTimeout(() => r(false), 500)),
      ])) === false
    ) {
      const s = await sample(topo);
      held = Math.max(held, s.used);
      fastLag = Math.max(fastLag, s.fast.lagSeconds);
      slowLag = Math.max(slowLag, s.slow.lagSeconds);
    }
    console.log(
      `\n  journal held up to ${(held / MiB).toFixed(1)} MiB; lag: fast ${fastLag.toFixed(2)} s, slow ${
        slowLag.toFixed(2)
      } s`,
    );
    assert.ok(held > 16 * MiB, "the journal held records for the slow site");
    assert.ok(fastLag < 1.5, `the fast site kept up (max lag ${fastLag}s)`);
    assert.ok(slowLag > fastLag, "the slow site lagged");
    await topo.caughtUp(180_000);
    const sums = await hashAll(topo.copies());
    for (const [k, v] of Object.entries(sums)) assert.is(v, sums.lsp, `${k} equals the agent's volume`);
    assert.is((await topo.gw.status()).journal.used, 0);
  } finally {
    await topo.stop();
  }
});

t("pull-ahead: the slow site becomes degraded, later consistent with equal bytes", async () => {
  if (!need("slow site", { tools: ["fio"] })) return;
  const topo = await startTopology("rep-pull", {
    size: 64 * MiB,
    sites: ["dr1", "dr2"],
    gatewayExtra: ["--remote-bandwidth", "dr2=2M", "--buffer-size", "80M", "--congestion", "pull-ahead"],
  });
  try {
    const w = fio(topo.agent.uri("vol0"), 10);
    let degraded = false;
    while (
      (await Promise.race([
        w.status.then(() => true),
        new Promise((r) => setTimeout(() => r(false), 300)),
      ])) === false
    ) {
      const s = await sample(topo);
      if (s.slow.volumes[0].state !== "consistent") degraded = true;
    }
    assert.ok(degraded, "the slow site was degraded at some point");
    assert.match(topo.gw.proc.log, /pulling ahead/);
    await topo.caughtUp(180_000);
    const s = await sample(topo);
    assert.is(s.slow.volumes[0].state, "consistent");
    const sums = await hashAll(topo.copies());
    for (const [k, v] of Object.entries(sums)) assert.is(v, sums.lsp, `${k} equals the agent's volume`);
  } finally {
    await topo.stop();
  }
});

t.run();
