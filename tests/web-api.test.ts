// The task API: CRUD of sites, hosts, volumes and tasks with their validation, the state
// machine (only legal transitions), the actions, the event stream and /metrics.
// The first part runs the web server in this process with recording task actions and a status
// the test sets; the second runs a real topology (local gateway, agent, remote site) and drives
// a task through the gateway's own actions: adopt the agent's volume, follow it to protected,
// recover it from the policy's choice.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { run, startTopology, tempDir, waitFor } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { readEvents, WebClient } from "./lib/browser.ts";
import { openDatabase } from "../src/db/db.ts";
import { setLogSink } from "../src/log.ts";
import { startWebServer, type WebServer } from "../src/web/web-server.ts";
import { ActionError, type TaskActions } from "../src/tasks/actions.ts";
import { type Task, TASK_STATES, TRANSITIONS } from "../src/tasks/model.ts";
import { type RecoveryRow, taskEvent, type TaskStatusView } from "../src/tasks/gateway-actions.ts";
import { registerDbTask } from "./lib/inventory.ts";
import { gatewayStatus } from "./lib/status.ts";

const t = suite("web API");
const baseTask = {
  name: "t",
  description: "",
  group: { local: { site: "prod" }, remotes: [{ site: "dr1" }] },
  mirror: {},
  recovery: {},
  createdAt: 0,
  updatedAt: 0,
};
const MiB = 1024 * 1024;

// ------------------------------------------------------------------ in-process server

const calls: { action: string; body?: unknown }[] = [];
let refuseNext: ActionError | undefined;
const act = (action: string, result: Record<string, unknown> = {}) => (_t: unknown, body?: unknown) => {
  calls.push({ action, body });
  if (refuseNext) {
    const e = refuseNext;
    refuseNext = undefined;
    return Promise.reject(e);
  }
  return Promise.resolve(result);
};
const actions: TaskActions = {
  start: act("start"),
  pause: act("pause"),
  resume: act("resume"),
  failoverTest: act("failoverTest"),
  endFailoverTest: act("endFailoverTest"),
  failover: act("failover", { message: "service web now runs at site dr1" }),
  failback: act("failback", { then: ["failed-back"] }),
  recoveryCandidates: () =>
    Promise.resolve({
      candidates: [],
      chosen: "rgp@dr1",
      explanation: "rgp@dr1 chosen: the only valid source",
    }),
  recover: act("recover", { message: "recovery 7", detail: { recovery: 7 } }),
  retry: act("retry", { message: "the copies are assigned again" }),
  schedule: (task, req) =>
    Promise.resolve({ id: "3", task: task.name, action: req.action, at: req.at, status: "scheduled" }),
  listSchedules: () => Promise.resolve([]),
  cancelSchedule: () => Promise.resolve(),
};

/** The status the server reports (the test changes it). */
const status = {
  role: "local-gateway",
  site: "prod",
  uptimeMs: 1000,
  agents: ["a1"],
  refused: { intruder: 2 },
  liveness: [{ agent: "a1", state: "TRUST", sinceLastHeartbeatMs: 80, serviceHealthy: true }],
  heartbeats: { accepted: 10, dropped: { "bad-mac": 1 } },
  services: [{ name: "web", state: "protected", site: "dr1" }],
  journal: { tail: 0, durable: 4096, head: 8192, capacity: 1 << 26, used: 8192 },
  volumes: [{ agent: "a1", name: "vol0", size: 16 * MiB, lastSeq: 12, durableSeq: 11, mirrorSeq: 10 }],
  sites: [{
    site: "dr1",
    connected: true,
    lagBytes: 4096,
    lagSeconds: 0.25,
    inFlightBytes: 4096,
    rttMs: 1.5,
    ackedBytes: 1000,
    volumes: [{ agent: "a1", name: "vol0", state: "consistent", ackedSeq: 9, lagRecords: 2 }],
  }],
  /** The control plane's assignments (a test sets a refused one). */
  assignments: [] as Record<string, unknown>[],
};
const recoveries = [{
  id: 7,
  volume: "a1/vol0",
  status: "running",
  createdAt: Date.now(),
  progress: { phase: "copy", chunks: 16, done: 4, bytesMoved: 4 * MiB, rateBps: 8 * MiB, etaMs: 1500 },
}];

let server: WebServer;
let api: WebClient;
let closeDb: () => void;

