// The control plane: an agent started with only its identity gets its volume from a task
// created and started through the API, exports it, and the write reaches the mirror and the
// remote replica; deleting the task withdraws the export and the replication and leaves every
// image as it is; the agent remembers its assignments across a restart without the gateway;
// a bad assignment is a clear refusal, never a crash. Plus the pure reconciliation logic.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { hashAll, run, type SiteStatus, sparseImage, waitFor, waitMirrorCaughtUp } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { siteCaughtUp, standbyRemembers, startLabProcesses, taskBody } from "./lib/control-plane-lab.ts";
import {
  desiredFor,
  lspAssignment,
  mirrorPlan,
  reconcile,
  rspAssignments,
  siteLimit,
  standbysFor,
} from "../src/tasks/control-plane.ts";
import { DesiredState } from "../src/tasks/desired-state.ts";
import { parseControl, siteAnswers } from "../src/wire/control.ts";
import { parseAssignment } from "../src/capture/assignments.ts";
import type { Host, Task, Volume } from "../src/tasks/model.ts";

const t = suite("control-plane");
const MiB = 1024 * 1024;

// ------------------------------------------------------------------ pure logic

const hosts: Host[] = [
  { name: "app1", site: "prod", role: "application", agent: "a1" },
  { name: "app2", site: "prod", role: "application" },
];
const volumes: Volume[] = [
  { name: "vol0", host: "app1", device: "/dev/sdb", size: 4096 },
  { name: "vol1", host: "app2", device: "/dev/sdc", size: 8192 },
];
function task(name: string, host: string, device: string, state: Task["state"]): Task {
  const ref = { host: "gw", device: "/dev/x" };
  return {
    name,
    description: "",
    group: {
      local: { site: "prod", lsp: { host, device }, lgp: ref, buffer: ref },
      remotes: [{ site: "dr1", rgp: ref, rsp: ref }],
    },
    mirror: { ackPoint: "lgp", congestion: "block", bandwidthLimit: 0, compression: false },
    recovery: { strategy: "fast", mode: "policy" },
    state,
    stateSince: 0,
    createdAt: 0,
    updatedAt: 0,
  };
}

t("a task's LSP is assigned to its host's agent (the host's agent id, else its name)", () => {
  assert.equal(lspAssignment(task("t", "app1", "/dev/sdb", "syncing"), hosts, volumes), {
    task: "t",
    agent: "a1",
    volume: { name: "vol0", path: "/dev/sdb", size: 4096 },
  });
  const a = lspAssignment(task("t", "app2", "/dev/sdc", "syncing"), hosts, volumes);
  assert.is(typeof a !== "string" && a.agent, "app2");
  assert.match(
    lspAssignment(task("t", "nope", "/dev/sdb", "syncing"), hosts, volumes) as string,
    /unknown host/,
  );
  assert.match(
    lspAssignment(task("t", "app1", "/dev/sdz", "syncing"), hosts, volumes) as string,
    /no volume registered at app1:\/dev\/sdz/,
  );
});

t("an agent serves the LSPs of the started tasks only", () => {
  const tasks = [
    task("new", "app1", "/dev/sdb", "configured"),
    task("other", "app2", "/dev/sdc", "protected"),
  ];
  assert.equal(desiredFor("a1", tasks, hosts, volumes), [], "a configured task assigns nothing");
  tasks[0].state = "paused";
  assert.equal(desiredFor("a1", tasks, hosts, volumes), [{ name: "vol0", path: "/dev/sdb", size: 4096 }]);
  assert.equal(desiredFor("app2", tasks, hosts, volumes).map((a) => a.name), ["vol1"]);
  assert.equal(desiredFor("a9", tasks, hosts, volumes), []);
});

t("a task's RSP is the standby copy of the LSP's agent, under the LSP volume's name", () => {
  const t1 = task("t", "app1", "/dev/sdb", "configured");
  t1.group.remotes = [{
    site: "dr1",
    rgp: { host: "rgw", device: "/dev/r" },
    rsp: { host: "sb", device: "/dev/sdd" },
  }];
  const vols = [...volumes, { name: "rsp0", host: "sb", device: "/dev/sdd", size: 4096 }];
  assert.equal(rspAssignments(t1, hosts, vols), [
    { site: "dr1", agent: "a1", volume: { name: "vol0", path: "/dev/sdd", size: 4096 } },
  ]);
  assert.match(rspAssignments(t1, hosts, volumes) as string, /no volume registered at sb:\/dev\/sdd/);
});

