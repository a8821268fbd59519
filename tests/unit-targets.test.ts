// QoS targets: given with a --service (td, tmr, tm, rto, rpo) or with a task (API, wizard),
// checked with clear messages; a task's own win over its service's; an agent's detection targets
// are the strictest of its started tasks' and services'.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { parseService } from "../src/failover/service-spec.ts";
import { describeIssues, type Task, taskInputSchema, zodIssues } from "../src/tasks/model.ts";
import { detectionTargets, taskTargets } from "../src/tasks/targets.ts";
import { strictest } from "../src/failover/detector-qos.ts";
import type { TaskStore } from "../src/tasks/store.ts";
import { taskFixture } from "./lib/task-fixture.ts";

const t = suite("targets");
const base = "agent:app1,address:10.1.1.1:80,site:dr1,target:10.3.3.2:8080";

t("a --service's targets: durations with units; all three detection targets or none", () => {
  const s = parseService("web", `${base},td:1500ms,tmr:30d,tm:2s,rto:1m,rpo:5s`);
  assert.equal(s.targets, {
    detection: { detectionMs: 1500, mistakeRecurrenceMs: 30 * 86_400_000, mistakeDurationMs: 2000 },
    rtoMs: 60_000,
    rpoMs: 5000,
  });
  assert.is(parseService("web", base).targets, undefined);
  assert.equal(parseService("web", `${base},rpo:0`).targets, { rpoMs: 0 });
  assert.throws(() => parseService("web", `${base},td:1s`), /--service web: td, tmr and tm go together/);
  assert.throws(() => parseService("web", `${base},rto:soon`), /--service web: rto:soon is not a duration/);
  assert.throws(
    () => parseService("web", `${base},td:1s,tmr:1s,tm:2s`),
    /--service web: detection\.mistakeDurationMs: mistakeDurationMs must be less than mistakeRecurrenceMs/,
  );
});

t("a task's targets in its body: each field checked and named", () => {
  const body = (targets: unknown) => ({ name: "db", group: taskFixture().group, targets });
  const issues = (targets: unknown) => {
    const r = taskInputSchema.safeParse(body(targets));
    return r.success ? "" : describeIssues(zodIssues(r.error));
  };
  assert.is(issues({ rtoMs: 30_000, rpoMs: 0 }), "");
  assert.is(issues(undefined), "");
  assert.is(issues({ rtoMs: -1 }), "targets.rtoMs: must be more than 0 ms");
  assert.is(issues({ rpoMs: "5s" }), "targets.rpoMs: must be a number of milliseconds");
  assert.is(
    issues({ detection: { detectionMs: 1000 } }),
    "targets.detection.mistakeRecurrenceMs: is required; targets.detection.mistakeDurationMs: is required",
  );
  assert.is(issues({ soon: 1 }), "targets: unknown field(s): soon");
  assert.is(issues({ rtoMs: 8 * 86_400_000 }), "targets.rtoMs: must be at most one week");
});

const task = (name: string, state: Task["state"], targets: Task["targets"], service?: string): Task =>
  taskFixture({
    name,
    state,
    lspDevice: `/dev/${name}`,
    ...(service ? { service } : {}),
    ...(targets ? { targets } : {}),
  });

t(
  "a task's own targets win over its service's; an agent gets the strictest of its tasks' and services'",
  async () => {
    const svc = parseService("web", `${base},td:2s,tmr:1h,tm:1s,rto:5m,rpo:10s`);
    assert.equal(taskTargets(task("db", "protected", { rpoMs: 1000 }, "web"), [svc]), {
      detection: svc.targets!.detection,
      rtoMs: 300_000,
      rpoMs: 1000,
    });
    const d = (detectionMs: number, mistakeRecurrenceMs: number, mistakeDurationMs: number) => ({
      detection: { detectionMs, mistakeRecurrenceMs, mistakeDurationMs },
    });
    const store = {
      listTasks: () =>
        Promise.resolve([
          task("a", "protected", d(1000, 60_000, 3000)),
          task("b", "degraded", d(3000, 600_000, 500)),
          task("c", "configured", d(100, 10 ** 9, 10)), // not started: not watched yet
        ]),
      listHosts: () => Promise.resolve([{ name: "app1", site: "prod", role: "application", agent: "a1" }]),
      listVolumes: () =>
        Promise.resolve(
          ["a", "b", "c"].map((n) => ({ name: n, host: "app1", device: `/dev/${n}`, size: 512 })),
        ),
    } as unknown as TaskStore;
    const m = await detectionTargets(store, [{ ...svc, agent: "a1" }]);
    assert.equal([...m.keys()], ["a1"]);
    assert.equal(m.get("a1"), {
      targets: { detectionMs: 1000, mistakeRecurrenceMs: 3_600_000, mistakeDurationMs: 500 },
      from: ["service web", "task a", "task b"],
    });
    assert.equal(
      strictest(undefined, { targets: d(1, 2, 3).detection, from: ["x"] }),
      { targets: d(1, 2, 3).detection, from: ["x"] },
    );
    assert.equal((await detectionTargets(undefined, [svc])).get("app1")?.from, ["service web"]);
  },
);

t.run();
