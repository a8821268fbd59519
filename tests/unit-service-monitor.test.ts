// The agent's service monitor: waitHealthy waits for the monitor's own next passing check (no
// second loop polls beside it), counts only a check started after the wait began, and ends with
// the monitor; a service not up yet is failed only after the start grace (a fence ends it), and a
// check may take up to its timeout.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ServiceMonitor } from "../src/health/service-check.ts";

const t = suite("service monitor");

/** A monitor whose check (taking `checkSeconds`) passes while `flag` exists. */
async function monitor(intervalMs = 50, checkSeconds = 0, startGraceMs = 0, timeoutMs?: number) {
  const dir = await Deno.makeTempDir();
  const flag = `${dir}/up`;
  const m = new ServiceMonitor({
    spec: { kind: "exec", command: `sleep ${checkSeconds}; test -f ${flag}` },
    intervalMs,
    failures: 1,
    startGraceMs,
    timeoutMs,
  });
  return {
    m,
    flag,
    up: () => Deno.writeTextFile(flag, ""),
    done: async () => {
      m.stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

t("waitHealthy resolves at the first passing check after the service comes up", async () => {
  const x = await monitor();
  try {
    x.m.start();
    const waited = x.m.waitHealthy(5000);
    let passed = false;
    waited.then(() => passed = true);
    await new Promise((r) => setTimeout(r, 200));
    assert.not.ok(passed, "not healthy while the check fails");
    const up = performance.now();
    await x.up();
    await waited;
    assert.ok(performance.now() - up < 1000, "resolved within a few check periods");
    assert.ok(x.m.healthy);
  } finally {
    await x.done();
  }
});

t("a check already running when the wait began does not count", async () => {
  // each check takes 300 ms; the next starts 500 ms after one ends
  const x = await monitor(500, 0.3);
  try {
    const t0 = performance.now();
    x.m.start(); // the first check runs now and will find the service up
    await x.up();
    await x.m.waitHealthy(5000);
    const ms = performance.now() - t0;
    // the first check passed at ~300 ms but had started before the wait: the wait took the next
    assert.ok(ms >= 750, `resolved by the check after the running one (${Math.round(ms)} ms)`);
  } finally {
    await x.done();
  }
});

t("waitHealthy ends when the monitor stops, and refuses once stopped", async () => {
  const x = await monitor();
  try {
    x.m.start();
    const waited = x.m.waitHealthy(60_000).then(() => undefined, (e) => e as Error);
    x.m.stop();
    assert.match((await waited)?.message ?? "", /stopped/);
    const after = await x.m.waitHealthy(1000).then(() => undefined, (e) => e as Error);
    assert.match(after?.message ?? "", /stopped/);
  } finally {
    await x.done();
  }
});

t("a service that has not come up yet fails only after the start grace; once up, at once", async () => {
  const x = await monitor(50, 0, 600);
  try {
    x.m.start();
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(x.m.healthy, "within the grace a failing check is a service still starting");
    assert.match(x.m.detail, /^not up yet: /);
    await new Promise((r) => setTimeout(r, 600));
    assert.not.ok(x.m.healthy, "past the grace it counts as failed");
    assert.match(x.m.detail, /^failed: exit code 1/);
  } finally {
    await x.done();
  }
  const y = await monitor(50, 0, 60_000);
  try {
    await y.up();
    y.m.start();
    await y.m.waitHealthy(5000);
    await Deno.remove(y.flag);
    await new Promise((r) => setTimeout(r, 300));
    assert.not.ok(y.m.healthy, "after a first pass the grace no longer applies");
  } finally {
    await y.done();
  }
});

t("a fence ends the start grace: a restarted, fenced agent's service is failed until it passes", async () => {
  const x = await monitor(50, 0, 60_000);
  try {
    x.m.start();
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(x.m.healthy, "within the grace");
    x.m.endGrace();
    await new Promise((r) => setTimeout(r, 300));
    assert.not.ok(x.m.healthy, "after a fence the failures count");
    await x.up();
    await x.m.waitHealthy(5000);
    assert.is(x.m.detail, "ok");
  } finally {
    await x.done();
  }
});

t("a check slower than the interval passes within its timeout, and fails past it", async () => {
  // each check takes 300 ms, every 50 ms
  const slow = await monitor(50, 0.3, 0, 1000);
  try {
    await slow.up();
    slow.m.start();
    await slow.m.waitHealthy(5000);
    await new Promise((r) => setTimeout(r, 700));
    assert.ok(slow.m.healthy, "a busy service that answers within the timeout is healthy");
    assert.is(slow.m.detail, "ok");
  } finally {
    await slow.done();
  }
  const hung = await monitor(50, 0.3, 0, 100);
  try {
    await hung.up();
    hung.m.start();
    await new Promise((r) => setTimeout(r, 500));
    assert.not.ok(hung.m.healthy, "past its timeout a check fails");
    assert.match(hung.m.detail, /no answer within 100 ms/);
  } finally {
    await hung.done();
  }
});

t.run();
