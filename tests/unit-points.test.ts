// The search for the last good point (src/points/): bisection (its answer and its logarithmic
// number of probes), the check runner (exit codes, the URI, a check that hangs), and the search
// service with fakes for the sites: every probe audited, the task back to protected, a hanging
// check or an unknown known-good point ending the search with a clear error and nothing changed.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { SearchError, searchLastGood } from "../src/points/bisect.ts";
import { runCheck } from "../src/points/check.ts";
import { PointSearch, type SearchDeps } from "../src/points/search.ts";
import { PointsError } from "../src/points/points.ts";
import { setLogSink } from "../src/log.ts";
import { type GatewayActionDeps, gatewayActions, type RecoveryApi } from "../src/tasks/gateway-actions.ts";
import type { ActionError } from "../src/tasks/actions.ts";
import type { TaskStore } from "../src/tasks/store.ts";
import { taskFixture } from "./lib/task-fixture.ts";

setLogSink(() => {});
const t = suite("points search");

t("bisection finds the last good point with logarithmic probes", async () => {
  for (const n of [1, 2, 3, 10, 100, 1000, 4096]) {
    // the points from `bad` on fail (bad === n: none does); points[0] is the known-good one
    for (const bad of new Set([1, Math.max(1, Math.floor(n / 3)), Math.max(1, n - 1), n])) {
      const points = Array.from({ length: n }, (_, i) => i);
      let probes = 0;
      const r = await searchLastGood(points, (p) => {
        probes++;
        return Promise.resolve(p < bad);
      });
      assert.is(r.lastGood, bad - 1, `n=${n} bad=${bad}`);
      assert.is(r.firstBad, bad === n ? undefined : bad);
      assert.ok(probes <= Math.ceil(Math.log2(n)) + 2, `n=${n}: ${probes} probes`);
      assert.is(r.probes.length, probes);
    }
  }
});

t("bisection: a known-good point that fails, no points", async () => {
  const e = await searchLastGood([5, 6, 7], () => Promise.resolve(false)).then(() => undefined, (e) => e);
  assert.instance(e, SearchError);
  assert.match(e.message, /no point passes the check: even the known-good point 5 fails/);
  assert.is(e.probes.length, 3);
  const none = await searchLastGood([], () => Promise.resolve(true)).then(() => undefined, (e) => e);
  assert.match(none.message, /no points to search/);
});

t("the check: exit code, the URI in its arguments and environment, a hang is killed", async () => {
  const ok = await runCheck(
    ["sh", "-c", 'test "$1" = "$CONTINUUM_NBD_URI" && echo fine', "sh", "{uri}"],
    "nbd://h:1/x",
    5000,
  );
  assert.ok(ok.passed && ok.code === 0 && !ok.timedOut);
  assert.match(ok.output, /fine/);
  const bad = await runCheck(["sh", "-c", "echo broken >&2; exit 3"], "nbd://h:1/x", 5000);
  assert.equal([bad.passed, bad.code, bad.timedOut], [false, 3, false]);
  assert.match(bad.output, /broken/);
  const t0 = performance.now();
  const hung = await runCheck(["sleep", "30"], "nbd://h:1/x", 300);
  assert.ok(hung.timedOut && !hung.passed && performance.now() - t0 < 5000);
  const e = await runCheck(["/nonexistent/check"], "u", 1000).then(() => undefined, (e: Error) => e);
  assert.match(e!.message, /cannot run the check \/nonexistent\/check/);
});

function fakes(points: number[], firstBad: number) {
  const calls: string[] = [];
  const audit: string[] = [];
  const deps: SearchDeps = {
    store: {
      applyEvent: (task: string, event: string, _cause: string, expect: string) => {
        calls.push(`${event} ${task} from ${expect}`);
        return Promise.resolve({});
      },
    } as unknown as SearchDeps["store"],
    audit: {
      record: (e: { cause: string }) => Promise.resolve(void audit.push(e.cause)),
    } as unknown as SearchDeps["audit"],
    tests: {
      begin: (_t: string, _v: string, _s: string, _d: number, point?: number | string) => {
        calls.push(`begin ${point}`);
        return Promise.resolve({ export: `nbd://site/${point}` } as never);
      },
      end: () => {
        calls.push("end");
        return Promise.resolve(undefined);
      },
    },
    points: {
      list: () =>
        Promise.resolve({
          checkpoints: [],
          sites: [{
            site: "dr1",
            ok: true,
            points: points.map((seq) => ({
              seq,
              time: seq * 10,
              end: seq * 100,
              kind: "barrier" as const,
              ...(seq === 20 ? { names: ["good"] } : {}),
            })),
          }],
        }),
    },
    check: (_cmd, uri) => {
      const seq = Number(uri.split("/").pop());
      if (seq === 999) {
        return new Promise((r) =>
          setTimeout(() => r({ passed: false, code: null, timedOut: true, ms: 1, output: "" }), 1)
        );
      }
      return Promise.resolve({
        passed: seq < firstBad,
        code: seq < firstBad ? 0 : 1,
        timedOut: false,
        ms: 1,
        output: "",
      });
    },
  };
  return { deps, calls, audit };
}

