// Discovery, proposals and task problems, as pure logic: what an observation adds to the
// inventory and what it marks seen (never renaming what an operator registered), the group a
// proposal makes (the gateways' copies to adopt, a standby device of the LSP's size), the
// problems a task shows, the size messages, the sites' inventory answers and the agent's scan
// of its --device-prefix directories.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  deviceName,
  type InventoryView,
  type Observation,
  planDiscovery,
} from "../src/tasks/discovery-plan.ts";
import { propose } from "../src/tasks/proposal.ts";
import { retryable, taskProblems } from "../src/tasks/problems.ts";
import { StandbyDevices } from "../src/tasks/site-inventory.ts";
import { parseControl, siteAnswers } from "../src/wire/control.ts";
import { outsidePrefixes, scanDevices, underPrefix } from "../src/capture/devices.ts";
import { type Task, taskInputSchema, validateTask, volumeSchema, zodIssues } from "../src/tasks/model.ts";
import { tempDir } from "./lib/cluster.ts";

const t = suite("discovery (unit)");
const GiB = 1024 ** 3;

const empty = (): InventoryView => ({ sites: [], hosts: [], volumes: [], tasks: [] });

/** What the demo's gateway sees: itself, agent app1 with two images, site dr1 with app1's standby. */
function observation(dr1Seen = true): Observation {
  return {
    sites: [{ name: "local", role: "local", seen: true }, { name: "dr1", role: "remote", seen: dr1Seen }],
    hosts: [
      {
        site: "local",
        role: "gateway",
        seen: true,
        devices: [{ path: "/d/gw/journal.ring", size: GiB / 2, name: "local-journal" }],
      },
      {
        site: "local",
        role: "application",
        agent: "app1",
        seen: true,
        devices: [
          { path: "/d/app1/vol0.img", size: GiB, name: "vol0" },
          { path: "/d/app1/vol1.img", size: GiB / 2, name: "vol1" },
        ],
      },
      {
        site: "dr1",
        role: "gateway",
        seen: dr1Seen,
        devices: [{ path: "/d/dr1/journal.ring", size: GiB / 2, name: "dr1-journal" }],
      },
      {
        site: "dr1",
        role: "application",
        agent: "app1",
        seen: dr1Seen,
        devices: [
          { path: "/d/dr1/vol0.img", size: GiB, name: "vol0-rsp-dr1" },
          { path: "/d/dr1/vol1.img", size: GiB / 2, name: "vol1-rsp-dr1" },
        ],
      },
    ],
  };
}

/** An inventory as the store holds it once a plan was applied. */
function applied(inv: InventoryView, obs: Observation): InventoryView {
  const p = planDiscovery(inv, obs);
  return {
    sites: [...inv.sites, ...p.sites.map((s) => ({ ...s, discovered: true }))],
    hosts: [...inv.hosts, ...p.hosts.map((h) => ({ ...h, discovered: true }))],
    volumes: [...inv.volumes, ...p.volumes.map((v) => ({ ...v, discovered: true }))],
    tasks: inv.tasks,
  };
}

t("an observation of an empty inventory creates sites, hosts and devices with readable names", () => {
  const p = planDiscovery(empty(), observation(false));
  assert.equal(p.sites.map((s) => `${s.name}:${s.role}`), ["local:local", "dr1:remote"]);
  assert.equal(p.hosts.map((h) => `${h.name}@${h.site}:${h.role}:${h.agent ?? ""}`), [
    "local-gateway@local:gateway:",
    "app1@local:application:app1",
    "dr1-gateway@dr1:gateway:",
    // a standby server shares its agent id with the server it protects: its host's name does not
    "app1-dr1@dr1:application:app1",
  ]);
  assert.equal(p.volumes.map((v) => `${v.name}=${v.host}:${v.device}`), [
    "local-journal=local-gateway:/d/gw/journal.ring",
    "vol0=app1:/d/app1/vol0.img",
    "vol1=app1:/d/app1/vol1.img",
    "dr1-journal=dr1-gateway:/d/dr1/journal.ring",
    "vol0-rsp-dr1=app1-dr1:/d/dr1/vol0.img",
    "vol1-rsp-dr1=app1-dr1:/d/dr1/vol1.img",
  ]);
  // what is seen now is marked seen; a site whose link is down is created, never seen
  const seen = p.touch.filter((x) => x.seen).map((x) => x.name);
  assert.ok(seen.includes("local") && seen.includes("app1") && seen.includes("vol0"));
  assert.not.ok(seen.includes("dr1") || seen.includes("app1-dr1") || seen.includes("vol0-rsp-dr1"));
  assert.equal(p.conflicts, []);
});

