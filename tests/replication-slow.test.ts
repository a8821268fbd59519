// One slow site (bandwidth-limited) and one fast: the fast one keeps up; with
// `block` the journal holds records for the slow one; with `pull-ahead` the slow
// one becomes degraded, then consistent again with equal bytes; with `--max-lag`
// the writes slow to the slow site's pace and its lag stays within the bound (its
// allowance: what it acknowledges in half the bound).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { hashAll, run, type SiteStatus, startTopology } from "./lib/cluster.ts";

const t = suite("replication: a slow site");
const MiB = 1024 * 1024;

function fio(uri: string, seconds: number, bs = "64k", iodepth = 8): Deno.ChildProcess {
  return new Deno.Command("fio", {
    args: [
      "--name=slow",
      "--ioengine=nbd",
      `--uri=${uri}`,
      "--rw=randwrite",
      `--bs=${bs}`,
      `--iodepth=${iodepth}`,
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
    slow: sites.find((x) => x.site === "dr2")! as SiteStatus & { paceBytes: number },
  };
}

/** Runs `each` every `everyMs` until the fio process ends. */
async function whileRunning(w: Deno.ChildProcess, everyMs: number, each: () => Promise<void>): Promise<void> {
  while (
    (await Promise.race([
      w.status.then(() => true),
      new Promise((r) => setTimeout(() => r(false), everyMs)),
    ])) === false
  ) await each();
}

/** Two sites under a 0.5 s lag bound, dr2 behind a 4 MiB/s link. */
async function boundedTopology(prefix: string) {
  const topo = await startTopology(prefix, {
    size: 64 * MiB,
    sites: ["dr1", "dr2"],
    proxied: ["dr2"],
    gatewayExtra: ["--buffer-size", "80M", "--max-lag", "500ms"],
  });
  topo.proxies.dr2.rateBps = 4 * MiB;
  return topo;
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
    let held = 0;
    const fastLags: number[] = [], slowLags: number[] = [], usedMiB: number[] = [];
    await whileRunning(w, 500, async () => {
      const s = await sample(topo);
      held = Math.max(held, s.used);
      fastLags.push(s.fast.lagSeconds);
      slowLags.push(s.slow.lagSeconds);
      usedMiB.push(s.used / MiB);
    });
    // the median: on a loaded machine a sample can catch the fast site's processes waiting for a core
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const fastLag = median(fastLags), slowLag = median(slowLags);
    console.log(
      `\n  journal held up to ${(held / MiB).toFixed(1)} MiB; median lag: fast ${
        fastLag.toFixed(2)
      } s (at most ${Math.max(...fastLags).toFixed(2)}), slow ${slowLag.toFixed(2)} s`,
    );
    // each sample, to tell a slow catch-up after the ring filled from a site that fell behind later
    const series = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(" ");
    console.log(`  fast site's lag (s): ${series(fastLags)}\n  journal used (MiB): ${series(usedMiB)}`);
    assert.ok(held > 16 * MiB, "the journal held records for the slow site");
    assert.ok(fastLag < 1, `the fast site kept up (median lag ${fastLag}s)`);
    assert.ok(slowLag > 2 * fastLag, "the slow site lagged");
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
    await whileRunning(w, 300, async () => {
      const s = await sample(topo);
      if (s.slow.volumes[0].state !== "consistent") degraded = true;
    });
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

t(
  "max-lag: the writes slow to a slow site's pace, its lag stays near the bound; a silent site is not waited for",
  async () => {
    if (!need("slow site", { tools: ["fio", "qemu-io"] })) return;
    const topo = await boundedTopology("rep-max-lag");
    try {
      const w = fio(topo.agent.uri("vol0"), 8);
      const t0 = performance.now();
      let held = 0, slowLag = 0, paced = false;
      await whileRunning(w, 250, async () => {
        const s = await sample(topo);
        paced ||= s.slow.paceBytes > 0;
        // the first second: the rate is being measured, the first allowance is a guess
        if (performance.now() - t0 < 1000) return;
        held = Math.max(held, s.used);
        slowLag = Math.max(slowLag, s.slow.lagSeconds);
      });
      console.log(
        `\n  journal held up to ${(held / MiB).toFixed(1)} MiB; slow site's lag at most ${
          slowLag.toFixed(2)
        } s`,
      );
      assert.ok(paced, "the slow site was paced");
      assert.ok(slowLag < 1, `the slow site's lag stayed near the 0.5 s bound (at most ${slowLag} s)`);
      assert.ok(held < 16 * MiB, `the journal held little (${held} bytes; without the bound it fills)`);
      await topo.caughtUp(60_000);

      // the link goes silent: the writes wait for it at most a few seconds, not the link's 10 s timeout
      topo.proxies.dr2.cut();
      const started = performance.now();
      await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x5a 0 24M", "-c", "flush"]);
      const took = (performance.now() - started) / 1000;
      console.log(`  24 MiB written in ${took.toFixed(1)} s with the slow site's link silent`);
      assert.ok(took < 7, `a silent site is not waited for (${took} s)`);
      topo.proxies.dr2.heal();
      await topo.caughtUp(120_000);
      const sums = await hashAll(topo.copies());
      for (const [k, v] of Object.entries(sums)) assert.is(v, sums.lsp, `${k} equals the agent's volume`);
    } finally {
      await topo.stop();
    }
  },
);

t(
  "max-lag: a slow site taking 1 MiB records one at a time is measured; its allowance is half the bound's worth",
  async () => {
    if (!need("slow site", { tools: ["fio"] })) return;
    // at 4 MiB/s a 1 MiB record takes 250 ms to cross, more than the 256 KiB floor lets out at once
    const topo = await boundedTopology("rep-max-lag-1m");
    try {
      const w = fio(topo.agent.uri("vol0"), 6, "1M", 1);
      const paces: number[] = [];
      await whileRunning(w, 250, async () => {
        paces.push((await sample(topo)).slow.paceBytes);
      });
      console.log(`\n  the slow site's allowance: ${paces.map((p) => (p / MiB).toFixed(2)).join(" ")} MiB`);
      // measured, its allowance is its rate × half the bound: under 1 MiB through this link (the floor
      // is 256 KiB; the whole bound's worth, 1.7–2.1 MiB here, let its lag run past the bound)
      assert.ok(paces.some((p) => p > 512 * 1024), "the slow site was measured");
      assert.ok(paces.every((p) => p < 1.25 * MiB), "the allowance is what it takes in half the bound");
      await topo.caughtUp(60_000);
    } finally {
      await topo.stop();
    }
  },
);

t.run();
