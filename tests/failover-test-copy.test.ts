// Failover tests through the API on a real topology (local gateway, agent, remote site with its
// standby): a test exports a writable copy of the site's replica, taken at a consistent
// sequence; writes to it reach neither the replica nor the LSP, replication goes on meanwhile,
// and ending the test discards the copy. Illegal transitions and bad bodies are refused with a
// clear message. A test never leaves its task stuck in `testing`: a restarted local gateway
// ends it, and so does a remote site that lost its copies (restarted: leftovers discarded).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { hashAll, run, sha256File, startTopology, waitFor } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { WebClient } from "./lib/browser.ts";
import {
  type GatewayActionDeps,
  gatewayActions,
  type RecoveryApi,
  testSite,
} from "../src/tasks/gateway-actions.ts";
import type { ActionError } from "../src/tasks/actions.ts";
import type { TaskStore } from "../src/tasks/store.ts";
import type { Task } from "../src/tasks/model.ts";
import { registerDbTask } from "./lib/inventory.ts";

const t = suite("failover test");
const MiB = 1024 * 1024;

// ------------------------------------------------------------------ the actions, with fakes

function task(state: Task["state"], sites = ["dr1", "dr2"]): Task {
  const ref = { host: "gw", device: "/dev/x" };
  return {
    name: "db",
    description: "",
    group: {
      local: { site: "prod", lsp: { host: "app1", device: "/dev/sdb" }, lgp: ref, buffer: ref },
      remotes: sites.map((site) => ({ site, rgp: ref, rsp: ref })),
    },
    mirror: { ackPoint: "lgp", congestion: "block", bandwidthLimit: 0, compression: false },
    recovery: { strategy: "fast", mode: "policy" },
    service: "web",
    state,
    stateSince: 0,
    createdAt: 0,
    updatedAt: 0,
  };
}

const copy = (site: string, connected: boolean, state: string) => ({
  site,
  connected,
  volumes: [{ agent: "a1", name: "vol0", state }],
});

t("the test's site: the requested one of the task's, else the first consistent over a connected link", () => {
  const status = { sites: [copy("dr1", false, "consistent"), copy("dr2", true, "consistent")] };
  assert.is(testSite(task("protected"), "a1/vol0", status), "dr2");
  assert.is(
    testSite(task("protected"), "a1/vol0", status, "dr1"),
    "dr1",
    "an explicit choice is the operator's",
  );
  assert.throws(
    () => testSite(task("protected"), "a1/vol0", status, "dr9"),
    (e: ActionError) =>
      e.status === 400 &&
      /site "dr9" is not a remote center of task "db" \(its remote centers: dr1, dr2\)/.test(e.message),
  );
  const none = { sites: [copy("dr1", false, "consistent"), copy("dr2", true, "inconsistent")] };
  assert.throws(
    () => testSite(task("protected"), "a1/vol0", none),
    (e: ActionError) => e.status === 409 && /dr1: link down, dr2: copy inconsistent/.test(e.message),
  );
});

t("a real failover during a test discards the test copy before the service moves", async () => {
  const calls: string[] = [];
  const store = {
    getHost: () => Promise.resolve({ name: "app1", site: "prod", role: "application", agent: "a1" }),
    listVolumes: () => Promise.resolve([{ name: "vol0", host: "app1", device: "/dev/sdb", size: MiB }]),
  } as unknown as TaskStore;
  const actions = gatewayActions({
    store,
    recovery: {} as RecoveryApi,
    services: {
      status: () => [{ name: "web", state: "protected", site: "dr1" }],
      failover: (name) => {
        calls.push(`failover ${name}`);
        return Promise.resolve();
      },
      failback: () => {
        throw new Error("no failback in this test");
      },
    },
    volumes: () => [{ agent: "a1", name: "vol0", size: MiB }],
    sites: () => ["dr1", "dr2"],
    control: {} as GatewayActionDeps["control"],
    tests: {
      begin: (name, volume, site) => {
        calls.push(`begin ${name} ${volume} ${site}`);
        return Promise.reject(
          new Error(`site ${site}: the replica of a1/vol0 at site ${site} is inconsistent`),
        );
      },
      end: (name) => {
        calls.push(`end ${name}`);
        return Promise.resolve(undefined);
      },
    },
    copies: () => ({ sites: [copy("dr1", true, "consistent"), copy("dr2", true, "consistent")] }),
  });
  await actions.failover(task("testing"), { reason: "drill", site: "dr1" });
  assert.equal(calls, ["end db", "failover web"]);
  calls.length = 0;
  await actions.failover(task("protected"), { reason: "drill" });
  assert.equal(calls, ["failover web"], "no test to end outside testing");
  calls.length = 0;
  // the site's refusal is the operator's answer
  const refused = await actions.failoverTest(task("protected"), { site: "dr2", durationSeconds: 600 }).then(
    () => undefined,
    (e: ActionError) => e,
  );
  assert.is(refused?.status, 409);
  assert.match(
    refused!.message,
    /cannot start a failover test of a1\/vol0: site dr2: the replica .* is inconsistent/,
  );
  assert.equal(calls, ["begin db a1/vol0 dr2"]);
});