t("reconcile: assign what is desired, unassign what is remembered and no longer desired", () => {
  const want = [{ name: "vol0", path: "/dev/sdb", size: 4096 }];
  assert.equal(reconcile(want, []), { assign: want, unassign: [] });
  assert.equal(reconcile(want, ["vol0"]), { assign: want, unassign: [] });
  assert.equal(reconcile(want, ["old", "vol0", "gone", "old"]), { assign: want, unassign: ["gone", "old"] });
  assert.equal(reconcile([], ["x"]), { assign: [], unassign: ["x"] });
});

t("a site's standby agents hold the RSPs of the started tasks, per agent", () => {
  const rsp = { host: "sb", device: "/dev/sdd" };
  const t1 = task("t1", "app1", "/dev/sdb", "protected");
  const t2 = task("t2", "app2", "/dev/sdc", "configured");
  t1.group.remotes = [{ site: "dr1", rgp: rsp, rsp }, { site: "dr2", rgp: rsp, rsp }];
  t2.group.remotes = [{ site: "dr1", rgp: rsp, rsp: { host: "sb", device: "/dev/sde" } }];
  const r1 = { name: "r1", host: "sb", device: "/dev/sdd", size: 4096 };
  const vols = [...volumes, r1, { name: "r2", host: "sb", device: "/dev/sde", size: 8192 }];
  const a1 = [{ name: "vol0", path: "/dev/sdd", size: 4096 }];
  assert.equal(standbysFor("dr1", [t1, t2], hosts, vols), { a1 });
  assert.equal(standbysFor("dr2", [t1, t2], hosts, vols), { a1 });
  assert.equal(standbysFor("dr9", [t1, t2], hosts, vols), {});
  // a task being started counts before the store records it
  assert.equal(standbysFor("dr1", [t1, t2], hosts, vols, () => true), {
    a1,
    app2: [{ name: "vol1", path: "/dev/sde", size: 8192 }],
  });
  // a task whose RSP is not registered is left out (its start is refused with the reason)
  assert.equal(standbysFor("dr1", [t1, t2], hosts, [...volumes, r1], () => true), { a1 });
});

t("the tasks' mirror strategies: per volume, and the bandwidth of each site's sender", () => {
  const m = (bandwidthLimit: number, more: Partial<Task["mirror"]> = {}): Task["mirror"] => ({
    ackPoint: "rsp",
    congestion: "pull-ahead",
    bandwidthLimit,
    compression: true,
    ...more,
  });
  const t1 = { ...task("t1", "app1", "/dev/sdb", "protected"), mirror: m(1000, { bufferBound: 1 << 20 }) };
  const t2 = { ...task("t2", "app2", "/dev/sdc", "degraded"), mirror: m(500) };
  assert.equal(mirrorPlan([t1, t2], hosts, volumes), {
    volumes: { "a1/vol0": t1.mirror, "app2/vol1": t2.mirror },
    siteBandwidth: { dr1: 1500 },
  });
  // one task without a limit lifts the site's; a paused task is not carried; a configured one has none
  assert.equal(mirrorPlan([t1, { ...t2, mirror: m(0) }], hosts, volumes).siteBandwidth, { dr1: 0 });
  assert.equal(mirrorPlan([t1, { ...t2, state: "paused" }], hosts, volumes).siteBandwidth, { dr1: 1000 });
  const none = mirrorPlan([{ ...t1, state: "configured" }], hosts, volumes);
  assert.equal(none, { volumes: {}, siteBandwidth: {} }, "a site without a task keeps its flag");
  // the link's cap (--remote-bandwidth) and the tasks' allowance: the stricter one holds
  assert.is(siteLimit(0, undefined), 0);
  assert.is(siteLimit(2000, undefined), 2000, "no task: the flag");
  assert.is(siteLimit(2000, 0), 2000, "tasks without a limit: the flag");
  assert.is(siteLimit(0, 1500), 1500, "no flag: the tasks'");
  assert.is(siteLimit(2000, 1500), 1500);
  assert.is(siteLimit(1000, 1500), 1000);
});

