// The failback sequence without sockets: its order, its refusals, and what a
// failure in the middle leaves (traffic stays at the site, nothing half-switched).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { failback, type FailbackDeps, FailbackError } from "../src/failover/failback.ts";
import { Liveness } from "../src/failover/liveness.ts";

const t = suite("unit: failback");

function fake(over: Partial<FailbackDeps> = {}) {
  const steps: string[] = [];
  let healthyAfter = 2;
  const d: FailbackDeps = {
    service: (name) => name === "web" ? { agent: "a1", site: "dr1", failedOver: true } : undefined,
    volumes: () => ["a1/v0", "a1/v1"],
    hostUnready: () => undefined,
    serviceUnhealthy: () => healthyAfter-- > 0 ? "check failing" : undefined,
    onlineCopy: (v) => (steps.push(`online ${v}`), Promise.resolve({ bytesMoved: 10 })),
    demote: (site, agent) => (steps.push(`demote ${agent}@${site}`), Promise.resolve()),
    finalCopy: (v) => (steps.push(`final ${v}`), Promise.resolve({ bytesMoved: 1 })),
    unfence: (agent) => (steps.push(`unfence ${agent}`), Promise.resolve()),
    switchBack: (name) => (steps.push(`switch ${name}`), Promise.resolve()),
    record: (e) => (steps.push(`audit ${e.to}`), Promise.resolve()),
    healthChanged: () => Promise.resolve(),
    ...over,
  };
  return { d, steps };
}

t("online copy, freeze the site, final copy, unfence, wait for health, then switch", async () => {
  const { d, steps } = fake();
  const r = await failback(d, "web");
  assert.equal(steps, [
    "audit online-copy",
    "online a1/v0",
    "online a1/v1",
    "demote a1@dr1",
    "final a1/v0",
    "final a1/v1",
    "unfence a1",
    "switch web",
    "audit done",
  ]);
  assert.is(r.onlineBytes, 20);
  assert.is(r.finalBytes, 2);
  assert.ok(r.windowMs >= 0);
});

t("refused before anything moves: unknown service, not failed over, local server not ready", async () => {
  for (
    const [over, name, status, text] of [
      [{}, "nope", 404, /no protected service/],
      [{ service: () => ({ agent: "a1", site: "dr1", failedOver: false }) }, "web", 409, /not failed over/],
      [{ hostUnready: () => "a1 is SUSPECT" }, "web", 409, /not ready \(a1 is SUSPECT\)/],
    ] as [Partial<FailbackDeps>, string, number, RegExp][]
  ) {
    const { d, steps } = fake(over);
    const e = await failback(d, name).catch((x) => x);
    assert.instance(e, FailbackError);
    assert.is(e.status, status);
    assert.match(e.message, text);
    assert.equal(steps, [], "nothing happened");
  }
});

t("a failure in the window leaves the traffic at the site and says so in the audit log", async () => {
  const { d, steps } = fake({ finalCopy: () => Promise.reject(new Error("site lost")) });
  const e = await failback(d, "web").catch((x) => x);
  assert.match(e.message, /site lost/);
  assert.not.ok(steps.includes("switch web"), "no switch");
  assert.not.ok(steps.includes("unfence a1"), "the local server stays fenced");
  assert.is(steps[steps.length - 1], "audit stopped");
});

t("a local service that never turns healthy keeps the traffic at the site", async () => {
  let now = 0;
  const { d, steps } = fake({
    serviceUnhealthy: () => "connection refused",
    healthyWithinMs: 1000,
    healthChanged: (_agent, ms) => (now += ms, Promise.resolve()),
  });
  const realNow = performance.now;
  performance.now = () => now;
  try {
    const e = await failback(d, "web").catch((x) => x);
    assert.match(e.message, /did not turn healthy \(connection refused\); traffic still goes to dr1/);
    assert.not.ok(steps.includes("switch web"));
  } finally {
    performance.now = realNow;
  }
});

t("the wait for the local service's health wakes on its heartbeats, not on a poll", async () => {
  let looks = 0;
  let healthy = false;
  const beats: (() => void)[] = [];
  const { d, steps } = fake({
    serviceUnhealthy: () => (looks++, healthy ? undefined : "check failing"),
    healthChanged: () => new Promise((r) => beats.push(r)),
  });
  const run = failback(d, "web");
  await new Promise((r) => setTimeout(r, 300));
  assert.is(looks, 1, "looked at once, then waited for a heartbeat");
  assert.not.ok(steps.includes("switch web"));
  // a heartbeat of a still failing service, then one of a healthy one
  beats.shift()!();
  await new Promise((r) => setTimeout(r, 0));
  assert.is(looks, 2);
  healthy = true;
  beats.shift()!();
  await run;
  assert.is(looks, 3);
  assert.ok(steps.includes("switch web"));
});

t("Liveness.changed resolves at the agent's next heartbeat, or at its bound", async () => {
  const live = new Liveness({
    settings: { mode: "chen", etaMs: 100, alphaMs: 50, window: 10, phiSuspect: 3, phiFailure: 8 },
    audit: { record: () => Promise.resolve() },
  });
  try {
    const meta = { boot: 1n, newBoot: false, peer: "10.0.0.2:7001" };
    let other = false, mine = false;
    live.changed("a2", 10_000).then(() => other = true);
    const at = performance.now();
    const wait = live.changed("a1", 10_000).then(() => mine = true);
    live.heartbeat("a1", 1, { healthy: true, detail: "" }, performance.now(), meta);
    await wait;
    assert.ok(mine && performance.now() - at < 1000, "woken by the heartbeat");
    assert.not.ok(other, "another agent's wait goes on");
    const t0 = performance.now();
    await live.changed("a1", 30);
    assert.ok(performance.now() - t0 >= 25, "bounded by its time");
  } finally {
    live.close();
  }
});

t("the running phase is set at once, so a second request meanwhile is refused as running", async () => {
  const phases: (string | undefined)[] = [];
  const { d } = fake({ onPhase: (_n, p) => phases.push(p) });
  const run = failback(d, "web");
  assert.equal(phases, ["online-copy"], "set before the first await");
  await run;
  assert.is(phases[phases.length - 1], undefined, "cleared at the end");
});

t.run();