t.before(async () => {
  setLogSink(() => {}); // this process's server logs are not what is tested
  const dir = await tempDir("web-api");
  const { db, close } = await openDatabase(`file:${dir}/web.db`);
  closeDb = close;
  await Deno.writeTextFile(`${dir}/pw`, "a long admin password\n", { mode: 0o600 });
  server = await startWebServer({
    listen: { transport: "tcp", hostname: "127.0.0.1", port: 0 },
    db,
    fileToken: "file-token-for-tests-0123456789",
    adminPasswordFile: `${dir}/pw`,
    status: () => gatewayStatus(structuredClone(status)),
    actions,
    recoveries: () => Promise.resolve(structuredClone(recoveries)),
  });
  api = new WebClient(server.url);
  await api.login("admin", "a long admin password");
});

t.after(async () => {
  await server.close();
  closeDb();
});

const GiB = 1024 * MiB;

async function inventory(c: WebClient) {
  await c.expect(201, "POST", "/api/sites", { name: "prod", role: "local", description: "production" });
  await c.expect(201, "POST", "/api/sites", { name: "dr1", role: "remote" });
  await c.expect(201, "POST", "/api/hosts", { name: "app1", site: "prod", role: "application", agent: "a1" });
  await c.expect(201, "POST", "/api/hosts", {
    name: "lgw",
    site: "prod",
    role: "gateway",
    address: "10.0.0.2",
  });
  await c.expect(201, "POST", "/api/hosts", { name: "rgw", site: "dr1", role: "gateway" });
  await c.expect(201, "POST", "/api/hosts", { name: "standby1", site: "dr1", role: "application" });
  const vols: [string, string, string, number][] = [
    ["vol0", "app1", "/dev/vg0/lsp", GiB],
    ["lgp0", "lgw", "/dev/vg0/lgp", GiB],
    ["buf0", "lgw", "/dev/vg0/buffer", 2 * GiB],
    ["rgp0", "rgw", "/dev/vg0/rgp", GiB],
    ["rsp0", "standby1", "/dev/vg0/rsp", GiB],
    ["rsp-small", "standby1", "/dev/vg0/rsp2", GiB / 2],
    ["lsp1", "app1", "/dev/vg0/lsp1", GiB],
  ];
  for (const [name, host, device, size] of vols) {
    await c.expect(201, "POST", "/api/volumes", { name, host, device, size });
  }
}

function group(over: { rsp?: string; lsp?: string; lspHost?: string } = {}) {
  return {
    local: {
      site: "prod",
      lsp: { host: over.lspHost ?? "app1", device: over.lsp ?? "/dev/vg0/lsp" },
      lgp: { host: "lgw", device: "/dev/vg0/lgp" },
      buffer: { host: "lgw", device: "/dev/vg0/buffer" },
    },
    remotes: [{
      site: "dr1",
      rgp: { host: "rgw", device: "/dev/vg0/rgp" },
      rsp: { host: "standby1", device: over.rsp ?? "/dev/vg0/rsp" },
    }],
  };
}

t("sites, hosts and volumes: create, read, change, delete, with their checks", async () => {
  await inventory(api);
  const sites = await api.expect(200, "GET", "/api/sites") as { name: string; role: string }[];
  assert.equal(sites.map((s) => `${s.name}:${s.role}`), ["dr1:remote", "prod:local"]);
  const h = await api.expect(200, "GET", "/api/hosts/app1") as { agent: string; site: string };
  assert.equal([h.agent, h.site], ["a1", "prod"]);
  assert.is((await api.expect(200, "GET", "/api/volumes") as unknown[]).length, 7);

  const unknownSite = await api.req("POST", "/api/hosts", { name: "h9", site: "mars", role: "gateway" });
  assert.is(unknownSite.status, 400);
  assert.match((unknownSite.body as { error: string }).error, /^site: unknown site "mars"/);
  const unknownHost = await api.req("POST", "/api/volumes", {
    name: "v9",
    host: "ghost",
    device: "/dev/x",
    size: 512,
  });
  assert.is(unknownHost.status, 400);
  assert.match((unknownHost.body as { error: string }).error, /^host: unknown host "ghost"/);
  assert.is((await api.req("POST", "/api/sites", { name: "prod", role: "local" })).status, 409);
  const twice = await api.req("POST", "/api/volumes", {
    name: "v9",
    host: "app1",
    device: "/dev/vg0/lsp",
    size: 512,
  });
  assert.is(twice.status, 409);
  assert.match((twice.body as { error: string }).error, /already volume "vol0"/);

  const changed = await api.expect(200, "PUT", "/api/sites/dr1", {
    role: "remote",
    description: "second center",
  }) as {
    description: string;
  };
  assert.is(changed.description, "second center");
  const rename = await api.req("PUT", "/api/sites/dr1", { name: "dr2", role: "remote" });
  assert.is(rename.status, 400);
  assert.match((rename.body as { error: string }).error, /^name: must be "dr1"/);
  assert.is((await api.req("PUT", "/api/sites/nowhere", { role: "remote" })).status, 404);
  const busySite = await api.req("DELETE", "/api/sites/prod");
  assert.is(busySite.status, 409);
  assert.match((busySite.body as { error: string }).error, /still has host\(s\)/);
  const busyHost = await api.req("DELETE", "/api/hosts/app1");
  assert.is(busyHost.status, 409);
  assert.match((busyHost.body as { error: string }).error, /still has volume\(s\)/);
  await api.expect(201, "POST", "/api/hosts", { name: "spare", site: "prod", role: "gateway" });
  await api.expect(200, "PUT", "/api/hosts/spare", { site: "prod", role: "application" });
  await api.expect(200, "DELETE", "/api/hosts/spare");
  assert.is((await api.req("GET", "/api/hosts/spare")).status, 404);
  const audit = await api.expect(200, "GET", "/api/audit?limit=100") as { cause: string }[];
  assert.ok(
    audit.some((a) => a.cause === "host spare deleted by user admin"),
    "changes are audited with who",
  );
});

