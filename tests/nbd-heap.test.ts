// The NBD server's memory per request is bounded: a connection's requests leave nothing
// behind once answered. Regression for the soak's agent growth (181 → 484 MiB in 20
// minutes): each request raced the server's stop and the export's withdrawal with
// Promise.race, which kept a reaction on those long-lived promises per request
// (src/latch.ts). The probe runs in its own process with --expose-gc.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Latch } from "../src/latch.ts";

const t = suite("nbd server heap");
const probe = new URL("./lib/nbd-heap-probe.ts", import.meta.url).pathname;

t(
  "a latch raced many times keeps no waits once they settle; firing settles those still waiting",
  async () => {
    const l = new Latch<"fired">();
    for (let i = 0; i < 10_000; i++) assert.is(await l.race(Promise.resolve(i)), i);
    assert.is(l.waiting, 0);
    const failed = await l.race(Promise.reject(new Error("boom"))).catch((e: Error) => e.message);
    assert.is(failed, "boom");
    assert.is(l.waiting, 0);
    const never = new Promise<number>(() => {});
    const pending = [l.race(never), l.race(never)];
    assert.is(l.waiting, 2);
    l.fire("fired");
    l.fire("fired");
    assert.equal(await Promise.all(pending), ["fired", "fired"]);
    assert.is(l.waiting, 0);
    assert.ok(l.fired);
    assert.is(await l.race(Promise.resolve(1)), "fired", "a fired latch answers at once");
  },
);

t("40000 requests on one connection leave the JS heap (after GC) where it was", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", probe, "40000"],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert.ok(out.success, "the probe ran");
  const r = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!) as {
    before: number;
    after: number;
    perRequest: number;
  };
  console.log(`\n  heap ${(r.before / 2 ** 20).toFixed(1)} → ${(r.after / 2 ** 20).toFixed(1)} MiB`);
  // with the leak it was about 400 bytes a request (15 MiB here); without, noise of a few hundred KiB
  assert.ok(r.perRequest < 40, `${r.perRequest.toFixed(0)} bytes of heap kept per request`);
});

t.run();
