// A control-plane topology on loopback for the tests: a local gateway with one agent and one
// remote site (remote gateway + standby agent), the agents started with only their identity;
// the inventory created through the API and helpers to create tasks, write, and compare copies.
import * as assert from "uvu/assert";
import {
  Agent,
  Gateway,
  hashAll,
  keygen,
  RemoteGateway,
  run,
  type SiteStatus,
  sparseImage,
  tempDir,
  waitFor,
  waitMirrorCaughtUp,
  writeSecret,
} from "./cluster.ts";
import { WebClient } from "./browser.ts";
import type { Mirror } from "../../src/tasks/model.ts";
import { registerSitesAndHosts } from "./inventory.ts";

export const MiB = 1024 * 1024;

export interface Assignment {
  task: string;
  kind: string;
  site?: string;
  agent: string;
  volume: string;
  state: string;
  error?: string;
}

export interface Lab extends LabProcesses {
  /** Creates task `name` protecting `lsp` (as volume vol0) with its RSP `rsp` at dr1. */
  createTask: (name: string, mirror?: Partial<Mirror>) => Promise<void>;
  taskState: (name: string) => Promise<string>;
  sites: () => Promise<(SiteStatus & { bandwidth: number; ackedBytes: number })[]>;
  assignments: () => Promise<Assignment[]>;
  /** What the standby remembers (its assignments.json). */
  standbyRemembers: () => Promise<string[]>;
  /** qemu-io commands against the agent's vol0 (e.g. "write -P 0x6b 0 4M"), then a flush. */
  write: (...cmds: string[]) => Promise<void>;
  /** Waits until dr1 acknowledged everything of vol0 and holds it consistent. */
  siteCaughtUp: (what: string, timeoutMs?: number) => Promise<void>;
  /** Waits until the LSP, the mirror, the replica and the standby's copy are equal. */
  allEqual: (what: string) => Promise<void>;
  stop: () => Promise<void>;
}

/** The lab's processes, the agents connected, and the sites and hosts registered through the API. */
export interface LabProcesses {
  dir: string;
  remote: RemoteGateway;
  standby: Agent;
  gw: Gateway;
  agent: Agent;
  c: WebClient;
  /** Sparse images of `size` for the LSP and the RSP. */
  lsp: string;
  rsp: string;
}

/**
 * `discover`: the agents report the images in DIR/disks/a1 and DIR/disks/dr1 (their
 * --device-prefix, where the LSP and the RSP are, as vol0.img), the local gateway is site
 * "prod", and nothing is registered by hand: the inventory is what the gateway discovers.
 */
export async function startLabProcesses(
  prefix: string,
  size: number,
  o: { discover?: boolean } = {},
): Promise<LabProcesses> {
  const dir = await tempDir(prefix);
  const secret = `${dir}/agent.secret`;
  await writeSecret(secret);
  const localFp = await keygen(`${dir}/local-keys`, "local");
  const disks = (owner: string) => `${dir}/disks/${owner}`;
  if (o.discover) { for (const owner of ["a1", "dr1"]) await Deno.mkdir(disks(owner), { recursive: true }); }
  const lsp = await sparseImage(o.discover ? `${disks("a1")}/vol0.img` : `${dir}/lsp.img`, size);
  const rsp = await sparseImage(o.discover ? `${disks("dr1")}/vol0.img` : `${dir}/rsp-dr1.img`, size);
  await writeSecret(`${dir}/standby-dr1.secret`);
  const remote = await new RemoteGateway({
    dir,
    site: "dr1",
    trust: { local: localFp },
    standbySecrets: { a1: `${dir}/standby-dr1.secret` },
    extra: ["--buffer-size", "80M"],
  }).init();
  await remote.start();
  const standby = await new Agent({
    dir,
    id: "a1",
    secretFile: `${dir}/standby-dr1.secret`,
    gatewaySocket: remote.agentSocket,
    volumes: {},
    extra: ["--standby", ...(o.discover ? ["--device-prefix", disks("dr1")] : [])],
    home: "standby-dr1",
  }).start();
  const gw = await new Gateway({
    dir,
    agents: { a1: secret },
    bufferSize: "80M",
    extra: [
      "--key-dir",
      `${dir}/local-keys`,
      "--remote",
      `dr1=127.0.0.1:${remote.port}`,
      "--remote-fingerprint",
      `dr1=${remote.fingerprint}`,
      "--device-prefix",
      dir,
      ...(o.discover ? ["--id", "prod"] : []),
    ],
  }).start();
  const agent = await new Agent({
    dir,
    id: "a1",
    secretFile: secret,
    gatewaySocket: gw.socket,
    volumes: {},
    extra: o.discover ? ["--device-prefix", disks("a1")] : [],
  }).start();
  await waitFor(() => gw.status().then((s) => s.agents.includes("a1")), 20_000, "the agent to connect");
  const c = new WebClient(`http://127.0.0.1:${gw.httpPort}`, { token: gw.token });
  if (!o.discover) await registerSitesAndHosts(c);
  return { dir, remote, standby, gw, agent, c, lsp, rsp };
}