t("desired state per peer: sent on change and on (re)connection, repeated until settled", () => {
  const d = new DesiredState<string[]>(100, 1000);
  assert.equal(d.due(0), [], "nothing desired yet");
  d.set("dr1", ["vol0"]);
  assert.equal(d.due(0), [], "not connected: nothing is sent");
  d.connected("dr1", true);
  assert.equal(d.due(0), [{ peer: "dr1", desired: ["vol0"], version: 1 }]);
  d.sent("dr1");
  assert.equal(d.due(0), [], "a send in flight is not repeated");
  assert.not.ok(d.set("dr1", ["vol0"]), "the same state is no new version");
  d.acked("dr1", 1, false, 10);
  assert.equal(d.due(50), [], "pending at the peer: asked again after retryMs");
  assert.is(d.due(110).length, 1);
  d.sent("dr1");
  d.acked("dr1", 1, true, 120);
  assert.equal(d.due(500), [], "settled: refreshed after refreshMs only");
  assert.is(d.due(1120).length, 1);
  assert.ok(d.set("dr1", []), "a change");
  assert.equal(d.due(130), [{ peer: "dr1", desired: [], version: 2 }], "a change is due at once");
  d.sent("dr1");
  d.set("dr1", ["vol1"]);
  d.acked("dr1", 2, true, 140);
  assert.equal(
    d.due(140),
    [{ peer: "dr1", desired: ["vol1"], version: 3 }],
    "a superseded answer does not count",
  );
  d.sent("dr1");
  d.failed("dr1", 150);
  assert.equal(d.due(200), [], "a failed send waits retryMs");
  assert.is(d.due(250).length, 1);
  d.connected("dr1", false);
  assert.equal(d.due(5000), [], "a peer away gets nothing");
  d.connected("dr1", true);
  assert.equal(
    d.due(5000),
    [{ peer: "dr1", desired: ["vol1"], version: 3 }],
    "everything again on reconnection",
  );
});

t("a site's report of its standby copies is checked (the standbys answer's schema)", () => {
  const answer = (agents: unknown) => ({ type: "standbys", id: 1, ok: true, agents });
  const report = { a1: [{ name: "vol0", state: "failed", error: "no device" }] };
  assert.equal(parseControl(siteAnswers, answer(report)), answer(report));
  assert.equal(parseControl(siteAnswers, answer({})), answer({}));
  for (
    const bad of [null, [], { a1: {} }, { a1: [{ name: 1, state: "assigned" }] }, { a1: [{ name: "v" }] }]
  ) {
    assert.throws(() => parseControl(siteAnswers, answer(bad)), /"standbys" message refused: agents/);
  }
});

t("an assignment is checked before the agent touches anything", () => {
  assert.equal(parseAssignment({ name: "v", path: "/dev/sdb", size: 512 }), {
    name: "v",
    path: "/dev/sdb",
    size: 512,
  });
  assert.match(parseAssignment(null) as string, /must be an object/);
  assert.match(parseAssignment({ name: "../x", path: "/a", size: 1 }) as string, /name/);
  assert.match(parseAssignment({ name: "v", path: "rel/x", size: 1 }) as string, /absolute/);
  assert.match(parseAssignment({ name: "v", path: "/a/../b", size: 1 }) as string, /'\.\.'/);
  assert.match(parseAssignment({ name: "v", path: "/a", size: 0 }) as string, /size/);
  assert.match(parseAssignment({ name: "v", path: "/a", size: "1" }) as string, /size/);
});

// ------------------------------------------------------------------ real processes

interface TaskJson {
  state: string;
}