t("the search service: every probe on its own test copy and in the audit log", async () => {
  const points = Array.from({ length: 64 }, (_, i) => 10 + i * 5); // 10 … 325
  const f = fakes(points, 200);
  const s = new PointSearch(f.deps);
  const r = await s.run(
    "db",
    "a1/vol0",
    { site: "dr1", good: "good", check: ["x"], timeoutSeconds: 5 },
    "admin",
  );
  assert.is(r.lastGood.seq, 195);
  assert.is(r.firstBad?.seq, 200);
  assert.is(r.searched, 62, "from the known-good checkpoint (20) to the newest");
  assert.ok(r.probes.length <= 8, `${r.probes.length} probes`);
  assert.is(f.calls[0], "failover-test db from protected");
  assert.is(f.calls[f.calls.length - 1], "test-done db from testing");
  assert.is(f.calls.filter((c) => c.startsWith("begin")).length, f.calls.filter((c) => c === "end").length);
  assert.is(f.audit.filter((a) => /^point search probe at sequence \d+/.test(a)).length, r.probes.length);
  assert.match(f.audit[f.audit.length - 1], /the last good point of a1\/vol0 at site dr1 is sequence 195/);
});

t("the search service: bad known-good point, a hanging check, a search already running", async () => {
  const f = fakes([10, 20, 30, 999], 1000);
  const s = new PointSearch(f.deps);
  const unknown = await s.run(
    "db",
    "a1/vol0",
    { site: "dr1", good: 15, check: ["x"], timeoutSeconds: 5 },
    "admin",
  )
    .then(() => undefined, (e: PointsError) => e);
  assert.is(unknown?.status, 409);
  assert.match(unknown!.message, /the known-good point 15 is not held at site dr1/);
  assert.equal(f.calls, [], "nothing was started");
  const hung = await s.run("db", "a1/vol0", { site: "dr1", check: ["x"], timeoutSeconds: 5 }, "admin")
    .then(() => undefined, (e: PointsError) => e);
  assert.match(
    hung!.message,
    /the check timed out after 5 s at point 999: the search stopped \(1 probes; nothing was changed\)/,
  );
  assert.equal(f.calls, ["failover-test db from protected", "begin 999", "end", "test-done db from testing"]);
  assert.match(f.audit.join("\n"), /failed: the check timed out/);
  // one search per task at a time
  const slow = fakes([10, 20], 1000);
  slow.deps.check = () =>
    new Promise((r) =>
      setTimeout(() => r({ passed: true, code: 0, timedOut: false, ms: 1, output: "" }), 100)
    );
  const s2 = new PointSearch(slow.deps);
  const first = s2.run("db", "v", { site: "dr1", check: ["x"], timeoutSeconds: 5 }, "a");
  const second = await s2.run("db", "v", { site: "dr1", check: ["x"], timeoutSeconds: 5 }, "a").then(
    () => undefined,
    (e) => e,
  );
  assert.match(second.message, /a search of task db is running already/);
  assert.is((await first).lastGood.seq, 20);
});

t("a failover to a point: checked at the site before anything moves", async () => {
  const calls: string[] = [];
  const store = {
    getHost: () => Promise.resolve({ name: "app1", site: "prod", role: "application", agent: "a1" }),
    listVolumes: () => Promise.resolve([{ name: "vol0", host: "app1", device: "/dev/sdb", size: 1 << 20 }]),
  } as unknown as TaskStore;
  const actions = gatewayActions({
    store,
    recovery: {} as RecoveryApi,
    services: {
      status: () => [{ name: "web", state: "protected", site: "dr1" }],
      failover: (name, cause, point) => {
        calls.push(`failover ${name} ${point} (${cause})`);
        return Promise.resolve();
      },
      failback: () => {
        throw new Error("no failback in this test");
      },
    },
    checkPoint: (site, volume, point) => {
      calls.push(`check ${site} ${volume} ${point}`);
      return point === "gone"
        ? Promise.reject(new Error("site dr1: point 3 has expired: the oldest point held is 9"))
        : Promise.resolve({ seq: 42 });
    },
    volumes: () => [{ agent: "a1", name: "vol0", size: 1 << 20 }],
    sites: () => ["dr1"],
    control: {} as GatewayActionDeps["control"],
    tests: { begin: () => Promise.reject(new Error("no")), end: () => Promise.resolve(undefined) },
    copies: () => ({ sites: [] }),
  });
  const task = taskFixture({ service: "web" });
  const e = await actions.failover(task, { reason: "ransomware", point: "gone" }).then(
    () => undefined,
    (e: ActionError) => e,
  );
  assert.is(e?.status, 409);
  assert.match(e!.message, /cannot fail over a1\/vol0 to point gone: site dr1: point 3 has expired/);
  assert.equal(calls, ["check dr1 a1/vol0 gone"], "nothing moved");
  calls.length = 0;
  const r = await actions.failover(task, { reason: "ransomware", point: "before-upgrade" });
  assert.equal(calls, [
    "check dr1 a1/vol0 before-upgrade",
    "failover web before-upgrade (ransomware (task db) at point 42)",
  ]);
  assert.match((r as { message: string }).message, /service web now runs at site dr1 at point 42/);
});

t.run();