t("a second observation creates nothing and marks what it sees", () => {
  const inv = applied(empty(), observation());
  const again = planDiscovery(inv, observation(false));
  assert.equal([again.sites, again.hosts, again.volumes], [[], [], []]);
  const dr1 = again.touch.filter((x) =>
    x.name === "dr1" || x.name === "app1-dr1" || x.name === "vol0-rsp-dr1"
  );
  assert.equal(dr1.map((x) => x.seen), [false, false, false], "away: marked discovered, not seen (it ages)");
  assert.ok(again.touch.some((x) => x.name === "vol1" && x.seen));
});

t("what an operator registered is matched, not duplicated or renamed", () => {
  const inv: InventoryView = {
    sites: [{ name: "local", role: "local", description: "" }, {
      name: "dr1",
      role: "remote",
      description: "",
    }],
    hosts: [
      { name: "db-server", site: "local", role: "application", agent: "app1" },
      { name: "lgw", site: "local", role: "gateway" },
      { name: "standby", site: "dr1", role: "application", agent: "app1" },
    ],
    volumes: [
      { name: "vol0", host: "elsewhere", device: "/x", size: 512 },
      { name: "data", host: "db-server", device: "/d/app1/vol1.img", size: GiB / 2 },
    ],
    tasks: [],
  };
  const p = planDiscovery(inv, observation());
  assert.equal(p.sites, []);
  assert.equal(
    p.hosts.map((h) => h.name),
    ["dr1-gateway"],
    "db-server, lgw and standby are the observed ones",
  );
  const made = Object.fromEntries(p.volumes.map((v) => [v.device, `${v.name}@${v.host}`]));
  assert.is(made["/d/app1/vol0.img"], "db-server-vol0@db-server", "vol0 is taken: the host's name in front");
  assert.is(made["/d/app1/vol1.img"], undefined, "registered as data already");
  assert.is(made["/d/gw/journal.ring"], "local-journal@lgw");
  assert.ok(p.touch.some((x) => x.table === "partitions" && x.name === "data" && x.seen));
  assert.ok(p.touch.some((x) => x.table === "hosts" && x.name === "standby"));
});

t("a site of another role is a conflict (its hosts left alone); an unusable device is not registered", () => {
  const inv: InventoryView = { ...empty(), sites: [{ name: "dr1", role: "local", description: "" }] };
  const obs = observation();
  obs.hosts[1].devices.push({ path: "/d/app1/odd.img", size: 1000, name: "odd" });
  obs.hosts[1].devices.push({ path: "/d/app1/../etc", size: 4096, name: "etc" });
  const p = planDiscovery(inv, obs);
  assert.equal(p.conflicts.length, 3, p.conflicts.join("\n"));
  assert.match(
    p.conflicts[0],
    /site dr1 is registered as a local center, but this gateway knows it as a remote one/,
  );
  assert.not.ok(p.hosts.some((h) => h.site === "dr1"));
  assert.not.ok(p.volumes.some((v) => v.name === "odd" || v.name === "etc"));
  assert.match(
    p.conflicts[1],
    /app1 reports "\/d\/app1\/odd\.img" \(1000 bytes\), which is not a usable device/,
  );
});

t("a discovered device that changed size is resized unless a task uses it", () => {
  const inv = applied(empty(), observation());
  const obs = observation();
  obs.hosts[1].devices[1].size = GiB;
  assert.equal(planDiscovery(inv, obs).resize, [{ name: "vol1", size: GiB }]);
  inv.tasks = [{
    name: "t",
    group: {
      local: {
        site: "local",
        lsp: { host: "app1", device: "/d/app1/vol1.img" },
        lgp: { host: "x", device: "/a" },
        buffer: { host: "x", device: "/b" },
      },
      remotes: [],
    },
  }];
  assert.equal(planDiscovery(inv, obs).resize, []);
  assert.is(deviceName("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"), "wwn-0x5000c500a1b2c3d4");
  assert.is(deviceName("/srv/images/db data.img"), "db_data");
});

