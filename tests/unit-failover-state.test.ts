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

t.run();
