// A task's mirror strategy (M) takes effect on its volume, at start and when the task is changed
// (no restart): the bandwidth limit bounds the site's throughput, compression sends fewer bytes
// and the copies stay equal, the acknowledgement point decides whether the site's
// acknowledgement waits for its standby, and pull-ahead with a buffer bound lets the writers go
// on while the site falls behind (its copy degraded, then brought level).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { waitFor } from "./lib/cluster.ts";
import { MiB, startLab } from "./lib/control-plane-lab.ts";
import type { Mirror } from "../src/tasks/model.ts";

const t = suite("control-plane-mirror");
const KiB = 1024;

t("a task's mirror strategy applies to its volume, and changes apply live", async () => {
  if (!need("control plane with real processes", { tools: ["qemu-io"] })) return;
  const lab = await startLab("cp-mirror");
  const { c, gw, remote, standby } = lab;
  const setMirror = async (m: Mirror) => {
    const task = await c.expect(200, "GET", "/api/tasks/db") as Record<string, unknown>;
    await c.expect(200, "PUT", "/api/tasks/db", {
      description: task.description,
      group: task.group,
      recovery: task.recovery,
      mirror: m,
    });
  };
  const bandwidthIs = (bps: number) =>
    waitFor(
      async () => (await lab.sites())[0].bandwidth === bps,
      10_000,
      `the site's bandwidth to be ${bps}`,
    );
  const ackIs = (ack: string) =>
    waitFor(
      async () =>
        ((await remote.status()) as unknown as { replicas: { name: string; ack: string }[] }).replicas
          .find((r) => r.name === "vol0")?.ack === ack,
      10_000,
      `the site to acknowledge vol0 at ${ack}`,
    );
  const timed = async (fn: () => Promise<void>) => {
    const t0 = Date.now();
    await fn();
    return Date.now() - t0;
  };
  try {
    const base: Mirror = { ackPoint: "rgp", congestion: "block", bandwidthLimit: MiB, compression: false };
    await lab.createTask("db", base);
    await c.expect(200, "POST", "/api/tasks/db/actions/start");
    await waitFor(
      async () => (await lab.taskState("db")) === "protected",
      60_000,
      "the task to be protected",
      250,
    );

    // the task's bandwidth limit is the site's sender's: 3 MiB take at least 2 s (1 s banked)
    await bandwidthIs(MiB);
    const limited = await timed(async () => {
      await lab.write("write -P 0x6b 0 3M");
      await lab.siteCaughtUp("the limited site to catch up");
    });
    assert.ok(limited >= 1800, `3 MiB at 1 MiB/s arrived in ${limited} ms`);

    // changed live: no limit, compressed; a compressible write costs the link little, and every
    // copy still equals the LSP (records inflated and verified at the site)
    await setMirror({ ...base, bandwidthLimit: 0, compression: true });
    await bandwidthIs(0);
    const before = (await lab.sites())[0].ackedBytes;
    const fast = await timed(async () => {
      await lab.write("write -P 0x11 0 8M");
      await lab.siteCaughtUp("the site to catch up without a limit");
    });
    assert.ok(fast < 6000, `8 MiB without a limit took ${fast} ms`);
    const sent = (await lab.sites())[0].ackedBytes - before;
    assert.ok(sent < MiB, `8 MiB of a repeated byte sent as ${sent} bytes`);
    await lab.allEqual("every copy to equal the LSP after compressed records");

    // acknowledgement point rgp: the site acknowledges without its standby
    await ackIs("rgp");
    await standby.proc.stop();
    await lab.write("write -P 0x22 8M 1M");
    await lab.siteCaughtUp("the site to acknowledge while its standby is away (rgp)", 20_000);
    // rsp: the acknowledgement waits for the standby
    await setMirror({ ...base, ackPoint: "rsp", bandwidthLimit: 0, compression: true });
    await ackIs("rsp");
    await lab.write("write -P 0x23 9M 1M");
    await new Promise((r) => setTimeout(r, 3000));
    const lastSeq = (await gw.status()).volumes.find((v) => v.name === "vol0")!.lastSeq;
    const held = (await lab.sites())[0].volumes.find((v) => v.name === "vol0")!;
    assert.ok(
      held.ackedSeq < lastSeq,
      `acknowledged ${held.ackedSeq} of ${lastSeq} without the standby (rsp)`,
    );
    await standby.start();
    await lab.siteCaughtUp("the site to acknowledge once the standby is back (rsp)");
    await lab.allEqual("every copy equal with the standby back");

    // pull-ahead with a 1 MiB bound at 256 KiB/s: the writers are not held to the link's pace
    // (4 MiB would take over 10 s when blocking); the site's copy is degraded, then brought level
    await setMirror({
      ackPoint: "rgp",
      congestion: "pull-ahead",
      bufferBound: MiB,
      bandwidthLimit: 256 * KiB,
      compression: false,
    });
    await bandwidthIs(256 * KiB);
    await waitFor(
      async () =>
        (await gw.status()).volumes.some((v) => v.name === "vol0" && (v as { bound?: number }).bound === MiB),
      10_000,
      "the journal bound of vol0",
    );
    const cmds = Array.from({ length: 32 }, (_, i) => `write -P ${0x40 + i} ${i * 128}k 128k`);
    const writing = await timed(() => lab.write(...cmds));
    assert.ok(writing < 6000, `4 MiB written in ${writing} ms: the writers waited for the site`);
    assert.ok(
      gw.proc.records().some((r) => String(r.msg).includes("pulling ahead")),
      "the site pulled ahead",
    );
    const state = (await lab.sites())[0].volumes.find((v) => v.name === "vol0")!.state;
    assert.ok(state === "degraded" || state === "syncing", `the site's copy is ${state}`);
    await setMirror({
      ackPoint: "rgp",
      congestion: "pull-ahead",
      bufferBound: MiB,
      bandwidthLimit: 0,
      compression: false,
    });
    await lab.siteCaughtUp("the site to be level again");
    await lab.allEqual("every copy equal after the pull-ahead");
  } finally {
    await lab.stop();
  }
});

t.run();