const gateways = {
  local: {
    site: "local",
    host: "local-gateway",
    journal: "/d/gw/journal.ring",
    copyPath: (a: string, n: string) => `/d/gw/mirrors/${a}/${n}.img`,
  },
  remotes: [{
    site: "dr1",
    host: "dr1-gateway",
    copyPath: (a: string, n: string) => `/d/dr1/replicas/${a}/${n}.img`,
  }],
};

t("a proposal: the gateways' copies to adopt, the shared journal, a standby device of the LSP's size", () => {
  const inv = applied(empty(), observation());
  const two = propose(inv, gateways);
  assert.not.ok(two.complete);
  assert.equal(two.notes, [{
    path: "group.local.lsp",
    message: "choose one of the 2 devices of the application servers at local",
  }]);
  const p = propose(inv, { ...gateways, lsp: { host: "app1", device: "/d/app1/vol1.img" } });
  assert.ok(p.complete, JSON.stringify(p.notes));
  assert.equal(p.local, {
    site: "local",
    lsp: { host: "app1", device: "/d/app1/vol1.img" },
    lgp: { host: "local-gateway", device: "/d/gw/mirrors/app1/vol1.img" },
    buffer: { host: "local-gateway", device: "/d/gw/journal.ring" },
  });
  assert.equal(p.remotes, [{
    site: "dr1",
    rgp: { host: "dr1-gateway", device: "/d/dr1/replicas/app1/vol1.img" },
    rsp: { host: "app1-dr1", device: "/d/dr1/vol1.img" },
  }]);
  assert.equal(p.adopt.map((v) => `${v.name}:${v.size}`), [`vol1-lgp:${GiB / 2}`, `vol1-rgp-dr1:${GiB / 2}`]);
  // the task that adopts them is valid against the inventory with them
  const task = taskInputSchema.parse({ name: "second", group: { local: p.local, remotes: p.remotes } });
  assert.equal(validateTask(task, { ...inv, volumes: [...inv.volumes, ...p.adopt] }), []);

  // once vol1's task exists, vol0 is the only free LSP: proposed; the journal is shared
  inv.volumes.push(...p.adopt);
  inv.tasks.push(task);
  const next = propose(inv, gateways);
  assert.ok(next.complete, JSON.stringify(next.notes));
  assert.is(next.local.lsp?.device, "/d/app1/vol0.img");
  assert.is(next.local.buffer?.device, "/d/gw/journal.ring");
  assert.is(next.remotes[0].rsp?.device, "/d/dr1/vol0.img", "the standby's device of 1 GiB");
  const third = taskInputSchema.parse({ name: "third", group: { local: next.local, remotes: next.remotes } });
  assert.equal(validateTask(third, { ...inv, volumes: [...inv.volumes, ...next.adopt] }), []);
});

t("a proposal says why a role has none; without a gateway's paths it takes the only volume that fits", () => {
  const inv = applied(empty(), observation());
  inv.volumes = inv.volumes.filter((v) => v.device !== "/d/dr1/vol1.img");
  const p = propose(inv, { ...gateways, lsp: { host: "app1", device: "/d/app1/vol1.img" } });
  assert.not.ok(p.complete);
  assert.equal(p.notes.map((n) => n.path), ["group.remotes.0.rsp"]);
  assert.match(
    p.notes[0].message,
    /no free device of 512 MiB on a standby server of app1 at dr1: start the standby agent/,
  );
  const manual: InventoryView = {
    sites: [{ name: "prod", role: "local", description: "" }, {
      name: "dr9",
      role: "remote",
      description: "",
    }],
    hosts: [
      { name: "app", site: "prod", role: "application" },
      { name: "lgw", site: "prod", role: "gateway" },
      { name: "rgw", site: "dr9", role: "gateway" },
    ],
    volumes: [
      { name: "lsp", host: "app", device: "/dev/a", size: GiB },
      { name: "lgp", host: "lgw", device: "/dev/b", size: GiB },
      { name: "buf", host: "lgw", device: "/dev/c", size: 2 * GiB },
      { name: "rgp", host: "rgw", device: "/dev/d", size: GiB },
    ],
    tasks: [],
  };
  const m = propose(manual, { local: { site: "prod" }, remotes: [{ site: "dr9" }] });
  assert.equal([m.local.lsp?.device, m.local.lgp?.device, m.local.buffer?.device], [
    "/dev/a",
    "/dev/b",
    "/dev/c",
  ]);
  assert.is(m.remotes[0].rgp?.device, "/dev/d");
  assert.equal(m.notes.map((n) => n.path), ["group.remotes.0.rsp"]);
  assert.equal(m.adopt, []);
});