t("tasks: every partition of a group the same size, every host known, partitions not shared", async () => {
  const bad = async (body: unknown, want: RegExp) => {
    const a = await api.req("POST", "/api/tasks", body);
    assert.is(a.status, 400, `${a.text}`);
    assert.match((a.body as { error: string }).error, want);
    return a.body as { issues: { path: string }[] };
  };
  const sized = await bad(
    { name: "t1", group: group({ rsp: "/dev/vg0/rsp2" }) },
    /group\.remotes\.0\.rsp: size 512 MiB \(536870912 bytes\) differs from the LSP's 1 GiB .*same size/,
  );
  assert.equal(sized.issues.map((i) => i.path), ["group.remotes.0.rsp"]);
  await bad(
    { name: "t1", group: group({ lspHost: "nobody" }) },
    /group\.local\.lsp\.host: unknown host "nobody"/,
  );
  await bad({ name: "t1", group: group({ lsp: "/dev/vg0/none" }) }, /no volume registered on host "app1"/);
  await bad(
    { name: "t1", group: group({ lspHost: "lgw", lsp: "/dev/vg0/lgp" }) },
    /must be on a application host/,
  );
  await bad(
    { name: "t1", group: { ...group(), remotes: [] } },
    /group\.remotes: needs at least one remote center/,
  );
  await bad(
    { name: "t1", group: group(), mirror: { ackPoint: "moon" } },
    /mirror\.ackPoint: must be "lgp", "rgp" or "rsp"/,
  );
  await bad(
    { name: "t1", group: group(), recovery: { strategy: "scheduled" } },
    /recovery\.schedule: is required when the strategy is scheduled/,
  );
  await bad(
    { name: "t1", group: group(), mirror: { bufferBound: 3 * GiB } },
    /mirror\.bufferBound: 3 GiB is more than the buffer partition holds/,
  );

  const made = await api.expect(201, "POST", "/api/tasks", {
    name: "t1",
    description: "the database",
    group: group(),
    mirror: { ackPoint: "rgp", congestion: "pull-ahead", bandwidthLimit: 50 * MiB, compression: true },
    recovery: { strategy: "scheduled", mode: "policy", schedule: { time: "02:30" } },
    service: "web",
  }) as { state: string; allowed: string[]; mirror: { ackPoint: string } };
  assert.is(made.state, "configured");
  assert.equal(made.allowed, ["start"]);
  assert.is(made.mirror.ackPoint, "rgp");
  const shared = await api.req("POST", "/api/tasks", { name: "t2", group: group({ lsp: "/dev/vg0/lsp1" }) });
  assert.is(shared.status, 400);
  assert.match((shared.body as { error: string }).error, /belongs to task "t1"/);
  // what a task uses cannot be deleted or resized from under it
  assert.is((await api.req("DELETE", "/api/volumes/rgp0")).status, 409);
  assert.is(
    (await api.req("PUT", "/api/volumes/rgp0", { host: "rgw", device: "/dev/vg0/rgp", size: 2 * GiB }))
      .status,
    409,
  );
  assert.is((await api.req("PUT", "/api/sites/dr1", { role: "local" })).status, 409);
  // a change of the mirror strategy is fine while configured
  const upd = await api.expect(200, "PUT", "/api/tasks/t1", {
    group: group(),
    mirror: { ackPoint: "rsp" },
    service: "web",
  }) as { mirror: { ackPoint: string; congestion: string } };
  assert.equal([upd.mirror.ackPoint, upd.mirror.congestion], ["rsp", "block"]);
  assert.is((await api.expect(200, "GET", "/api/tasks") as unknown[]).length, 1);
});