/** Reads what a standby agent remembers (its assignments.json). */
export async function standbyRemembers(standby: Agent): Promise<string[]> {
  const text = await Deno.readTextFile(`${standby.home}/assignments.json`).catch(() => '{"volumes":[]}');
  return (JSON.parse(text) as { volumes: { name: string }[] }).volumes.map((v) => v.name);
}

/** The API body of task `name`: LSP `lsp` on app1, RSP `rsp` on the standby, `dev(p)` the gateways' partitions. */
export function taskBody(
  name: string,
  lsp: string,
  rsp: string,
  dev: (part: "lgp" | "buf" | "rgp") => string,
  mirror: Partial<Mirror> = {},
) {
  return {
    name,
    group: {
      local: {
        site: "prod",
        lsp: { host: "app1", device: lsp },
        lgp: { host: "lgw", device: dev("lgp") },
        buffer: { host: "lgw", device: dev("buf") },
      },
      remotes: [{
        site: "dr1",
        rgp: { host: "rgw", device: dev("rgp") },
        rsp: { host: "standby", device: rsp },
      }],
    },
    mirror,
  };
}

/** Waits until the mirror and every site hold vol0 of a1 consistent up to its last sequence number. */
export async function siteCaughtUp(gw: Gateway, what: string, timeoutMs = 60_000): Promise<void> {
  await waitMirrorCaughtUp(gw, "a1", "vol0");
  const sites = async () => ((await gw.status()) as unknown as { sites: SiteStatus[] }).sites;
  await waitFor(
    async () => {
      const lastSeq = (await gw.status()).volumes.find((v) => v.name === "vol0")!.lastSeq;
      return (await sites()).every((s) =>
        s.connected &&
        s.volumes.some((v) => v.name === "vol0" && v.state === "consistent" && v.ackedSeq === lastSeq)
      );
    },
    timeoutMs,
    what,
    100,
  );
}

export async function startLab(prefix: string, size = 16 * MiB): Promise<Lab> {
  const { dir, remote, standby, gw, agent, c, lsp, rsp } = await startLabProcesses(prefix, size);
  const dev = (p: string) => `${dir}/${p}.img`;
  const parts: [string, string, string, number][] = [
    ["vol0", "app1", lsp, size],
    ["lgp", "lgw", dev("lgp"), size],
    ["buf", "lgw", dev("buf"), 256 * MiB],
    ["rgp", "rgw", dev("rgp"), size],
    ["rsp", "standby", rsp, size],
  ];
  for (const [n, host, device, sz] of parts) {
    await c.expect(201, "POST", "/api/volumes", { name: n, host, device, size: sz });
  }
  const copies = { lsp, lgp: gw.mirrorPath("a1", "vol0"), rgp: remote.replicaPath("a1", "vol0"), rsp };
  const sites = async () =>
    ((await gw.status()) as unknown as { sites: (SiteStatus & { bandwidth: number; ackedBytes: number })[] })
      .sites;
  const lab: Lab = {
    dir,
    remote,
    standby,
    gw,
    agent,
    c,
    lsp,
    rsp,
    createTask: async (name, mirror = {}) => {
      await c.expect(201, "POST", "/api/tasks", taskBody(name, lsp, rsp, dev, mirror));
    },
    taskState: async (name) => (await c.expect(200, "GET", `/api/tasks/${name}`) as { state: string }).state,
    sites,
    assignments: async () =>
      ((await c.expect(200, "GET", "/api/status")) as { assignments: Assignment[] }).assignments,
    standbyRemembers: () => standbyRemembers(standby),
    write: async (...cmds) => {
      await run("qemu-io", [
        "-f",
        "raw",
        agent.uri("vol0"),
        ...cmds.flatMap((x) => ["-c", x]),
        "-c",
        "flush",
      ]);
    },
    siteCaughtUp: (what, timeoutMs) => siteCaughtUp(gw, what, timeoutMs),
    allEqual: async (what) => {
      // the standby applies what the site acknowledged (rgp) a little later
      let h: Record<string, string> = {};
      await waitFor(
        async () => {
          h = await hashAll(copies);
          return h.lgp === h.lsp && h.rgp === h.lsp && h.rsp === h.lsp;
        },
        30_000,
        what,
        250,
      ).catch((e) => {
        assert.equal(h, { lsp: h.lsp, lgp: h.lsp, rgp: h.lsp, rsp: h.lsp }, (e as Error).message);
      });
    },
    stop: async () => {
      await agent.proc?.stop().catch(() => {});
      await gw.proc?.stop().catch(() => {});
      await standby.proc?.stop().catch(() => {});
      await remote.proc?.stop().catch(() => {});
    },
  };
  return lab;
}
