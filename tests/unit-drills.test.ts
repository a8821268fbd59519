// Failover drills without processes: the grade against the targets, the copy's lag (RPO), and the
// drill service with fakes for the site and the test copies: a drill's steps and measurements,
// the history, a refusal, schedules that repeat, cancelling, and drills a restart interrupted.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { copyLag, gradeDrill } from "../src/drills/grade.ts";
import { type Drill, Drills, upTimeoutMs } from "../src/drills/drills.ts";
import { openDatabase } from "../src/db/db.ts";
import { drills as drillsTable } from "../src/db/schema.ts";
import type { Task } from "../src/tasks/model.ts";
import type { TaskStore } from "../src/tasks/store.ts";
import type { AlarmInput } from "../src/alarms/alarm.ts";
import { ActionError } from "../src/tasks/actions.ts";
import { setLogSink } from "../src/log.ts";
import { tempDir, waitFor } from "./lib/cluster.ts";
import { taskFixture } from "./lib/task-fixture.ts";
import type { SiteRequester } from "../src/wire/control.ts";

const g = suite("drill grade");

g("RTO and RPO against the targets; what fails says why; what has no target is noted", () => {
  const up = { serviceUp: true, rtoMs: 4000, rpoMs: 500 };
  assert.equal(gradeDrill(up, { rtoMs: 5000, rpoMs: 1000 }), { passed: true, reasons: [], notes: [] });
  assert.equal(gradeDrill(up, { rtoMs: 3000, rpoMs: 100 }).reasons, [
    "RTO 4.00 s is above the target of 3.00 s",
    "RPO 0.50 s is above the target of 0.10 s",
  ]);
  assert.equal(gradeDrill(up, {}), {
    passed: true,
    reasons: [],
    notes: ["no RTO target: the recovery time is not graded", "no RPO target: the data loss is not graded"],
  });
  const down = gradeDrill({
    serviceUp: false,
    error: "--on-promote exited with code 3",
    rtoMs: null,
    rpoMs: 0,
  }, {
    rtoMs: 5000,
    rpoMs: 1000,
  });
  assert.equal(down.reasons, [
    "the service did not come up on the test copy: --on-promote exited with code 3",
  ]);
  assert.equal(
    gradeDrill({ serviceUp: true, rtoMs: 10, rpoMs: null }, { rpoMs: 1000 }).reasons,
    ["the copy's point is unknown: the RPO cannot be measured"],
  );
});

g(
  "the copy's lag: none when it holds what the gateway held at the start, else since its newest write",
  () => {
    assert.is(copyLag({ copySeq: 10, copyTime: 100, durableSeqAtStart: 10, startWall: 5000 }), 0);
    assert.is(copyLag({ copySeq: 12, copyTime: 100, durableSeqAtStart: 10, startWall: 5000 }), 0);
    assert.is(copyLag({ copySeq: 9, copyTime: 1000, durableSeqAtStart: 10, startWall: 5000 }), 4000);
    assert.is(copyLag({ copySeq: 9, copyTime: 0, durableSeqAtStart: 10, startWall: 5000 }), null);
    assert.is(upTimeoutMs({ rtoMs: 1000 }), 10_000, "at least 10 s");
    assert.is(upTimeoutMs({ rtoMs: 60_000 }), 120_000, "twice the target");
    assert.is(upTimeoutMs({}), 120_000);
  },
);

// ------------------------------------------------------------------ the service, with fakes

const task = (state: Task["state"]): Task => taskFixture({ state, targets: { rtoMs: 5000, rpoMs: 1000 } });

async function service(o: { state?: Task["state"]; up?: Record<string, unknown>; copyTime?: number } = {}) {
  const { db } = await openDatabase(`file:${await tempDir("drills")}/g.db`);
  const calls: string[] = [], alarms: AlarmInput[] = [];
  let state = o.state ?? "protected";
  const copyTime = o.copyTime ?? Date.now() - 2500;
  const store = {
    getTask: () => Promise.resolve(task(state)),
    applyEvent: (_: string, event: string) => {
      calls.push(`event ${event}`);
      state = event === "failover-test" ? "testing" : "protected";
      return Promise.resolve({});
    },
  } as unknown as TaskStore;
  const deps: ConstructorParameters<typeof Drills>[0] = {
    db,
    store,
    alarm: (a) => alarms.push(a),
    tests: {
      begin: (t, v, site, secs) => {
        calls.push(`begin ${t} ${v} ${site} ${secs}`);
        return Promise.resolve({
          task: t,
          site,
          volume: v,
          id: "t1",
          seq: 41,
          time: copyTime,
          export: "nbd://127.0.0.1:1/test-a1-vol0",
          started: 0,
          expires: 0,
        });
      },
      end: (t) => {
        calls.push(`end ${t}`);
        return Promise.resolve(undefined);
      },
    },
    targets: (t) => t.targets ?? {},
    volumeKey: () => Promise.resolve("a1/vol0"),
    site: (_t, _k, requested) => requested ?? "dr1",
    durableSeq: () => 42,
    // a site's answers as the requester gets them (by the request's type)
    request: ((site: string, msg: { type: string }) => {
      calls.push(`${site} ${msg.type}`);
      if (msg.type === "drill-up") {
        return new Promise<unknown>((r) =>
          setTimeout(() => r({ type: msg.type, id: 1, ...(o.up ?? { ok: true, checkMs: 30 }) }), 30)
        );
      }
      return Promise.resolve<unknown>({ type: msg.type, id: 1, ok: true });
    }) as SiteRequester,
    checkEveryMs: 20,
  };
  return { db, deps, drills: new Drills(deps), calls, alarms };
}