t("a task created through the API drives an agent started with only its identity", async () => {
  if (!need("control plane with real processes", { tools: ["qemu-io"] })) return;
  const SIZE = 16 * MiB;
  // the agent and the standby have no --volume: their copies (LSP, RSP) come from the tasks
  const { dir, remote, standby, gw, agent, c, lsp, rsp } = await startLabProcesses("control-plane", SIZE);
  try {
    assert.is((await gw.status()).volumes.length, 0, "the agent serves nothing before a task starts");

    /**
     * A task whose LSP is `lspPath` and RSP `rspPath`, both registered with SIZE; the other
     * partitions are records only (the gateways keep their own images).
     */
    const createTask = async (name: string, lspPath: string, rspPath: string, lspName = `${name}-lsp`) => {
      const dev = (p: string) => `${dir}/${name}-${p}.img`;
      const parts: [string, string, string, number][] = [
        [lspName, "app1", lspPath, SIZE],
        [`${name}-lgp`, "lgw", dev("lgp"), SIZE],
        [`${name}-buf`, "lgw", dev("buf"), 256 * MiB],
        [`${name}-rgp`, "rgw", dev("rgp"), SIZE],
        [`${name}-rsp`, "standby", rspPath, SIZE],
      ];
      for (const [n, host, device, sz] of parts) {
        await c.expect(201, "POST", "/api/volumes", { name: n, host, device, size: sz });
      }
      await c.expect(201, "POST", "/api/tasks", taskBody(name, lspPath, rspPath, dev));
    };

    // bad assignments: refused with the agent's reason, the task stays configured, the agents live
    await createTask("norsp", await sparseImage(`${dir}/norsp-lsp.img`, SIZE), `${dir}/no-such-rsp.img`);
    const norsp = await c.req("POST", "/api/tasks/norsp/actions/start", {});
    assert.is(norsp.status, 409, norsp.text);
    assert.match(
      (norsp.body as { error: string }).error,
      /site dr1 cannot assign the standby copy \(RSP\): standby agent a1 cannot hold norsp-lsp: volume .*no-such-rsp\.img does not exist/,
    );
    await createTask(
      "missing",
      `${dir}/no-such-device.img`,
      await sparseImage(`${dir}/missing-rsp.img`, SIZE),
    );
    const missing = await c.req("POST", "/api/tasks/missing/actions/start", {});
    assert.is(missing.status, 409, missing.text);
    assert.match(
      (missing.body as { error: string }).error,
      /agent a1 cannot serve volume missing-lsp: volume .*no-such-device\.img does not exist/,
    );
    await sparseImage(`${dir}/small.img`, MiB);
    await createTask("small", `${dir}/small.img`, await sparseImage(`${dir}/small-rsp.img`, SIZE));
    const small = await c.req("POST", "/api/tasks/small/actions/start", {});
    assert.is(small.status, 409, small.text);
    assert.match(
      (small.body as { error: string }).error,
      new RegExp(`small\\.img is ${MiB} bytes, the assignment of small-lsp says ${SIZE}`),
    );
    assert.is((await c.expect(200, "GET", "/api/tasks/small") as TaskJson).state, "configured");
    const status = await c.expect(200, "GET", "/api/status") as {
      agents: string[];
      assignments: { task: string; state: string; error?: string }[];
    };
    assert.ok(status.agents.includes("a1"), "the agent survived the bad assignments");
    assert.equal(
      status.assignments.filter((a) => a.state === "failed").map((a) => a.task).sort(),
      ["missing", "norsp", "small"],
    );
    assert.equal(
      await standbyRemembers(standby),
      [],
      "the standby copies of the refused tasks were unassigned",
    );
    assert.match(status.assignments.find((a) => a.task === "small")!.error!, /bytes/);

    // the good task: the agent exports vol0 and the standby holds its copy, the write reaches
    // the mirror, the replica and the standby
    await createTask("db", lsp, rsp, "vol0");
    const started = await c.expect(200, "POST", "/api/tasks/db/actions/start") as {
      to: string;
      message: string;
    };
    assert.is(started.to, "syncing");
    assert.is(started.message, "following a1/vol0 at dr1");
    await waitFor(
      async () => (await c.expect(200, "GET", "/api/tasks/db") as TaskJson).state === "protected",
      60_000,
      "the task to be protected",
      250,
    );
    await run("qemu-io", ["-f", "raw", agent.uri("vol0"), "-c", "write -P 0x6b 0 4M", "-c", "flush"]);
    const copies = {
      lsp,
      lgp: gw.mirrorPath("a1", "vol0"),
      rgp: remote.replicaPath("a1", "vol0"),
      rsp,
    };
    const sites = async () => ((await gw.status()) as unknown as { sites: SiteStatus[] }).sites;
    const allEqual = async () => {
      const h = await hashAll(copies);
      assert.is(h.lgp, h.lsp, "the mirror equals the LSP");
      assert.is(h.rgp, h.lsp, "the remote replica equals the LSP");
      assert.is(h.rsp, h.lsp, "the standby's copy equals the LSP");
      return h;
    };
    await siteCaughtUp(gw, "the site to acknowledge the write");
    const first = await allEqual();

    // pause: the agent still exports the volume, the site no longer receives it; resume: the
    // site's copy is synchronised and follows again
    await c.expect(200, "POST", "/api/tasks/db/actions/pause", {});
    await waitFor(
      async () => (await sites()).every((s) => s.connected && !s.volumes.some((v) => v.name === "vol0")),
      20_000,
      "the site's sender to stop carrying the paused volume",
    );
    await run("qemu-io", ["-f", "raw", agent.uri("vol0"), "-c", "write -P 0x3c 4M 2M", "-c", "flush"]);
    await waitMirrorCaughtUp(gw, "a1", "vol0");
    const paused = await hashAll(copies);
    assert.is(paused.lgp, paused.lsp, "the mirror follows a paused task");
    assert.is(paused.rgp, first.rgp, "the replica of a paused task stays as it was");
    assert.not.equal(paused.lsp, first.lsp);
    const resumed = await c.expect(200, "POST", "/api/tasks/db/actions/resume", {}) as { to: string };
    assert.is(resumed.to, "syncing");
    await waitFor(
      async () => (await c.expect(200, "GET", "/api/tasks/db") as TaskJson).state === "protected",
      60_000,
      "the resumed task to be protected",
      250,
    );
    await siteCaughtUp(gw, "the site to catch up after the resume");
    const hashes = await allEqual();

    // the agent remembers its assignment: restarted while the gateway is down, it serves vol0
    await gw.proc.stop();
    await agent.proc.stop();
    await agent.start();
    const read = await run("qemu-io", ["-r", "-f", "raw", agent.uri("vol0"), "-c", "read -P 0x6b 0 4M"]);
    assert.match(read.stdout, /read 4194304\/4194304 bytes/);
    await gw.start();
    await waitFor(() => gw.status().then((s) => s.agents.includes("a1")), 30_000, "the agent to reconnect");
    await waitFor(
      async () => (await gw.status()).volumes.some((v) => v.name === "vol0"),
      20_000,
      "the remembered volume to be announced again",
    );

    // pause, then delete: the export and the replication stop, every image stays as it is; a
    // client connected meanwhile gets its request in flight answered, then errors
    await c.expect(200, "POST", "/api/tasks/db/actions/pause", {});
    const attached = run("qemu-io", [
      "-r",
      "-f",
      "raw",
      agent.uri("vol0"),
      "-c",
      "read -P 0x6b 0 64k",
      "-c",
      "sleep 1500",
      "-c",
      "read 0 64k",
    ], { allowFail: true });
    await new Promise((r) => setTimeout(r, 700));
    await c.expect(200, "DELETE", "/api/tasks/db");
    const during = await attached;
    assert.match(during.stdout, /read 65536\/65536 bytes/, "the read before the deletion");
    assert.match(during.stdout + during.stderr, /read failed/, "the read after it");
    await waitFor(
      async () => (await sites()).every((s) => !s.volumes.some((v) => v.name === "vol0")),
      20_000,
      "the site's sender to stop carrying the volume",
    );
    const gone = await run("qemu-io", ["-r", "-f", "raw", agent.uri("vol0"), "-c", "read 0 4k"], {
      allowFail: true,
    });
    assert.ok(gone.code !== 0, "the export is gone");
    const remembered = JSON.parse(await Deno.readTextFile(`${agent.home}/assignments.json`)) as {
      volumes: { name: string }[];
    };
    assert.equal(remembered.volumes, [], "the agent forgot the assignment");
    assert.equal(await standbyRemembers(standby), [], "the standby forgot its copy");
    assert.equal(await hashAll(copies), hashes, "every copy's data stays in place");
    assert.ok(
      agent.proc.records().some((r) =>
        r.msg === "volume unassigned: no longer exported, its data left in place"
      ),
    );
  } finally {
    await agent.proc.stop();
    await gw.proc.stop().catch(() => {});
    await standby.proc.stop();
    await remote.proc.stop();
  }
});

t.run();
