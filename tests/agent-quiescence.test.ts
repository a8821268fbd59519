// A captured volume's quiescence (native/capture.c cvol_wait_quiet), what a demoted standby waits
// for before its copies change hands: not while the link is down, at once when it comes up (the
// wait is woken, not left to run out), not again once the gateway is gone.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Gateway, tempDir, writeSecret } from "./lib/cluster.ts";
import { NativeAgent } from "../src/capture/native-agent.ts";
import { Volume } from "../src/volume/volume.ts";
import { readSecretFile } from "../src/wire/secret-file.ts";

const t = suite("agent: a volume's quiescence");

t(
  "quiescent only with the link up and everything durable at the gateway, and the wait is woken",
  async () => {
    const dir = await tempDir("agent-quiet");
    await writeSecret(`${dir}/a1.secret`);
    const secret = readSecretFile(`${dir}/a1.secret`);
    const gw = await new Gateway({ dir, agents: { a1: `${dir}/a1.secret` } }).start();
    const agent = new NativeAgent({
      gateway: { transport: "unix", path: gw.socket },
      agent: "a1",
      secret,
      onGatewayLoss: "track",
      gatewayTimeoutMs: 5000,
      maxUnconfirmedBytes: 1 << 20,
    });
    const img = Volume.createSparse(`${dir}/vol0.img`, 4 << 20);
    try {
      const pv = await agent.addVolume(
        { linkId: 1, name: "vol0", fd: img.fd, size: 4 << 20 },
        { path: `${dir}/vol0.dirty`, chunk: 1 << 20, mode: "unknown" },
        (e) => {
          throw e;
        },
      );
      assert.is(await pv.quiescence(200), false, "not while the link is down");
      const waiting = pv.quiescence(20_000);
      const t0 = performance.now();
      agent.start();
      await pv.opened;
      assert.is(await waiting, true, "quiescent once the link is up and the resend done");
      assert.ok(performance.now() - t0 < 5000, `woken, not left to run out (${performance.now() - t0} ms)`);
      await gw.proc.stop();
      assert.is(await pv.quiescence(3000), false, "not once the gateway is gone");
    } finally {
      await agent.close();
      img.close();
      await gw.proc.stop(); // again after the test's own stop: it resolves with the same status
      await Deno.remove(dir, { recursive: true });
    }
  },
);

t.run();
