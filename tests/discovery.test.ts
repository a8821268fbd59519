// Discovery through the API, on a real topology whose agents start with their identity and a
// --device-prefix only and whose inventory nobody registers: the sites, the gateways, the agent,
// the standby agent and their devices appear by themselves (discovered, last seen) and age while
// away; a discovered device is adopted into a task with the gateways' copies the proposal makes,
// which is protected; bad queries and bodies are refused with field-level messages; a start the
// agent refuses (a device outside its --device-prefix) stays on the task, also after a retry.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { hashAll, run, sparseImage, waitFor } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { type LabProcesses, siteCaughtUp, startLabProcesses } from "./lib/control-plane-lab.ts";

const t = suite("discovery API");
const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

interface Found {
  name: string;
  discovered: boolean;
  lastSeen: number | null;
}
type Volume = Found & { host: string; device: string; size: number };
type Host = Found & { site: string; role: string; agent?: string };
interface Proposal {
  group: unknown;
  adopt: { name: string; host: string; device: string }[];
  notes: { path: string; message: string }[];
  complete: boolean;
}

let lab: LabProcesses | undefined;

t.before(async () => {
  if (!need("discovery API", { tools: ["qemu-io"] })) return;
  lab = await startLabProcesses("disc", SIZE, { discover: true });
  // a second image each, after the start: the agents' rescans find them
  await sparseImage(`${lab.dir}/disks/a1/vol1.img`, SIZE / 2);
  await sparseImage(`${lab.dir}/disks/dr1/vol1.img`, SIZE / 2);
});

t.after(async () => {
  for (const p of [lab?.agent, lab?.gw, lab?.standby, lab?.remote]) await p?.proc?.stop().catch(() => {});
});

const get = async <T>(path: string) => await lab!.c.expect(200, "GET", path) as T;
const byName = <T extends Found>(list: T[]) => Object.fromEntries(list.map((x) => [x.name, x]));

t("sites, gateways, agents and their devices appear by themselves and age while away", async () => {
  if (!lab) return;
  const { dir } = lab;
  const want = ["vol0", "vol1", "vol0-rsp-dr1", "vol1-rsp-dr1", "prod-journal", "dr1-journal"];
  const volumes = byName(
    await waitFor(
      async () => {
        const v = await get<Volume[]>("/api/volumes");
        return want.every((n) => v.some((x) => x.name === n)) ? v : undefined;
      },
      30_000,
      "the devices to be discovered",
      250,
    ),
  );
  assert.equal(
    [volumes.vol0.host, volumes.vol0.device, volumes.vol0.size],
    ["a1", `${dir}/disks/a1/vol0.img`, SIZE],
  );
  assert.equal([volumes["vol1-rsp-dr1"].host, volumes["vol1-rsp-dr1"].size], ["a1-dr1", SIZE / 2]);
  assert.ok(want.every((n) => volumes[n].discovered && volumes[n].lastSeen !== null), "discovered, seen");
  const sites = byName(await get<(Found & { role: string })[]>("/api/sites"));
  assert.equal(Object.keys(sites), ["dr1", "prod"]);
  assert.equal([sites.prod.role, sites.dr1.role], ["local", "remote"]);
  assert.ok(sites.dr1.discovered && sites.dr1.lastSeen);
  const hosts = byName(await get<Host[]>("/api/hosts"));
  assert.equal(
    Object.values(hosts).map((h) => `${h.name}@${h.site}:${h.role}:${h.agent ?? ""}`),
    [
      "a1@prod:application:a1",
      "a1-dr1@dr1:application:a1",
      "dr1-gateway@dr1:gateway:",
      "prod-gateway@prod:gateway:",
    ],
  );
  const d = await get<{ remotes: { standbyAgents: { agent: string; connected: boolean }[] }[] }>(
    "/api/discovery",
  );
  assert.equal(d.remotes[0].standbyAgents.map((a) => [a.agent, a.connected]), [["a1", true]]);

  // the standby goes away: it and its devices stop being seen, the rest goes on
  await lab.standby.proc.stop();
  await waitFor(
    async () => !(await get<typeof d>("/api/discovery")).remotes[0].standbyAgents.some((a) => a.connected),
    20_000,
    "the site to report its standby away",
    250,
  );
  const seen = async () => {
    const h = byName(await get<Host[]>("/api/hosts"));
    const v = byName(await get<Volume[]>("/api/volumes"));
    return {
      standby: h["a1-dr1"].lastSeen!,
      device: v["vol0-rsp-dr1"].lastSeen!,
      gateway: h["prod-gateway"].lastSeen!,
    };
  };
  const before = await seen();
  await new Promise((r) => setTimeout(r, 5000));
  const after = await seen();
  assert.is(after.standby, before.standby, "the standby's server ages");
  assert.is(after.device, before.device, "its devices age");
  assert.ok(after.gateway > before.gateway, "the gateway is seen all along");

  // back: seen again
  await lab.standby.start();
  await waitFor(
    async () => (await seen()).standby > after.standby,
    30_000,
    "the standby to be seen again",
    250,
  );
});