t("tasks may share the buffer (the gateway's journal), no other partition", () => {
  const inv = applied(empty(), observation());
  const group = (lsp: string, rsp: string, lgp: string) => ({
    local: {
      site: "local",
      lsp: { host: "app1", device: lsp },
      lgp: { host: "local-gateway", device: lgp },
      buffer: { host: "local-gateway", device: "/d/gw/journal.ring" },
    },
    remotes: [{
      site: "dr1",
      rgp: { host: "dr1-gateway", device: "/d/dr1/journal.ring" },
      rsp: { host: "app1-dr1", device: rsp },
    }],
  });
  inv.volumes.push({ name: "m0", host: "local-gateway", device: "/m0", size: GiB });
  inv.tasks.push({ name: "one", group: group("/d/app1/vol0.img", "/d/dr1/vol0.img", "/m0") });
  const other = taskInputSchema.parse({
    name: "two",
    group: group("/d/app1/vol1.img", "/d/dr1/vol1.img", "/m0"),
  });
  const issues = validateTask(other, inv);
  assert.not.ok(issues.some((i) => i.path === "group.local.buffer"), JSON.stringify(issues));
  assert.ok(issues.some((i) => i.path === "group.local.lgp" && /belongs to task "one"/.test(i.message)));
});

t("sizes: one message each, 'too large' when they are", () => {
  const msg = (v: unknown) => {
    const r = volumeSchema.safeParse({ name: "v", host: "h", device: "/dev/x", size: v });
    return r.success ? [] : zodIssues(r.error).map((i) => `${i.path}: ${i.message}`);
  };
  assert.equal(msg(1e30), ["size: is too large (at most 8.0 PiB)"]);
  assert.equal(msg(1.5), ["size: must be a whole number of bytes"]);
  assert.equal(msg(0), ["size: must be more than 0 bytes"]);
  assert.equal(msg(1000), ["size: must be a multiple of 512 bytes"]);
  assert.equal(msg("1G"), ["size: must be a number of bytes"]);
  const mirror = (m: unknown) => {
    const r = taskInputSchema.shape.mirror.safeParse(m);
    return r.success ? [] : zodIssues(r.error).map((i) => `${i.path}: ${i.message}`);
  };
  assert.equal(mirror({ bufferBound: 2 ** 60 }), ["bufferBound: is too large (at most 8.0 PiB)"]);
  assert.equal(mirror({ bandwidthLimit: -1 }), ["bandwidthLimit: must not be negative"]);
  assert.equal(mirror({ bandwidthLimit: 0.5 }), [
    "bandwidthLimit: must be a whole number of bytes per second",
  ]);
  assert.equal(mirror({ bandwidthLimit: 0 }), []);
});

function task(state: Task["state"], failure?: Task["failure"]): Task {
  const ref = { host: "h", device: "/d" };
  return {
    name: "db",
    description: "",
    group: {
      local: { site: "local", lsp: ref, lgp: ref, buffer: ref },
      remotes: [{ site: "dr1", rgp: ref, rsp: ref }],
    },
    mirror: { ackPoint: "lgp", congestion: "block", bandwidthLimit: 0, compression: false },
    recovery: { strategy: "fast", mode: "policy" },
    ...(failure ? { failure } : {}),
    state,
    stateSince: 0,
    createdAt: 0,
    updatedAt: 0,
  };
}