t("the state machine allows only its transitions, through the actions", async () => {
  const step = async (action: string, body: unknown, to: string) => {
    const r = await api.expect(200, "POST", `/api/tasks/t1/actions/${action}`, body) as {
      to: string;
      task: { state: string; allowed: string[] };
    };
    assert.is(r.to, to, action);
    assert.is(r.task.state, to);
    return r;
  };
  const illegal = async (action: string, body: unknown = {}) => {
    const before = calls.length;
    const a = await api.req("POST", `/api/tasks/t1/actions/${action}`, body);
    assert.is(a.status, 409, `${action}: ${a.text}`);
    const b = a.body as { error: string; state: string; allowed: string[] };
    assert.match(b.error, /^a task in state "[a-z-]+" does not accept "[a-z-]+"; allowed in/);
    assert.equal(b.allowed, Object.keys(TRANSITIONS[b.state as keyof typeof TRANSITIONS]));
    assert.is(calls.length, before, `${action}: the action did not run`);
  };
  for (const a of ["pause", "resume", "failover", "failback", "recover", "end-test", "failover-test"]) {
    await illegal(a, a === "recover" ? { mode: "policy" } : {});
  }
  assert.is((await api.req("POST", "/api/tasks/t1/actions/explode", {})).status, 404);
  await step("start", undefined, "syncing");
  await illegal("start");
  // the control plane's events (here: the store, as the status follower does)
  await server.store.applyEvent("t1", "synced", "every copy consistent");
  await step("failover-test", { durationSeconds: 600 }, "testing");
  await illegal("pause");
  await step("end-test", {}, "protected");
  await step("pause", { reason: "maintenance" }, "paused");
  // the group may change while paused
  await api.expect(200, "PUT", "/api/tasks/t1", { group: group(), service: "web" });
  await step("resume", {}, "syncing");
  await server.store.applyEvent("t1", "synced", "every copy consistent");
  const fo = await step("failover", { reason: "drill" }, "failed-over") as { message?: string };
  assert.is(fo.message, "service web now runs at site dr1");
  await illegal("failover");
  await illegal("recover", { mode: "policy" });
  assert.is((await api.req("DELETE", "/api/tasks/t1")).status, 409, "a running task cannot be deleted");
  // failback: failing-back, and the action's follow-up event brings it to syncing
  const fb = await api.expect(200, "POST", "/api/tasks/t1/actions/failback", { strategy: "full" }) as {
    from: string;
    to: string;
  };
  assert.equal([fb.from, fb.to], ["failed-over", "syncing"]);
  await server.store.applyEvent("t1", "synced", "every copy consistent");
  await step("recover", { mode: "manual", source: "rgp@dr1", strategy: "full", target: "lgp" }, "recovering");
  assert.equal(calls.at(-1), {
    action: "recover",
    body: {
      mode: "manual",
      source: "rgp@dr1",
      strategy: "full",
      target: "lgp",
      force: false,
      method: "auto",
    },
  });
  await illegal("pause");
  await server.store.applyEvent("t1", "recovered", "recovery 7 done");
  // a refused action leaves the state alone and says why
  refuseNext = new ActionError("agent a1 is fenced", 409);
  const refused = await api.req("POST", "/api/tasks/t1/actions/pause", {});
  assert.is(refused.status, 409);
  assert.is((refused.body as { error: string }).error, "agent a1 is fenced");
  assert.is((await api.expect(200, "GET", "/api/tasks/t1") as { state: string }).state, "syncing");
  // every state is reachable and named in the model
  assert.equal(Object.keys(TRANSITIONS).sort(), [...TASK_STATES].sort());
  const audit = await api.expect(200, "GET", "/api/audit?limit=200") as {
    subject: string;
    fromState: string;
    toState: string;
  }[];
  assert.ok(
    audit.some((a) =>
      a.subject === "task:t1" && a.fromState === "failed-over" && a.toState === "failing-back"
    ),
  );
});

t("a failback that goes on in the background ends failing-back when it ends, done or failed", async () => {
  const state = async () => (await api.expect(200, "GET", "/api/tasks/t1") as { state: string }).state;
  const original = actions.failback;
  try {
    for (const [outcome, end] of [["done", "syncing"], ["failed", "failed-over"]] as const) {
      await server.store.applyEvent("t1", "synced", "every copy consistent");
      await server.store.applyEvent("t1", "failover", "drill");
      let finish!: (e: { event: "failed-back" | "failback-failed"; cause: string }) => void;
      actions.failback = () =>
        Promise.resolve({ later: new Promise((r) => finish = r), message: "failback started" });
      const fb = await api.expect(200, "POST", "/api/tasks/t1/actions/failback", { strategy: "full" }) as {
        to: string;
      };
      assert.is(fb.to, "failing-back");
      assert.is(await state(), "failing-back", "still going on");
      finish(
        outcome === "done"
          ? { event: "failed-back", cause: "done" }
          : { event: "failback-failed", cause: "x" },
      );
      await waitFor(async () => await state() === end, 5000, `failback ${outcome}: ${end}`);
    }
  } finally {
    actions.failback = original;
  }
  // back to where the next tests expect the task
  await server.store.applyEvent("t1", "failback", "test");
  await server.store.applyEvent("t1", "failed-back", "test");
});