t("a discovered device is adopted into a task with the gateways' copies, which is protected", async () => {
  if (!lab) return;
  const { c, dir, gw, remote } = lab;
  const q = `host=a1&device=${encodeURIComponent(`${dir}/disks/a1/vol0.img`)}&remotes=dr1`;
  const p = await get<Proposal>(`/api/discovery/proposal?${q}`);
  assert.ok(p.complete, JSON.stringify(p.notes));
  assert.equal(p.adopt.map((v) => [v.name, v.device]), [
    ["vol0-lgp", gw.mirrorPath("a1", "vol0")],
    ["vol0-rgp-dr1", remote.replicaPath("a1", "vol0")],
  ]);
  // the proposal's group is valid as it is
  assert.equal(await c.expect(200, "POST", "/api/tasks/check", { name: "db", group: p.group }), {
    issues: [],
  });
  await c.expect(201, "POST", "/api/tasks", { name: "db", group: p.group });
  const volumes = byName(await get<Volume[]>("/api/volumes"));
  assert.ok(
    volumes["vol0-lgp"]?.discovered && volumes["vol0-rgp-dr1"]?.discovered,
    "the copies are registered",
  );
  await c.expect(200, "POST", "/api/tasks/db/actions/start", {});
  await waitFor(
    async () => (await get<{ state: string }>("/api/tasks/db")).state === "protected",
    60_000,
    "the task to be protected",
    250,
  );
  await run("qemu-io", ["-f", "raw", lab.agent.uri("vol0"), "-c", "write -P 0x3c 0 2M", "-c", "flush"]);
  await siteCaughtUp(gw, "dr1 to hold the write");
  const copies = {
    lsp: lab.lsp,
    lgp: gw.mirrorPath("a1", "vol0"),
    rgp: remote.replicaPath("a1", "vol0"),
    rsp: lab.rsp,
  };
  await waitFor(
    async () => new Set(Object.values(await hashAll(copies))).size === 1,
    30_000,
    "every copy to equal the LSP",
    250,
  );
  // vol0 taken: the proposal now offers vol1, the only free one, with the standby's device of its size
  const next = await get<Proposal & { group: { local: { lsp: { device: string } } } }>(
    "/api/discovery/proposal?remotes=dr1",
  );
  assert.is(next.group.local.lsp.device, `${dir}/disks/a1/vol1.img`);
  assert.ok(next.complete, JSON.stringify(next.notes));
});

t("bad queries and bodies are refused with field-level messages", async () => {
  if (!lab) return;
  const { c, dir } = lab;
  const refused = async (method: string, path: string, body: unknown, want: Record<string, RegExp>) => {
    const a = await c.req(method, path, body);
    assert.is(a.status, 400, `${path}: ${a.text}`);
    const issues = (a.body as { issues: { path: string; message: string }[] }).issues;
    assert.equal(issues.map((i) => i.path).sort(), Object.keys(want).sort(), a.text);
    for (const i of issues) assert.match(i.message, want[i.path]);
  };
  await refused("GET", "/api/discovery/proposal?host=../x&device=disks/a.img&remotes=dr1,d%2Fr", undefined, {
    host: /must be a host name/,
    device: /must be an absolute path/,
    remotes: /"d\/r" is not a site name/,
  });
  await refused("GET", `/api/discovery/proposal?device=${encodeURIComponent("/dev/sdb")}`, undefined, {
    host: /goes with host and device both/,
  });
  await refused("POST", "/api/volumes", { name: "big", host: "a1", device: `${dir}/big.img`, size: 1e30 }, {
    size: /^is too large \(at most 8\.0 PiB\)$/,
  });
  await refused("POST", "/api/volumes", { name: "etc", host: "a1", device: "/etc/shadow", size: 4096 }, {
    device:
      /outside the allowed device list \(.*\): start the local gateway with --device-prefix \/etc\/ to allow/,
  });
  const p = await get<{ group: { local: Record<string, unknown> } }>(
    `/api/discovery/proposal?host=a1&device=${encodeURIComponent(`${dir}/disks/a1/vol1.img`)}&remotes=dr1`,
  );
  const wrongLgp = {
    ...p.group,
    local: { ...p.group.local, lgp: { host: "prod-gateway", device: `${dir}/nowhere.img` } },
  };
  await refused("POST", "/api/tasks", { name: "bad", group: p.group, mirror: { bandwidthLimit: 1.5 } }, {
    "mirror.bandwidthLimit": /^must be a whole number of bytes per second$/,
  });
  await refused("POST", "/api/tasks", { name: "bad", group: wrongLgp }, {
    "group.local.lgp.device": /no volume registered on host "prod-gateway" at .*nowhere\.img/,
  });
  // the wizard's check: 200 with the problems, one message per field, nothing created
  const checked = await c.expect(200, "POST", "/api/tasks/check", {
    group: p.group,
    mirror: { bufferBound: 1e30 },
  }) as { issues: { path: string; message: string }[] };
  assert.equal(checked.issues, [{ path: "mirror.bufferBound", message: "is too large (at most 8.0 PiB)" }]);
  assert.is((await c.req("GET", "/api/tasks/bad")).status, 404);
});