t("a task's problems: its failed start, refused copies, a site away; only failures are retried", () => {
  const failure = { action: "start", reason: "agent app1 cannot serve volume vol1: gone", at: 5 };
  const lspFailed = {
    task: "db",
    kind: "lsp" as const,
    agent: "app1",
    volume: "vol1",
    state: "failed" as const,
    error: "gone",
    since: 5,
  };
  const down = { sites: [{ site: "dr1", connected: false, lastError: "connection refused" }] };
  const configured = taskProblems(task("configured", failure), { assignments: [lspFailed], ...down });
  assert.equal(configured, [{
    kind: "start",
    message: "start failed: agent app1 cannot serve volume vol1: gone",
    since: 5,
    level: "failed",
  }], "a task not started: its own failure only");
  assert.ok(retryable(configured));
  const rspWaits = {
    task: "db",
    kind: "rsp" as const,
    site: "dr1",
    agent: "app1",
    volume: "vol1",
    state: "pending" as const,
    error: "standby agent app1 is not connected to site dr1",
    since: 7,
  };
  const syncing = taskProblems(task("syncing"), { assignments: [lspFailed, rspWaits], ...down });
  assert.equal(syncing.map((p) => `${p.kind}/${p.level}: ${p.message}`), [
    "assignment/failed: volume vol1 at agent app1 cannot be assigned: gone",
    "assignment/waiting: the standby copy (RSP) of app1/vol1 at dr1 waits: standby agent app1 is not connected to site dr1",
    "link/waiting: the link to dr1 is down: connection refused",
  ]);
  const paused = taskProblems(task("paused"), { assignments: [rspWaits], ...down });
  assert.equal(
    paused.map((p) => p.kind),
    ["assignment"],
    "a paused task sends nothing: its links do not matter",
  );
  assert.not.ok(retryable(paused));
  assert.equal(
    taskProblems(task("protected"), { assignments: [{ ...lspFailed, state: "assigned" as const }] }),
    [],
  );
});

t("a site's inventory answer: what its standby agents reported, ages instead of times", () => {
  const sd = new StandbyDevices();
  // a malformed report never gets here: the standby link's parser refuses it (tests/fuzz-control.test.ts)
  sd.report("app1", [{ path: "/d/v.img", size: 4096 }]);
  sd.report("app2", []);
  const answer = sd.inventory({
    site: "dr1",
    connected: ["app1"],
    journal: { path: "/d/journal.ring", size: 8192 },
    replicaDir: "/d/replicas",
    replicas: [{ agent: "app1", name: "vol0", path: "/d/replicas/app1/vol0.img", size: 4096 }],
  });
  // the answer as the local site's link reads it (src/wire/control.ts)
  const read = (a: unknown) => parseControl(siteAnswers, { ...(a as object), type: "inventory", id: 1 });
  const inv = read(answer);
  assert.ok(inv.type === "inventory" && inv.ok);
  if (inv.type !== "inventory" || !inv.ok) return;
  assert.equal(inv.agents.map((a) => [a.agent, a.connected, a.devices.length]), [["app1", true, 1], [
    "app2",
    false,
    0,
  ]]);
  assert.ok(inv.agents.every((a) => a.agoMs >= 0 && a.agoMs < 1000));
  assert.is(inv.replicaDir, "/d/replicas");
  assert.equal(read({ ok: false, error: "unknown request" }), {
    type: "inventory",
    id: 1,
    ok: false,
    error: "unknown request",
  }, "an older site: its reason");
  assert.throws(() => read({ ...answer, agents: [{ agent: "../x", devices: [] }] }), /agents\.0\.agent/);
  assert.throws(() => read({ ...answer, journal: { path: "rel", size: 1 } }), /journal\.path/);
});

t(
  "an agent's devices: the files and block devices directly in its directories; assignments elsewhere refused",
  async () => {
    const dir = await tempDir("devices");
    await Deno.mkdir(`${dir}/disks/sub`, { recursive: true });
    for (
      const [name, size] of [["a.img", 1 << 20], ["odd.img", 1000], [".hidden.img", 4096], [
        "sub/deep.img",
        4096,
      ]] as const
    ) {
      const f = await Deno.open(`${dir}/disks/${name}`, { create: true, write: true });
      await f.truncate(size);
      f.close();
    }
    await Deno.symlink(`${dir}/disks/a.img`, `${dir}/disks/link.img`);
    assert.equal(await scanDevices([`${dir}/disks/`, `${dir}/missing`]), [
      { path: `${dir}/disks/a.img`, size: 1 << 20 },
      { path: `${dir}/disks/link.img`, size: 1 << 20 },
    ]);
    assert.ok(underPrefix(`${dir}/disks/a.img`, [`${dir}/disks`]));
    assert.not.ok(underPrefix(`${dir}/disks`, [`${dir}/disks`]), "the directory itself is no device");
    assert.not.ok(underPrefix(`${dir}/disks2/a.img`, [`${dir}/disks`]));
    assert.is(outsidePrefixes("/etc/passwd", []), undefined, "no directories: no limit");
    assert.is(
      outsidePrefixes("/etc/passwd", ["/srv/disks"]),
      "/etc/passwd is outside this agent's --device-prefix directories (/srv/disks)",
    );
  },
);

t.run();