t("recovery candidates, schedules and their checks", async () => {
  const c = await api.expect(200, "GET", "/api/tasks/t1/recovery-candidates?point=seq:10&strategy=full") as {
    chosen: string;
  };
  assert.is(c.chosen, "rgp@dr1");
  assert.is((await api.req("GET", "/api/tasks/t1/recovery-candidates?point=yesterday")).status, 400);
  const past = await api.req("POST", "/api/tasks/t1/schedules", {
    action: "recover",
    at: 1000,
    recover: { mode: "policy" },
  });
  assert.is(past.status, 400);
  assert.match((past.body as { error: string }).error, /^at: must be in the future/);
  const test = await api.req("POST", "/api/tasks/t1/schedules", {
    action: "failover-test",
    at: Date.now() + 3_600_000,
  });
  assert.is(test.status, 400);
  assert.match((test.body as { error: string }).error, /^action: .*only recoveries are scheduled/);
  const s = await api.expect(201, "POST", "/api/tasks/t1/schedules", {
    action: "recover",
    at: Date.now() + 3_600_000,
    recover: { mode: "policy", strategy: "fast" },
  }) as { id: string; status: string };
  assert.is(s.status, "scheduled");
  await api.expect(200, "DELETE", `/api/tasks/t1/schedules/${s.id}`);
  assert.is((await api.req("DELETE", "/api/tasks/t1/schedules/..%2Fx")).status, 400);
});

t("the event stream delivers status snapshots and task changes", async () => {
  const headers = { authorization: "Bearer file-token-for-tests-0123456789" };
  const bad = await fetch(`${server.url}/api/events?filter=task,weather`, { headers });
  assert.is(bad.status, 400);
  assert.match((await bad.json()).error, /unknown event kind\(s\) weather/);
  const got = readEvents(
    server.url,
    headers,
    "/api/events?filter=status,task",
    (evs) =>
      evs.some((e) => e.data.kind === "status") &&
      evs.some((e) =>
        e.data.kind === "task" && e.data.message === "task t1: syncing → paused (pause by user admin)"
      ),
  );
  await new Promise((r) => setTimeout(r, 300));
  await api.expect(200, "POST", "/api/tasks/t1/actions/pause", { reason: "events" });
  const evs = await got;
  const st = evs.find((e) => e.data.kind === "status")!.data.data as {
    sites: { lagBytes: number }[];
    rates: unknown;
  };
  assert.is(st.sites[0].lagBytes, 4096);
  assert.ok(st.rates, "with the rates the collector derives");
  assert.ok(evs.every((e) => e.data.kind === "status" || e.data.kind === "task"), "filtered");
  // a detector change is pushed as its own event
  // (the stream replays kept events, so one published before it is connected still arrives)
  const det = readEvents(
    server.url,
    headers,
    "/api/events?filter=detector",
    (e) => e.some((x) => x.data.message === "agent a1: TRUST → SUSPECT"),
  );
  status.liveness[0].state = "SUSPECT";
  const d = await det;
  assert.ok(d.every((x) => x.data.kind === "detector"));
  status.liveness[0].state = "TRUST";
  // and the kept events can be fetched without a stream
  const recent = await api.expect(200, "GET", "/api/events/recent?filter=task") as { kind: string }[];
  assert.ok(recent.length >= 5 && recent.every((e) => e.kind === "task"));
});

