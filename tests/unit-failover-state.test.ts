// Regression (found by the fault runner, tests/faults/): the failover controller
// records "failed-over" before it applies the DNAT rule (so a crash in between is
// repaired at start), and its status reported "failed-over" from that moment: a
// client of the API was told traffic had moved while the rule was not there yet. Now
// the status says "failing-over" until the switch is complete.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { FailoverController } from "../src/failover/controller.ts";
import { parseService } from "../src/failover/service-spec.ts";
import { openDatabase } from "../src/db/db.ts";
import type { Audit } from "../src/audit/audit.ts";

const t = suite("failover controller: reported state");

t("the state is failed-over only once the switch is complete", async () => {
  const dir = await Deno.makeTempDir({ prefix: "fo-state-" });
  const opened = await openDatabase(`file:${dir}/g.db`);
  // the step after the state is recorded (here: the audit of the completed switch) is held open
  let release!: () => void;
  const held = new Promise<void>((r) => release = r);
  let holding = false;
  const audit = {
    record: async (e: { to?: string }) => {
      if (e.to === "failed-over") {
        holding = true;
        await held;
      }
    },
  } as unknown as Audit;
  try {
    const c = new FailoverController({
      db: opened.db,
      audit,
      services: [parseService("web", "agent:app1,address:10.1.1.1:80,site:dr1,target:10.3.3.2:8080")],
      promote: async () => {},
      fence: () => {},
      unfence: () => {},
      unhealthy: () => undefined,
      manageRules: false,
    });
    await c.start();
    assert.is(c.status()[0].state, "protected");
    const done = c.failover("web", "test");
    while (!holding) await new Promise((r) => setTimeout(r, 5));
    assert.is(c.status()[0].state, "failing-over", "not announced while the switch is still being made");
    release();
    await done;
    assert.is(c.status()[0].state, "failed-over");
    assert.is(c.status()[0].rule, true);
  } finally {
    opened.close();
    await Deno.remove(dir, { recursive: true });
  }
});

t("a failed automatic failover is tried again until it succeeds", async () => {
  const dir = await Deno.makeTempDir({ prefix: "fo-retry-" });
  const opened = await openDatabase(`file:${dir}/g.db`);
  const causes: string[] = [];
  const audit = {
    record: (e: { cause: string }) => Promise.resolve(void causes.push(e.cause)),
  } as unknown as Audit;
  let attempts = 0;
  const fenced = new Set<string>();
  const options = {
    db: opened.db,
    audit,
    services: [parseService("web", "agent:app1,address:10.1.1.1:80,site:dr1,target:10.3.3.2:8080")],
    promote: () =>
      // the site's link is down for the first two attempts (as when it dropped at the failure)
      ++attempts <= 2 ? Promise.reject(new Error("the connection to site dr1 was lost")) : Promise.resolve(),
    fence: (agent: string) => void fenced.add(agent),
    unfence: (agent: string) => void fenced.delete(agent),
    unhealthy: () => "no heartbeats",
    manageRules: false,
  };
  const c = new FailoverController(options);
  try {
    await c.start();
    c.failoverAutomatically("web", "agent app1 failed (no heartbeats)");
    const deadline = Date.now() + 10_000;
    while (c.status()[0].state !== "failed-over" && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.is(c.status()[0].state, "failed-over", `after ${attempts} attempts`);
    assert.is(attempts, 3);
    assert.ok(fenced.has("app1"), "the old primary stays fenced");
    assert.equal(causes.filter((x) => x.startsWith("failover failed")).length, 2);
  } finally {
    c.close();
    opened.close();
    await Deno.remove(dir, { recursive: true });
  }
});

t("a failover interrupted by a restart is resumed; a failback stops the retries", async () => {
  const dir = await Deno.makeTempDir({ prefix: "fo-resume-" });
  const opened = await openDatabase(`file:${dir}/g.db`);
  const audit = { record: async () => {} } as unknown as Audit;
  let attempts = 0;
  let healthy = false;
  const options = (promote: () => Promise<void>) => ({
    db: opened.db,
    audit,
    services: [parseService("web", "agent:app1,address:10.1.1.1:80,site:dr1,target:10.3.3.2:8080")],
    promote,
    fence: () => {},
    unfence: () => {},
    unhealthy: () => healthy ? undefined : "no heartbeats",
    manageRules: false,
  });
  try {
    // the first process fails over and stops before the site answered
    const first = new FailoverController(options(() => new Promise<void>(() => {})));
    await first.start();
    void first.failover("web", "test");
    while (first.status()[0].state !== "failing-over") await new Promise((r) => setTimeout(r, 5));
    first.close();
    // the next one finds it failing over and resumes it; the site now refuses
    const second = new FailoverController(options(() => {
      attempts++;
      return Promise.reject(new Error("standby not healthy"));
    }));
    await second.start();
    assert.is(second.status()[0].state, "failing-over");
    second.resumeInterrupted();
    while (attempts < 1) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 200)); // the attempt's failure recorded, its retry pending
    // the operator fails back: the retry pending must not fail over again behind it
    healthy = true;
    await second.failback("web", "operator");
    await new Promise((r) => setTimeout(r, 2500));
    assert.is(attempts, 1, "no attempt after the failback");
    assert.is(second.status()[0].state, "protected");
    second.close();
  } finally {
    opened.close();
    await Deno.remove(dir, { recursive: true });
  }
});

t.run();