const s = suite("drill service");

s(
  "a drill: test copy, service up, grade, service down, copy discarded; a failed grade raises an alarm",
  async () => {
    setLogSink(() => {});
    const { drills, calls, alarms } = await service();
    try {
      const began = await drills.begin("db", { requestedBy: "user ann" });
      assert.is(began.status, "running");
      assert.is(began.site, "dr1");
      const d = await drills.settled(began.id);
      assert.equal(calls, [
        "begin db a1/vol0 dr1 130",
        "event failover-test",
        "dr1 drill-up",
        "dr1 drill-down",
        "end db",
        "event test-done",
      ]);
      assert.is(d.status, "failed", "the copy lacks a write: RPO ≈ 2.5 s above 1 s");
      assert.ok(d.rtoMs! >= 30 && d.rtoMs! < 5000);
      assert.ok(d.rpoMs! >= 2500 && d.rpoMs! < 4000, `${d.rpoMs}`);
      assert.match(d.reasons[0], /^RPO 2\.\d\d s is above the target of 1\.00 s$/);
      assert.equal(d.copy, { seq: 41, time: d.copy!.time, export: "nbd://127.0.0.1:1/test-a1-vol0" });
      assert.equal(d.targets, { rtoMs: 5000, rpoMs: 1000 });
      assert.is(d.requestedBy, "user ann");
      assert.is(alarms.length, 1);
      assert.is(alarms[0].kind, "drill-failed");
      assert.match(alarms[0].summary, /failover drill 1 of task db at site dr1 failed: RPO/);
      assert.equal((await drills.list("db")).map((x) => x.id), [1]);
    } finally {
      drills.close();
      setLogSink((l) => console.error(l));
    }
  },
);

s(
  "a drill within its targets passes; the service's error fails one; a task not protected is refused",
  async () => {
    setLogSink(() => {});
    const ok = await service({ copyTime: Date.now() + 60_000 });
    const dead = await service({
      up: { ok: false, error: "service not healthy within 10000 ms: fetch failed" },
    });
    const busy = await service({ state: "degraded" });
    try {
      const passed = await ok.drills.settled((await ok.drills.begin("db", { requestedBy: "t" })).id);
      assert.is(passed.status, "passed", JSON.stringify(passed));
      assert.is(ok.alarms.length, 0);
      const failed = await dead.drills.settled(
        (await dead.drills.begin("db", { site: "dr1", requestedBy: "t" })).id,
      );
      assert.is(failed.status, "failed");
      assert.is(failed.rtoMs, null);
      assert.equal(
        failed.reasons[0],
        "the service did not come up on the test copy: service not healthy within 10000 ms: fetch failed",
      );
      const refused = await busy.drills.begin("db", { requestedBy: "t" }).catch((e) => e);
      assert.ok(refused instanceof ActionError && refused.status === 409);
      assert.match(refused.message, /task "db" is degraded: a drill needs it protected/);
      assert.equal(busy.calls, [], "nothing ran");
    } finally {
      for (const x of [ok, dead, busy]) x.drills.close();
      setLogSink((l) => console.error(l));
    }
  },
);

s(
  "scheduled drills run when due and repeat; a scheduled one can be cancelled; a restart fails the running one",
  async () => {
    setLogSink(() => {});
    const { db, deps, drills, calls } = await service({ copyTime: Date.now() + 60_000 });
    try {
      const at = Date.now() + 100;
      const sched = await drills.schedule("db", { at, everyMs: 3_600_000, requestedBy: "user ann" });
      assert.is(sched.status, "scheduled");
      const other = await drills.schedule("db", { at: Date.now() + 86_400_000, requestedBy: "t" });
      assert.is((await drills.cancel("db", other.id)).status, "cancelled");
      const late = await drills.cancel("db", other.id).catch((e) => e);
      assert.match(late.message, /drill \d+ is cancelled: only a scheduled one is cancelled/);
      assert.match(
        (await drills.schedule("db", { site: "dr9", at, requestedBy: "t" }).catch((e) => e)).message,
        /site "dr9" is not a remote center/,
      );
      await drills.start();
      let list: Drill[] = [];
      await waitFor(
        async () => {
          list = await drills.list("db");
          return list.some((x) => x.id === sched.id && (x.status === "passed" || x.status === "failed"));
        },
        5000,
        "the scheduled drill to run",
      );
      assert.is(list.find((x) => x.id === sched.id)!.status, "passed");
      const next = list.find((x) => x.status === "scheduled")!;
      assert.is(next.scheduledAt, at + 3_600_000, "the next one is an interval later");
      assert.is(next.everyMs, 3_600_000);
      assert.ok(calls.includes("dr1 drill-up"));
      drills.close();

      // a drill left running by a stopped gateway is failed by the next start
      await db.insert(drillsTable).values({ task: "db", status: "running", requestedBy: "t", createdAt: 1 });
      const restarted = new Drills(deps);
      await restarted.start();
      const left = (await restarted.list("db")).find((x) => x.createdAt === 1)!;
      assert.is(left.status, "failed");
      assert.equal(left.reasons, ["the local gateway restarted during the drill"]);
      restarted.close();
    } finally {
      drills.close();
      setLogSink((l) => console.error(l));
    }
  },
);

g.run();
s.run();
