// Graded failover drills in network namespaces: a task over the failover lab (agent, local
// gateway, remote site with its standby) with RTO and RPO targets. A drill brings the service up on
// the remote site's test copy (the standby's --on-promote hook with the copy's export): it answers
// with the data written before, RTO and RPO are measured and graded, the copy is discarded, and the
// production service, its switch rules and the replication are untouched throughout. A drill whose
// targets cannot be met fails with the reason, and raises an alarm: the site lagging more than the
// RPO target (a bandwidth limit), then a service that does not come up on the copy.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { FailoverLab, Poller, writeServiceText } from "./lib/failover-lab.ts";
import { run, tempDir, waitFor } from "./lib/cluster.ts";
import { httpGet } from "./lib/netns.ts";
import { WebClient } from "./lib/browser.ts";
import { registerLabInventory } from "./lib/lab-inventory.ts";
import type { Drill } from "../src/drills/drills.ts";
import { runCtl } from "../src/cli/ctl.ts";

const t = suite("drills in namespaces");
const prereq = { root: true, tools: ["ip", "iptables", "iptables-save", "qemu-io"] };
const MESSAGE = "written before the drill";

/** The gateway's nat rules, without iptables-save's comment lines (they hold the time). */
async function natRules(lab: FailoverLab): Promise<string> {
  return (await lab.natRules()).split("\n").filter((l) => !l.startsWith("#")).join("\n");
}

async function caughtUp(lab: FailoverLab, ms: number, what: string): Promise<void> {
  await waitFor(
    async () => {
      const s = await lab.api("/api/status") as {
        volumes: { lastSeq: number }[];
        sites: { volumes: { ackedSeq: number }[] }[];
      };
      return s.sites[0].volumes[0].ackedSeq === s.volumes[0].lastSeq;
    },
    ms,
    what,
    250,
  );
}