// ------------------------------------------------------------------ real processes

interface TestInfo {
  site: string;
  seq: number;
  export: string;
  started: number;
  expires: number;
  task: string;
}

t(
  "a failover test brings up a discardable copy at the remote site; the replica is never touched",
  async () => {
    if (!need("failover test on a real topology", { tools: ["qemu-io"] })) return;
    const SIZE = 16 * MiB;
    const allowed = new URL("../test-output/", import.meta.url).pathname;
    const topo = await startTopology("ft-topo", {
      size: SIZE,
      sites: ["dr1"],
      gatewayExtra: ["--device-prefix", allowed],
    });
    const dr1 = topo.remotes.dr1;
    const testDir = `${dr1.home}/tests`;
    const leftCopies = async () => (await Array.fromAsync(Deno.readDir(testDir))).map((e) => e.name);
    try {
      const c = new WebClient(`http://127.0.0.1:${topo.gw.httpPort}`, { token: topo.gw.token });
      await registerDbTask(c, topo, SIZE);
      const files = topo.copies();
      const state = async () => (await c.expect(200, "GET", "/api/tasks/db") as { state: string }).state;
      const refused = async (action: string, body: unknown, status: number, message: RegExp) => {
        const r = await c.req("POST", `/api/tasks/db/actions/${action}`, body);
        assert.is(r.status, status, `${action} ${JSON.stringify(body)}: ${r.text}`);
        assert.match((r.body as { error: string }).error, message);
      };

      // illegal transitions: a configured task cannot be tested, nothing to end
      await refused("failover-test", {}, 409, /a task in state "configured" does not accept "failover-test"/);
      await refused("end-test", {}, 409, /a task in state "configured" does not accept "test-done"/);
      await c.expect(200, "POST", "/api/tasks/db/actions/start");
      await waitFor(async () => await state() === "protected", 60_000, "the task to be protected", 250);
      await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0xa1 0 4M", "-c", "flush"]);
      await topo.caughtUp();

      // bad bodies: refused before anything runs
      await refused(
        "failover-test",
        { site: "nope" },
        400,
        /site "nope" is not a remote center of task "db"/,
      );
      await refused("failover-test", { durationSeconds: 5 }, 400, /durationSeconds: must be at least 60 s/);
      await refused("failover-test", { bogus: 1 }, 400, /unknown field\(s\): bogus/);
      await refused("end-test", {}, 409, /a task in state "protected" does not accept "test-done"/);
      assert.equal(await leftCopies(), [], "no copy was made by a refused request");

      // the test: a copy of the replica, exported at the site
      const before = await hashAll(files);
      assert.is(before["rgp-dr1"], before.lsp, "the replica is level before the test");
      const lastSeq = (await topo.gw.status()).volumes.find((v) => v.name === "vol0")!.lastSeq;
      const started = await c.expect(200, "POST", "/api/tasks/db/actions/failover-test", {
        site: "dr1",
        durationSeconds: 600,
      }) as { to: string; message: string; detail: { test: TestInfo } };
      assert.is(started.to, "testing");
      const test = started.detail.test;
      assert.is(test.site, "dr1");
      assert.is(test.seq, lastSeq, "the copy holds everything the replica applied");
      assert.match(test.export, /^nbd:\/\/127\.0\.0\.1:\d+\/test-a1-vol0$/);
      assert.ok(test.expires - test.started === 600_000);
      assert.match(started.message, /is exported at nbd:\/\//);
      const shown = (await c.expect(200, "GET", "/api/status") as { tests: TestInfo[] }).tests;
      assert.equal(shown.map((x) => [x.task, x.site, x.seq, x.export]), [[
        "db",
        "dr1",
        test.seq,
        test.export,
      ]]);
      assert.is((await dr1.status() as unknown as { tests: unknown[] }).tests.length, 1);
      await refused("failover-test", {}, 409, /a task in state "testing" does not accept "failover-test"/);

      // the copy holds the replica's data and takes writes; the replica and the LSP do not change
      const read = await run("qemu-io", ["-r", "-f", "raw", test.export, "-c", "read -P 0xa1 0 4M"]);
      assert.match(read.stdout, /read 4194304\/4194304 bytes/);
      await run("qemu-io", ["-f", "raw", test.export, "-c", "write -P 0xee 1M 2M", "-c", "flush"]);
      const back = await run("qemu-io", ["-r", "-f", "raw", test.export, "-c", "read -P 0xee 1M 2M"]);
      assert.match(back.stdout, /read 2097152\/2097152 bytes/);
      const after = await hashAll(files);
      assert.equal(after, before, "no copy of the task changed by the write to the test copy");
      // the image under the export is a file of its own
      const [copyFile] = await leftCopies();
      assert.ok(copyFile, "the copy lies in the site's test directory");
      assert.not.equal(await sha256File(`${testDir}/${copyFile}`), before["rgp-dr1"]);

      // replication goes on during the test, into the replica, not into the copy
      await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0xb2 8M 2M", "-c", "flush"]);
      await topo.caughtUp();
      const during = await hashAll(files);
      assert.is(during["rgp-dr1"], during.lsp, "the replica follows the stream during the test");
      assert.not.equal(during.lsp, before.lsp);
      const frozen = await run("qemu-io", ["-r", "-f", "raw", test.export, "-c", "read -P 0 8M 2M"]);
      assert.match(frozen.stdout, /read 2097152\/2097152 bytes/, "the copy stays at its sequence");
      assert.is(await state(), "testing", "a test is not ended by the task follower");

      // ending it discards the copy and its export
      const ended = await c.expect(200, "POST", "/api/tasks/db/actions/end-test", {}) as {
        to: string;
        message: string;
      };
      assert.is(ended.to, "protected");
      assert.match(ended.message, /the test copy at site dr1 is discarded/);
      assert.equal(await leftCopies(), []);
      const gone = await run("qemu-io", ["-r", "-f", "raw", test.export, "-c", "read 0 4k"], {
        allowFail: true,
      });
      assert.ok(gone.code !== 0, "the export is gone");
      assert.equal((await c.expect(200, "GET", "/api/status") as { tests: unknown[] }).tests, []);
      assert.equal(await hashAll(files), during, "ending the test changed no copy");
      const audit = await c.expect(200, "GET", "/api/audit?limit=100") as {
        subject: string;
        fromState: string;
        toState: string;
        cause: string;
      }[];
      const mine = audit.filter((a) => a.subject === "task:db");
      assert.ok(
        mine.some((a) => a.toState === "testing" && /failover-test by .*exported at nbd:\/\//.test(a.cause)),
        "the start is in the audit log",
      );
      assert.ok(
        mine.some((a) =>
          a.fromState === "testing" && a.toState === "protected" && /end-test by/.test(a.cause)
        ),
        "the end is in the audit log",
      );

      // a restarted local gateway knows no test: the task returns to protected, the site discards
      // the copy once its lease lapses (nobody renews it)
      await c.expect(200, "POST", "/api/tasks/db/actions/failover-test", {});
      assert.is((await leftCopies()).length, 1);
      await topo.gw.proc.stop();
      await topo.gw.start();
      await waitFor(
        async () => await state() === "protected",
        20_000,
        "the test to end after the restart",
        250,
      );
      const restarted = await c.expect(200, "GET", "/api/audit?limit=20") as {
        subject: string;
        cause: string;
      }[];
      assert.ok(
        restarted.some((a) =>
          a.subject === "task:db" && /local gateway restarted during the test/.test(a.cause)
        ),
      );
      await waitFor(
        async () => (await leftCopies()).length === 0,
        40_000,
        "the site to discard the copy",
        500,
      );

      // a remote site that lost its copies (killed, then started: leftovers go) ends the test too
      await waitFor(
        async () => (await c.req("POST", "/api/tasks/db/actions/failover-test", {})).status === 200,
        30_000,
        "a second test to start",
        500,
      );
      assert.is(await state(), "testing");
      dr1.proc.kill();
      await dr1.proc.exited;
      assert.is((await leftCopies()).length, 1, "a killed site leaves its copy");
      await dr1.start();
      assert.equal(await leftCopies(), [], "a starting site discards what was left");
      await waitFor(async () => await state() === "protected", 30_000, "the test to end", 250);
      const lost = await c.expect(200, "GET", "/api/audit?limit=20") as { subject: string; cause: string }[];
      assert.ok(
        lost.some((a) =>
          a.subject === "task:db" &&
          /failover test ended: site dr1 (no longer holds|did not answer)/.test(a.cause)
        ),
        JSON.stringify(lost.filter((a) => a.subject === "task:db")),
      );
    } finally {
      await topo.stop();
    }
  },
);

t.run();