t("a failed start stays on the task, in its problems and the events, until a retry succeeds", async () => {
  for (const [name, host, device] of [["lgp1", "lgw", "/dev/vg0/lgp1"], ["rgp1", "rgw", "/dev/vg0/rgp1"]]) {
    await api.expect(201, "POST", "/api/volumes", { name, host, device, size: GiB });
  }
  await api.expect(201, "POST", "/api/volumes", {
    name: "rsp1",
    host: "standby1",
    device: "/dev/vg0/rsp1",
    size: GiB,
  });
  const g = group({ lsp: "/dev/vg0/lsp1", rsp: "/dev/vg0/rsp1" });
  g.local.lgp.device = "/dev/vg0/lgp1";
  g.remotes[0].rgp.device = "/dev/vg0/rgp1";
  // the wizard's check: the name may still be missing; t1's partitions are taken, its buffer is shared
  const taken = await api.expect(200, "POST", "/api/tasks/check", { group: group() }) as {
    issues: { path: string; message: string }[];
  };
  assert.ok(taken.issues.length > 0 && taken.issues.every((i) => /belongs to task "t1"/.test(i.message)));
  assert.not.ok(taken.issues.some((i) => i.path === "name" || i.path === "group.local.buffer"));
  assert.equal(await api.expect(200, "POST", "/api/tasks/check", { group: g }), { issues: [] });
  await api.expect(201, "POST", "/api/tasks", { name: "t3", group: g });

  type TaskJson = {
    state: string;
    failure?: { action: string; reason: string };
    problems: { kind: string; message: string }[];
  };
  refuseNext = new ActionError("agent a1 cannot serve volume lsp1: gone", 409);
  assert.is((await api.req("POST", "/api/tasks/t3/actions/start", {})).status, 409);
  const failed = await api.expect(200, "GET", "/api/tasks/t3") as TaskJson;
  assert.is(failed.state, "configured");
  assert.equal(failed.failure?.reason, "agent a1 cannot serve volume lsp1: gone");
  assert.equal(failed.problems.map((p) => p.message), [
    "start failed: agent a1 cannot serve volume lsp1: gone",
  ]);
  const listed = await api.expect(200, "GET", "/api/tasks") as (TaskJson & { name: string })[];
  assert.is(listed.find((x) => x.name === "t3")!.problems.length, 1);
  const events = async () =>
    (await api.expect(200, "GET", "/api/events/recent?filter=task") as { message: string }[]).map((e) =>
      e.message
    );
  assert.ok((await events()).includes("task t3: start failed: agent a1 cannot serve volume lsp1: gone"));

  // a retry that fails again keeps the failure; one that succeeds clears it
  refuseNext = new ActionError("agent a1 cannot serve volume lsp1: still gone", 409);
  assert.is((await api.req("POST", "/api/tasks/t3/retry", {})).status, 409);
  assert.is(
    (await api.expect(200, "GET", "/api/tasks/t3") as TaskJson).failure?.reason,
    "agent a1 cannot serve volume lsp1: still gone",
  );
  const ok = await api.expect(200, "POST", "/api/tasks/t3/retry", {}) as { to: string; task: TaskJson };
  assert.is(ok.to, "syncing");
  assert.equal([ok.task.failure, ok.task.problems], [undefined, []]);
  assert.is(calls.at(-1)!.action, "start", "the retry ran the start again");
  assert.ok((await events()).includes("task t3: start succeeded (it had failed)"));
  const nothing = await api.req("POST", "/api/tasks/t3/retry", {});
  assert.is(nothing.status, 409);
  assert.match((nothing.body as { error: string }).error, /task "t3" has no failed step to retry/);

  // a copy refused after the start (from the control plane's status): a problem, an event, a retry
  status.assignments = [{
    task: "t3",
    kind: "rsp",
    site: "dr1",
    agent: "a1",
    volume: "lsp1",
    state: "failed",
    error: "volume /dev/vg0/rsp1 does not exist",
    since: Date.now(),
  }];
  const refusedCopy = await api.expect(200, "GET", "/api/tasks/t3") as TaskJson;
  assert.equal(refusedCopy.problems.map((p) => p.kind), ["assignment"]);
  await waitFor(
    async () =>
      (await events()).includes(
        "task t3: the standby copy at dr1 cannot be assigned: volume /dev/vg0/rsp1 does not exist",
      ),
    5000,
    "the refused copy's event",
  );
  await api.expect(200, "POST", "/api/tasks/t3/retry", {});
  assert.is(calls.at(-1)!.action, "retry");
  status.assignments = [];
});