t("a start the agent refuses stays on the task with the reason, also after a retry", async () => {
  if (!lab) return;
  const { c, dir } = lab;
  // registered by hand: allowed by the gateway (--device-prefix DIR), not by the agent (DIR/disks/a1)
  await sparseImage(`${dir}/manual.img`, SIZE / 2);
  await c.expect(201, "POST", "/api/volumes", {
    name: "manual",
    host: "a1",
    device: `${dir}/manual.img`,
    size: SIZE / 2,
  });
  const p = await get<Proposal>(
    `/api/discovery/proposal?host=a1&device=${encodeURIComponent(`${dir}/manual.img`)}&remotes=dr1`,
  );
  assert.ok(p.complete, JSON.stringify(p.notes));
  await c.expect(201, "POST", "/api/tasks", { name: "outside", group: p.group });
  const start = await c.req("POST", "/api/tasks/outside/actions/start", {});
  assert.is(start.status, 409, start.text);
  const reason =
    /agent a1 cannot serve volume manual: .*manual\.img is outside this agent's --device-prefix directories/;
  assert.match((start.body as { error: string }).error, reason);
  type TaskJson = {
    state: string;
    failure?: { action: string; at: number };
    problems: { kind: string; level: string; message: string }[];
  };
  const failed = await get<TaskJson>("/api/tasks/outside");
  assert.is(failed.state, "configured");
  assert.is(failed.failure?.action, "start");
  assert.equal(failed.problems.map((x) => [x.kind, x.level]), [["start", "failed"]]);
  assert.match(failed.problems[0].message, reason);
  const listed = (await get<(TaskJson & { name: string })[]>("/api/tasks")).find((x) =>
    x.name === "outside"
  )!;
  assert.is(listed.problems.length, 1, "the list shows it too");
  const retried = await c.req("POST", "/api/tasks/outside/retry", {});
  assert.is(retried.status, 409);
  assert.match((retried.body as { error: string }).error, reason);
  const again = await get<TaskJson>("/api/tasks/outside");
  assert.ok(again.failure!.at >= failed.failure!.at, "the retry's failure replaces the first");
  // the standby refuses as well: an RSP registered by hand outside its --device-prefix
  await sparseImage(`${dir}/manual-rsp.img`, SIZE / 2);
  await c.expect(201, "POST", "/api/volumes", {
    name: "manual-rsp",
    host: "a1-dr1",
    device: `${dir}/manual-rsp.img`,
    size: SIZE / 2,
  });
  const q = `host=a1&device=${encodeURIComponent(`${dir}/disks/a1/vol1.img`)}&remotes=dr1`;
  const g = (await get<{ group: { remotes: { rsp: unknown }[] } }>(`/api/discovery/proposal?${q}`)).group;
  g.remotes[0].rsp = { host: "a1-dr1", device: `${dir}/manual-rsp.img` };
  await c.expect(201, "POST", "/api/tasks", { name: "standby-outside", group: g });
  const refusedRsp = await c.req("POST", "/api/tasks/standby-outside/actions/start", {});
  assert.is(refusedRsp.status, 409, refusedRsp.text);
  assert.match(
    (refusedRsp.body as { error: string }).error,
    /site dr1 cannot assign the standby copy \(RSP\): .*manual-rsp\.img is outside this agent's --device-prefix/,
  );
  const none = await c.req("POST", "/api/tasks/db/retry", {});
  assert.is(none.status, 409);
  assert.match((none.body as { error: string }).error, /task "db" has no failed step to retry/);
});

t.run();
