// Wall-clock steps on a running local gateway (libfaketime, as the fault runner steps a host's
// clock): the site link's idle timeout, the bandwidth limit's token bucket and the lag follow
// the monotonic clock. Regression: with Date.now() a step back put a bandwidth-limited sender
// in token debt for the length of the step (a stall of minutes), and a step forward made an
// idle site link look silent for longer than its timeout, so it was dropped.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { run, startTopology } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { faketimeEnv, faketimeLoaded, setClockOffset } from "./lib/faketime.ts";

const t = suite("clock steps on the local gateway");
const MiB = 1024 * 1024;

t("a step back does not stall a limited link; a step forward does not drop an idle one", async () => {
  if (!need("clock step", { tools: ["faketime", "qemu-io"] })) return;
  const control = `${await Deno.makeTempDir({ prefix: "clock-step-" })}/clock`;
  await setClockOffset(control, 0);
  const topo = await startTopology("clock-step", {
    size: 64 * MiB,
    sites: ["dr1"],
    gatewayExtra: ["--remote-bandwidth", "dr1=8M"],
    gatewayEnv: faketimeEnv(control),
  });
  const write = (at: number) =>
    run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", `write -P 0x5c ${at}M 8M`, "-c", "flush"]);
  const dropped = () =>
    topo.gw.proc.records().filter((r) => r.msg === "no answer from the remote site: reconnecting");
  try {
    assert.ok(await faketimeLoaded(topo.gw.proc.pid), "the gateway's clock is under control");
    await write(0);
    await topo.caughtUp(30_000);

    // back by ten minutes (libfaketime re-reads its file every second)
    await setClockOffset(control, -600);
    await new Promise((r) => setTimeout(r, 1500));
    const t0 = performance.now();
    await write(8);
    // 8 MiB at 8 MB/s is about a second; the token debt of a wall-clock bucket was ten minutes
    await topo.caughtUp(20_000);
    const secs = (performance.now() - t0) / 1000;
    assert.ok(secs < 20, `caught up in ${secs.toFixed(1)} s`);
    for (const s of await topo.sites()) {
      assert.ok(s.lagSeconds < 60, `lag ${s.lagSeconds} s is not skewed by the step`);
    }

    // forward by fifteen minutes while the link is idle: it stays up
    await setClockOffset(control, 900);
    await new Promise((r) => setTimeout(r, 4000));
    assert.equal(dropped(), [], "the site link was not dropped as idle");
    assert.ok((await topo.sites()).every((s) => s.connected), "the site is connected");
    await write(16);
    await topo.caughtUp(20_000);
  } finally {
    await topo.stop();
    await Deno.remove(control.replace(/\/clock$/, ""), { recursive: true }).catch(() => {});
  }
});

t.run();
