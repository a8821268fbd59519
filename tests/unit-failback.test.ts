// The failback sequence without sockets: its order, its refusals, and what a
// failure in the middle leaves (traffic stays at the site, nothing half-switched).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { failback, type FailbackDeps, FailbackError } from "../src/failover/failback.ts";

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
    sleep: () => Promise.resolve(),
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
    sleep: (ms) => (now += ms, Promise.resolve()),
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

t("the running phase is set at once, so a second request meanwhile is refused as running", async () => {
  const phases: (string | undefined)[] = [];
  const { d } = fake({ onPhase: (_n, p) => phases.push(p) });
  const run = failback(d, "web");
  assert.equal(phases, ["online-copy"], "set before the first await");
  await run;
  assert.is(phases[phases.length - 1], undefined, "cleared at the end");
});

t.run();