t("/metrics is valid Prometheus text with lag, journal use, detector state, recovery progress", async () => {
  const r = await fetch(`${server.url}/metrics`, {
    headers: { authorization: "Bearer file-token-for-tests-0123456789" },
  });
  assert.is(r.status, 200);
  assert.match(r.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  const m = parsePrometheus(await r.text());
  assert.is(m.get('continuum_site_lag_bytes{site="dr1"}'), 4096);
  assert.is(m.get('continuum_site_lag_seconds{site="dr1"}'), 0.25);
  assert.is(m.get('continuum_site_lag_records{site="dr1",agent="a1",volume="vol0"}'), 2);
  assert.is(m.get("continuum_journal_used_bytes"), 8192);
  assert.is(m.get("continuum_journal_used_ratio"), 8192 / (1 << 26));
  assert.is(m.get('continuum_detector_state{agent="a1",state="TRUST"}'), 1);
  assert.is(m.get('continuum_detector_state{agent="a1",state="FAILURE"}'), 0);
  assert.is(m.get('continuum_recovery_progress_ratio{id="7",volume="a1/vol0"}'), 0.25);
  assert.is(m.get('continuum_recovery_eta_seconds{id="7",volume="a1/vol0"}'), 1.5);
  assert.is(m.get('continuum_recoveries{status="running"}'), 1);
  assert.is(m.get('continuum_task_state{task="t1",state="paused"}'), 1);
  assert.is(m.get('continuum_service_state{service="web",state="protected"}'), 1);
  assert.is(m.get('continuum_agent_refused_total{agent="intruder"}'), 2);
  assert.is(m.get('continuum_site_copy_state{site="dr1",agent="a1",volume="vol0",state="consistent"}'), 1);
  // values move with the status
  status.sites[0].lagBytes = 1 << 20;
  status.sites[0].ackedBytes += 5000;
  const again = parsePrometheus(
    await (await fetch(`${server.url}/metrics`, {
      headers: { authorization: "Bearer file-token-for-tests-0123456789" },
    })).text(),
  );
  assert.is(again.get('continuum_site_lag_bytes{site="dr1"}'), 1 << 20);
  assert.is(again.get('continuum_site_replicated_bytes_total{site="dr1"}'), 6000);
  // label values are escaped
  status.refused = { 'we"ird\\name\n': 1 } as unknown as typeof status.refused;
  const esc = await (await fetch(`${server.url}/metrics`, {
    headers: { authorization: "Bearer file-token-for-tests-0123456789" },
  })).text();
  assert.ok(parsePrometheus(esc).has('continuum_agent_refused_total{agent="we\\"ird\\\\name\\n"}'));
});

/**
 * A strict parser of the Prometheus text format 0.0.4: every line a comment (HELP/TYPE), a
 * sample or empty; each family's TYPE before its samples and given once; names and labels
 * well-formed; values numbers. Returns "name{labels}" → value.
 */
function parsePrometheus(text: string): Map<string, number> {
  const out = new Map<string, number>();
  const types = new Map<string, string>();
  const name = "[a-zA-Z_:][a-zA-Z0-9_:]*";
  const label = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
  const sample = new RegExp(`^(${name})(\\{(?:${label})(?:,${label})*\\})? (\\S+)(?: -?\\d+)?$`);
  assert.ok(text.endsWith("\n"), "ends with a newline");
  for (const line of text.slice(0, -1).split("\n")) {
    if (line === "") continue;
    let m;
    if ((m = new RegExp(`^# TYPE (${name}) (counter|gauge|histogram|summary|untyped)$`).exec(line))) {
      assert.not.ok(types.has(m[1]), `TYPE of ${m[1]} given twice`);
      types.set(m[1], m[2]);
      continue;
    }
    if (new RegExp(`^# HELP ${name} `).test(line)) continue;
    assert.not.ok(line.startsWith("#") && /^# (TYPE|HELP)/.test(line), `malformed: ${line}`);
    if (line.startsWith("#")) continue;
    m = sample.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    assert.ok(types.has(m![1]), `${m![1]} has no TYPE before its sample`);
    const v = m![3];
    assert.ok(/^(NaN|[+-]Inf|-?\d+(\.\d+)?(e[+-]?\d+)?)$/.test(v), `value ${v}`);
    const key = `${m![1]}${m![2] ?? ""}`;
    assert.not.ok(out.has(key), `${key} twice`);
    out.set(key, Number(v.replace("Inf", "Infinity")));
  }
  return out;
}

t("the status moves a task the way the control plane would (taskEvent)", () => {
  const task = (state: string) => ({ ...baseTask, state, stateSince: 1000 }) as Task;
  const site = (connected: boolean, state: string) => ({
    sites: [{ site: "dr1", connected, volumes: [{ agent: "a1", name: "vol0", state }] }],
  });
  const ev = (state: string, st: TaskStatusView, rec: RecoveryRow[] = []) =>
    taskEvent(task(state), "a1/vol0", st, rec)?.event;
  assert.is(ev("syncing", site(true, "consistent")), "synced");
  assert.is(ev("syncing", site(true, "syncing")), undefined, "still copying");
  assert.is(ev("syncing", site(false, "syncing")), "degrade");
  assert.is(ev("protected", site(true, "consistent")), undefined);
  assert.is(ev("protected", site(true, "degraded")), "degrade");
  assert.is(ev("protected", site(false, "consistent")), "degrade");
  assert.is(ev("protected", { sites: [] }), "degrade", "a site missing from the status");
  assert.is(ev("degraded", site(true, "consistent")), "synced");
  assert.is(ev("paused", site(false, "degraded")), undefined, "the operator's states are left alone");
  const rec = (status: string, createdAt = 2000) => [{ id: 1, volume: "a1/vol0", status, createdAt }];
  assert.is(ev("recovering", {}, rec("running")), undefined);
  assert.is(ev("recovering", {}, rec("done")), "recovered");
  assert.is(ev("recovering", {}, rec("failed")), "recovery-failed");
  assert.is(ev("recovering", {}, rec("done", -10_000)), undefined, "an older recovery does not count");
  assert.is(ev("recovering", {}, [{ id: 2, volume: "a2/vol0", status: "done", createdAt: 2000 }]), undefined);
});

// ------------------------------------------------------------------ a real topology

t("a real gateway: a task adopts the agent's volume, follows it to protected, recovers it", async () => {
  if (!need("web API with a real topology", { tools: ["qemu-io"] })) return;
  const SIZE = 16 * MiB;
  // the images live under test-output: that is the allowed device list here
  const allowed = new URL("../test-output/", import.meta.url).pathname;
  const topo = await startTopology("web-api-topo", {
    size: SIZE,
    sites: ["dr1"],
    gatewayExtra: ["--device-prefix", allowed],
  });
  try {
    const c = new WebClient(`http://127.0.0.1:${topo.gw.httpPort}`, { token: topo.gw.token });
    await registerDbTask(c, topo, SIZE);
    const outside = await c.req("POST", "/api/volumes", {
      name: "etc",
      host: "app1",
      device: "/etc/passwd",
      size: 512,
    });
    assert.is(outside.status, 400, "the gateway's --device-prefix is the allowed list");
    const started = await c.expect(200, "POST", "/api/tasks/db/actions/start") as {
      to: string;
      message: string;
    };
    assert.is(started.to, "syncing");
    assert.is(started.message, "following a1/vol0 at dr1");
    await waitFor(
      async () => (await c.expect(200, "GET", "/api/tasks/db") as { state: string }).state === "protected",
      60_000,
      "the task to be protected",
      250,
    );

    // a write shows in the metrics: the sequence and the replicated bytes move
    const before = parsePrometheus((await c.req("GET", "/metrics")).text);
    await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x5a 0 4M", "-c", "flush"]);
    await topo.caughtUp();
    const after = parsePrometheus((await c.req("GET", "/metrics")).text);
    const seq = 'continuum_volume_last_seq{agent="a1",volume="vol0"}';
    assert.ok(after.get(seq)! > before.get(seq)!, `${seq} moved`);
    const sent = 'continuum_site_replicated_bytes_total{site="dr1"}';
    assert.ok(after.get(sent)! >= before.get(sent)! + 4 * MiB, `${sent} moved by the write`);
    assert.is(after.get('continuum_site_connected{site="dr1"}'), 1);
    assert.is(after.get('continuum_detector_state{agent="a1",state="TRUST"}') ?? 1, 1);
    assert.is(after.get('continuum_task_state{task="db",state="protected"}'), 1);

    // failover needs a service (failover tests: tests/failover-test-copy.test.ts)
    const fo = await c.req("POST", "/api/tasks/db/actions/failover", {});
    assert.is(fo.status, 409);
    assert.match((fo.body as { error: string }).error, /names no protected service/);

    // the policy's candidates, then a recovery of the mirror the task follows to its end
    const cand = await c.expect(200, "GET", "/api/tasks/db/recovery-candidates") as {
      chosen: string;
      explanation: string;
      candidates: { source: string; valid: boolean }[];
    };
    assert.ok(cand.candidates.some((x) => x.source === "rgp@dr1"), JSON.stringify(cand));
    assert.match(cand.explanation, / chosen: /);
    const rec = await c.expect(200, "POST", "/api/tasks/db/actions/recover", {
      mode: "policy",
      strategy: "fast",
      target: "lgp",
    }) as { to: string; detail: { recovery: number; source: string } };
    assert.is(rec.to, "recovering");
    assert.match(rec.detail.source, /^(rgp|rsp)@dr1$/);
    await waitFor(
      async () => {
        const s = (await c.expect(200, "GET", "/api/tasks/db") as { state: string }).state;
        return s === "syncing" || s === "protected" ? s : undefined;
      },
      120_000,
      "the recovery to end and the task to follow",
      250,
    );
    const audit = await c.expect(200, "GET", "/api/audit?limit=300") as {
      subject: string;
      toState: string;
      cause: string;
    }[];
    assert.ok(
      audit.some((a) =>
        a.subject === "task:db" && a.toState === "syncing" && /recovery \d+ of a1\/vol0 done/.test(a.cause)
      ),
      "recovered by the status follower",
    );
    await waitFor(
      async () => (await c.expect(200, "GET", "/api/tasks/db") as { state: string }).state === "protected",
      60_000,
      "protected again",
      250,
    );
  } finally {
    await topo.stop();
  }
});

t.run();