t(
  "a drill brings the service up on the test copy and grades RTO and RPO; failed grades say why",
  async () => {
    if (!need("drills in namespaces", prereq)) return;
    const lab = new FailoverLab();
    const allowed = new URL("../test-output/", import.meta.url).pathname;
    const testSocket = `${await tempDir("drill")}/tests.sock`;
    let poller: Poller | undefined;
    try {
      await lab.start({
        gatewayExtra: ["--device-prefix", allowed],
        remoteExtra: ["--test-listen", `unix:${testSocket}`],
      });
      const c = new WebClient("http://10.77.9.1:7880", { token: lab.token });
      const group = await registerLabInventory(lab, c);
      const d = lab.dir;
      const task = {
        name: "db",
        service: "web",
        group,
        targets: { rtoMs: 30_000, rpoMs: 5000 },
      };
      await c.expect(201, "POST", "/api/tasks", task);
      await c.expect(200, "POST", "/api/tasks/db/actions/start");
      const state = async () => (await c.expect(200, "GET", "/api/tasks/db") as { state: string }).state;
      await waitFor(async () => await state() === "protected", 60_000, "the task to be protected", 250);
      await writeServiceText(`${lab.dir}/agent/nbd.sock`, MESSAGE);
      poller = new Poller(lab);
      await waitFor(
        () => poller!.answers().some((a) => a.ok && a.body === `local: ${MESSAGE}`),
        20_000,
        "local answers",
      );
      const rules = await natRules(lab);

      // bad requests are refused before anything runs
      const refused = async (body: unknown, status: number, message: RegExp) => {
        const r = await c.req("POST", "/api/tasks/db/drills", body);
        assert.is(r.status, status, r.text);
        assert.match((r.body as { error: string }).error, message);
      };
      await refused({ site: "nope" }, 400, /site "nope" is not a remote center of task "db"/);
      await refused({ everyHours: 24 }, 400, /everyHours: needs at/);
      await refused({ at: 1 }, 400, /at: must be in the future/);
      await refused({ bogus: true }, 400, /unknown field\(s\): bogus/);

      // the drill: the service comes up on the copy and answers with what was written before
      const began = await c.expect(202, "POST", "/api/tasks/db/drills", {}) as Drill;
      assert.is(began.status, "running");
      // production meanwhile: the local service answers, replication goes on, nothing switched
      await writeServiceText(`${lab.dir}/agent/nbd.sock`, "written during the drill");
      let passed!: Drill;
      await waitFor(
        async () => {
          passed = await c.expect(200, "GET", `/api/drills/${began.id}`) as Drill;
          return passed.status !== "running";
        },
        90_000,
        "the drill's grade",
        250,
      );
      console.log(`\n  drill: ${passed.status}, RTO ${passed.rtoMs} ms, RPO ${passed.rpoMs} ms`);
      assert.is(passed.status, "passed", JSON.stringify(passed));
      // the standby's service check got its answer from the service on the copy
      const served = await Deno.readTextFile(`${d}/drill-service.log`);
      assert.ok(served.includes(`answered "drill: ${MESSAGE}"`), served);
      assert.ok(passed.rtoMs! > 0 && passed.rtoMs! <= 30_000);
      assert.is(passed.rpoMs, 0, "the copy held everything written before the drill");
      assert.match(passed.copy!.export, /^nbd\+unix:\/\/\/test-app1-vol0\?socket=/);
      assert.equal(passed.targets, { rtoMs: 30_000, rpoMs: 5000 });
      assert.is(await state(), "protected", "the task is back to protected");
      assert.is(await lab.serviceState(), "protected");
      assert.is(await natRules(lab), rules, "the switch rules were not touched");
      assert.ok(
        poller.answers().every((a) => !a.ok || a.body.startsWith("local:")),
        "clients were served locally",
      );
      await caughtUp(lab, 30_000, "the site to hold the write made during the drill");
      assert.not.ok(
        (await httpGet(lab.ns.remote, "http://10.77.3.2:8080/", 500)).startsWith("drill:"),
        "the drill's service stopped",
      );
      const tests = (await lab.api("/api/status") as { tests: unknown[] }).tests;
      assert.equal(tests, [], "the test copy is discarded");

      // the site lags more than the RPO target: a bandwidth limit and a burst of writes
      await c.expect(200, "PUT", "/api/tasks/db", {
        ...task,
        mirror: { bandwidthLimit: 256 * 1024 },
        targets: { rtoMs: 30_000, rpoMs: 1000 },
      });
      await waitFor(
        async () =>
          (await lab.api("/api/status") as { sites: { bandwidth: number }[] }).sites[0].bandwidth ===
            256 * 1024,
        10_000,
        "the task's bandwidth limit to apply",
      );
      // 64 writes of 64 KiB: 16 s at 256 KiB/s, the site is still far behind 3 s later
      const writes = Array.from({ length: 64 }, (_, i) => ["-c", `write -P 0x5a ${1024 + i * 64}k 64k`])
        .flat();
      await run("qemu-io", ["-f", "raw", `nbd+unix:///vol0?socket=${d}/agent/nbd.sock`, ...writes]);
      await new Promise((r) => setTimeout(r, 3000));
      const lagging = await c.expect(200, "POST", "/api/tasks/db/drills?wait=1", {}) as Drill;
      console.log(
        `  lagging drill: ${lagging.status}, RPO ${lagging.rpoMs} ms: ${lagging.reasons.join("; ")}`,
      );
      assert.is(lagging.status, "failed");
      assert.ok(lagging.rpoMs! > 1000);
      assert.match(lagging.reasons.join("; "), /^RPO \d+\.\d+ s is above the target of 1\.00 s$/);
      await c.expect(200, "PUT", "/api/tasks/db", task);
      await caughtUp(lab, 120_000, "the site to catch up");

      // a service that does not come up on the copy, drilled with `continuum ctl drill`
      await Deno.writeTextFile(`${d}/drill-fails`, "");
      await c.expect(200, "PUT", "/api/tasks/db", { ...task, targets: { rtoMs: 5000, rpoMs: 60_000 } });
      const ctl = ["--api", "http://10.77.9.1:7880", "--token-file", `${d}/gateway/api-token`];
      const bad = await runCtl([...ctl, "drill", "db", "--every", "soon"], () => {}).catch((e) => e);
      assert.match(bad.message, /--every "soon" is not a number of hours/);
      let printed = "";
      assert.is(
        await runCtl([...ctl, "drill", "db", "--site", "dr1"], (s) => printed = s),
        1,
        "a failed grade exits 1",
      );
      const down = JSON.parse(printed) as Drill;
      console.log(`  failing drill: ${down.status}: ${down.reasons.join("; ")}`);
      assert.is(down.status, "failed");
      assert.is(down.rtoMs, null);
      assert.match(
        down.reasons[0],
        /^the service did not come up on the test copy: service not healthy within/,
      );

      // a weekly drill, scheduled and then cancelled
      const at = Date.now() + 3_600_000;
      const weekly = await c.expect(201, "POST", "/api/tasks/db/drills", { at, everyHours: 168 }) as Drill;
      assert.equal([weekly.status, weekly.scheduledAt, weekly.everyMs], ["scheduled", at, 168 * 3_600_000]);
      const cancelled = await c.expect(200, "DELETE", `/api/tasks/db/drills/${weekly.id}`) as Drill;
      assert.is(cancelled.status, "cancelled");

      const history = await c.expect(200, "GET", "/api/tasks/db/drills") as Drill[];
      assert.equal(history.map((x) => x.status), ["cancelled", "failed", "failed", "passed"]);
      const alarms =
        (await lab.api("/api/status") as { alarms: { recent: { kind: string; subject: string }[] } })
          .alarms.recent.filter((a) => a.kind === "drill-failed");
      assert.is(alarms.length, 2, "each failed drill raised an alarm");
      assert.is(alarms[0].subject, "task:db");
      assert.is(await lab.serviceState(), "protected");
      assert.is(await natRules(lab), rules);
    } finally {
      await poller?.stop();
      await lab.stop();
    }
  },
);

t.run();
