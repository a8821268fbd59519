// The failover topology in network namespaces, for tests, the failover demo and
// its benchmark:
//   client 10.77.1.2 ── 10.77.1.1 gw (holds the service address 10.77.1.1:80)
//   app    10.77.2.2 ── 10.77.2.1 gw        (agent + the service on :8080)
//   remote 10.77.3.2 ── 10.77.3.1 gw        (remote gateway + standby agent)
//   host   10.77.9.2 ── 10.77.9.1 gw        (management: the test reads the gateway's API)
// Normally the gateway forwards the service address to the app server (a plain
// DNAT rule of the operator's); Continuum's own chain comes first and, after a
// failover, sends it to the remote site instead.
import { exec, inNs, mustExec, NetLab } from "./netns.ts";
import type { FailbackReport } from "../../src/failover/failback.ts";
import { keygen, RoleProcess, sparseImage, tempDir, testRing, waitFor, writeSecret } from "./cluster.ts";
import { faketimeEnv, setClockOffset } from "./faketime.ts";
import { NbdClient } from "./nbd-client.ts";

const lib = new URL("./", import.meta.url).pathname;

/** Writes `text` into block 0 of export vol0 at an NBD socket (what the lab's service answers with). */
export async function writeServiceText(socket: string, text: string): Promise<void> {
  const block = new Uint8Array(4096);
  block.set(new TextEncoder().encode(text));
  const file = `${socket}.block`;
  await Deno.writeFile(file, block);
  await mustExec([
    "qemu-io",
    "-f",
    "raw",
    `nbd+unix:///vol0?socket=${socket}`,
    "-c",
    `write -s ${file} 0 4096`,
  ]);
}

/** A lab whose test process died without stopping it holds the addresses: remove it. */
async function removeStaleLabs(): Promise<void> {
  const alive = (pid: number) => {
    try {
      Deno.kill(pid, "SIGCONT");
      return true;
    } catch {
      return false;
    }
  };
  const links = (await exec(["ip", "-br", "link"])).stdout ?? "";
  for (const m of links.matchAll(/^m(\d+)@/gm)) {
    if (!alive(Number(m[1]))) await exec(["ip", "link", "del", `m${m[1]}`]).catch(() => {});
  }
  const spaces = (await exec(["ip", "netns", "list"])).stdout ?? "";
  for (const m of spaces.matchAll(/^(cf(\d+)-\w+)/gm)) {
    if (alive(Number(m[2]))) continue;
    const pids = ((await exec(["ip", "netns", "pids", m[1]])).stdout ?? "").split(/\s+/).filter(Boolean);
    for (const pid of pids) Deno.kill(Number(pid), "SIGKILL");
    await exec(["ip", "netns", "del", m[1]]).catch(() => {});
  }
}
export const SERVICE_HOST = "10.77.1.1";
export const SERVICE_PORT = 80;
const MiB = 1024 * 1024;

export interface LabOptions {
  /** Extra flags for the local gateway. */
  gatewayExtra?: string[];
  /** Heartbeats go through a jitter relay (mean, spread in ms) in the gw namespace. */
  jitter?: {
    meanMs: number;
    spreadMs: number;
    /** Another relay script taking the same arguments plus `control` (the fault runner's udp-netem.ts). */
    script?: string;
    control?: string;
  };
  /** Size of the protected volume (default 16 MiB). */
  sizeMiB?: number;
  /** QoS targets added to the service's --service spec, e.g. "td:1500ms,tmr:10m,tm:1s,rto:30s". */
  serviceTargets?: string;
  /** Extra flags for the remote gateway. */
  remoteExtra?: string[];
  /** The app's service is started by the agent's --on-unfence hook (failback), not by the lab. */
  serviceOnUnfence?: boolean;
  /**
   * The agent and both gateways run under libfaketime (tests/lib/faketime.ts), each with its own
   * control file in the lab's directory (`clockFile(role)`), at offset 0 until a test steps it.
   */
  faketime?: boolean;
  /**
   * The site link goes through a relay (tests/lib/site-relay.ts, in the gw namespace) that can
   * keep the gateway's records from the site while the link stays up (`holdRecords`).
   */
  siteRelay?: boolean;
}

export type ClockRole = "agent" | "local-gateway" | "remote-gateway";

export class FailoverLab {
  readonly net = new NetLab(`cf${Deno.pid % 100000}`);
  dir = "";
  ns: Record<"client" | "gw" | "app" | "remote", string> = { client: "", gw: "", app: "", remote: "" };
  gateway!: RoleProcess;
  remote!: RoleProcess;
  standby!: RoleProcess;
  agent!: RoleProcess;
  appService: RoleProcess | undefined;
  private extra: RoleProcess[] = [];
  /** The site relay, with `siteRelay`. */
  relay: RoleProcess | undefined;
  token = "";
  lsp = "";
  rsp = "";
  private gatewayArgs: string[] = [];
  private agentArgs: string[] = [];
  private lock: Deno.FsFile | undefined;
  private faketime = false;

  /** The wall-clock control file of a role (with `faketime`). */
  clockFile(role: ClockRole): string {
    return `${this.dir}/clock-${role}`;
  }

  /** The environment of a role: its clock under its control file when the lab runs with faketime. */
  roleEnv(role: ClockRole): Record<string, string> {
    return this.faketime ? faketimeEnv(this.clockFile(role)) : {};
  }

  async start(o: LabOptions = {}): Promise<this> {
    // labs share fixed addresses (the management link on the host): one at a time per machine
    this.lock = await Deno.open("/tmp/continuum-failover-lab.lock", { create: true, write: true });
    await this.lock.lock(true);
    await removeStaleLabs();
    this.dir = await tempDir("failover");
    this.faketime = o.faketime ?? false;
    if (this.faketime) {
      for (const r of ["agent", "local-gateway", "remote-gateway"] as const) {
        await setClockOffset(this.clockFile(r), 0);
      }
    }
    const n = this.net;
    for (const t of ["client", "gw", "app", "remote"] as const) this.ns[t] = await n.addNs(t);
    await n.link({ ns: this.ns.client, ifname: "c0", cidr: "10.77.1.2/24" }, {
      ns: this.ns.gw,
      ifname: "g1",
      cidr: "10.77.1.1/24",
    });
    await n.link({ ns: this.ns.app, ifname: "a0", cidr: "10.77.2.2/24" }, {
      ns: this.ns.gw,
      ifname: "g2",
      cidr: "10.77.2.1/24",
    });
    await n.link({ ns: this.ns.remote, ifname: "r0", cidr: "10.77.3.2/24" }, {
      ns: this.ns.gw,
      ifname: "g3",
      cidr: "10.77.3.1/24",
    });
    // management link to the host namespace: one end is born in gw, the other moved to the host
    await mustExec([
      "ip",
      "link",
      "add",
      "g9",
      "netns",
      this.ns.gw,
      "type",
      "veth",
      "peer",
      "name",
      `m${Deno.pid % 100000}`,
    ]);
    await mustExec(inNs(this.ns.gw, ["ip", "addr", "add", "10.77.9.1/24", "dev", "g9"]));
    await mustExec(inNs(this.ns.gw, ["ip", "link", "set", "g9", "up"]));
    await mustExec(["ip", "addr", "add", "10.77.9.2/24", "dev", `m${Deno.pid % 100000}`]);
    await mustExec(["ip", "link", "set", `m${Deno.pid % 100000}`, "up"]);
    await n.route(this.ns.app, "10.77.0.0/16", "10.77.2.1");
    await n.route(this.ns.remote, "10.77.0.0/16", "10.77.3.1");
    await mustExec(inNs(this.ns.gw, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]));
    // the operator's standing rule: the service address normally reaches the app server
    await mustExec(inNs(this.ns.gw, [
      "iptables",
      "-t",
      "nat",
      "-A",
      "PREROUTING",
      "-d",
      "10.77.1.1",
      "-p",
      "tcp",
      "--dport",
      "80",
      "-j",
      "DNAT",
      "--to-destination",
      "10.77.2.2:8080",
    ]));
    await mustExec(inNs(this.ns.gw, [
      "iptables",
      "-t",
      "nat",
      "-A",
      "POSTROUTING",
      "-d",
      "10.77.2.2",
      "-p",
      "tcp",
      "--dport",
      "8080",
      "-j",
      "MASQUERADE",
    ]));

    const d = this.dir;
    await writeSecret(`${d}/app.secret`);
    await writeSecret(`${d}/standby.secret`);
    const localFp = await keygen(`${d}/local-keys`, "local");
    const remoteFp = await keygen(`${d}/remote-keys`, "dr1");
    this.lsp = await sparseImage(`${d}/lsp.img`, (o.sizeMiB ?? 16) * MiB);
    this.rsp = await sparseImage(`${d}/rsp.img`, (o.sizeMiB ?? 16) * MiB);
    await Deno.writeTextFile(
      `${d}/serve.sh`,
      [
        "#!/bin/sh",
        "# the promotion hook: start the service on the standby's (now writable) volume, in the background;",
        "# in a drill on the test copy's export instead (nbd+unix:///NAME?socket=PATH), unless told to fail",
        'if [ -n "$CONTINUUM_DRILL" ]; then',
        `  [ -e ${d}/drill-fails ] && exit 0`,
        "  rest=${CONTINUUM_EXPORT#nbd+unix:///}",
        `  nohup ${Deno.execPath()} run -A ${lib}volume-service.ts 10.77.3.2 8080 "\${rest#*\\?socket=}" "\${rest%%\\?*}" drill > ${d}/drill-service.log 2>&1 &`,
        `  echo $! > ${d}/drill-service.pid`,
        "  exit 0",
        "fi",
        `nohup ${Deno.execPath()} run -A ${lib}volume-service.ts 10.77.3.2 8080 ${d}/standby/nbd.sock vol0 dr1 > ${d}/remote-service.log 2>&1 &`,
        `echo $! > ${d}/remote-service.pid`,
      ].join("\n") + "\n",
      { mode: 0o755 },
    );
    await Deno.writeTextFile(
      `${d}/unserve.sh`,
      [
        "#!/bin/sh",
        "# the demotion hook: stop the service (in a drill, the one on the test copy)",
        'if [ -n "$CONTINUUM_DRILL" ]; then',
        `  [ -e ${d}/drill-service.pid ] && kill $(cat ${d}/drill-service.pid)`,
        `  rm -f ${d}/drill-service.pid`,
        "  exit 0",
        "fi",
        `kill $(cat ${d}/remote-service.pid)`,
      ].join("\n") + "\n",
      { mode: 0o755 },
    );
    await Deno.writeTextFile(
      `${d}/serve-local.sh`,
      [
        "#!/bin/sh",
        "# the unfence hook: start the service on the recovered volume, in the background",
        `nohup ${Deno.execPath()} run -A ${lib}volume-service.ts 10.77.2.2 8080 ${d}/agent/nbd.sock vol0 local > ${d}/app-service-hook.log 2>&1 &`,
        `echo $! > ${d}/app-service.pid`,
      ].join("\n") + "\n",
      { mode: 0o755 },
    );

    this.remote = new RoleProcess(
      "remote",
      [
        "--role",
        "remote-gateway",
        "--id",
        "dr1",
        "--data-dir",
        `${d}/remote`,
        "--key-dir",
        `${d}/remote-keys`,
        "--listen",
        "10.77.3.2:7900",
        "--trust",
        `local=${localFp}`,
        "--agent-listen",
        `unix:${d}/remote.sock`,
        "--agent-secret",
        `app1=${d}/standby.secret`,
        "--http-listen",
        "127.0.0.1:7881",
        ...testRing("128M"),
        ...(o.remoteExtra ?? []),
      ],
      `${d}/remote.log`,
      { netns: this.ns.remote, env: this.roleEnv("remote-gateway") },
    );
    await this.remote.waitForLog("remote gateway ready");
    this.standby = new RoleProcess(
      "standby",
      [
        "--role",
        "agent",
        "--standby",
        "--id",
        "app1",
        "--data-dir",
        `${d}/standby`,
        "--volume",
        `vol0=${this.rsp}`,
        "--gateway",
        `unix:${d}/remote.sock`,
        "--secret-file",
        `${d}/standby.secret`,
        "--nbd-listen",
        "off",
        "--on-promote",
        `${d}/serve.sh`,
        "--on-demote",
        `${d}/unserve.sh`,
        "--service-check",
        "http://10.77.3.2:8080/",
        "--heartbeat-to",
        "127.0.0.1:7899",
      ],
      `${d}/standby.log`,
      { netns: this.ns.remote },
    );
    await this.standby.waitForLog("agent ready");

    let siteAddress = "10.77.3.2:7900";
    if (o.siteRelay) {
      const relay = new RoleProcess(
        "site relay",
        ["10.77.3.1", "7901", "10.77.3.2", "7900", `${d}/local-keys`, `${d}/remote-keys`, this.relayControl],
        `${d}/site-relay.log`,
        { netns: this.ns.gw, script: `${lib}site-relay.ts` },
      );
      await waitFor(() => relay.log.includes("ready"), 15_000, "the site relay");
      this.relay = relay;
      this.extra.push(relay);
      siteAddress = "10.77.3.1:7901";
    }
    let heartbeatPort = 7810;
    if (o.jitter) {
      heartbeatPort = 7811;
      const relay = new RoleProcess(
        "jitter",
        [
          "10.77.2.1",
          "7811",
          "10.77.2.1",
          "7810",
          String(o.jitter.meanMs),
          String(o.jitter.spreadMs),
          ...(o.jitter.control ? [o.jitter.control] : []),
        ],
        `${d}/jitter.log`,
        { netns: this.ns.gw, script: o.jitter.script ?? `${lib}udp-jitter.ts` },
      );
      await waitFor(() => relay.log.includes("ready"), 10_000, "the jitter relay");
      this.extra.push(relay);
    }
    this.gatewayArgs = [
      "--role",
      "local-gateway",
      "--id",
      "local",
      "--data-dir",
      `${d}/gateway`,
      "--key-dir",
      `${d}/local-keys`,
      "--agent-listen",
      "10.77.2.1:7800",
      "--agent-secret",
      `app1=${d}/app.secret`,
      "--heartbeat-listen",
      "10.77.2.1:7810",
      "--http-listen",
      "10.77.9.1:7880",
      ...testRing("128M"),
      "--remote",
      `dr1=${siteAddress}`,
      "--remote-fingerprint",
      `dr1=${remoteFp}`,
      "--service",
      `web=agent:app1,address:10.77.1.1:80,site:dr1,target:10.77.3.2:8080${
        o.serviceTargets ? `,${o.serviceTargets}` : ""
      }`,
      ...(o.gatewayExtra ?? []),
    ];
    await this.startGateway();
    this.agentArgs = [
      "--role",
      "agent",
      "--id",
      "app1",
      "--data-dir",
      `${d}/agent`,
      "--volume",
      `vol0=${this.lsp}`,
      "--gateway",
      "10.77.2.1:7800",
      "--secret-file",
      `${d}/app.secret`,
      "--nbd-listen",
      "off",
      "--heartbeat-to",
      `10.77.2.1:${heartbeatPort}`,
      "--service-check",
      "http://10.77.2.2:8080/",
      ...(o.serviceOnUnfence ? ["--on-unfence", `${d}/serve-local.sh`] : []),
    ];
    await this.startAgent();
    await this.startAppService();
    return this;
  }

  /** Starts the app server's agent (again, after a test killed it). */
  async startAgent(): Promise<void> {
    this.agent = new RoleProcess("agent", this.agentArgs, `${this.dir}/agent.log`, {
      netns: this.ns.app,
      env: this.roleEnv("agent"),
    });
    await this.agent.waitForLog("agent ready");
  }

  private get relayControl(): string {
    return `${this.dir}/site-relay.control`;
  }

  /**
   * With `siteRelay`: keep the gateway's records from the site from now on (`true`), or send
   * what was kept, in order, and let records flow again (`false`).
   */
  async holdRecords(on: boolean): Promise<void> {
    await Deno.writeTextFile(this.relayControl, on ? "hold" : "pass");
    const relay = this.relay;
    if (!relay) return;
    await waitFor(
      () => (relay.records().filter((r) => "holding" in r).at(-1)?.holding ?? false) === on,
      5000,
      "the site relay to take the order",
    );
  }

  async startGateway(): Promise<void> {
    this.gateway = new RoleProcess("gateway", this.gatewayArgs, `${this.dir}/gateway.log`, {
      netns: this.ns.gw,
      env: this.roleEnv("local-gateway"),
    });
    await this.gateway.waitForLog("local gateway ready");
    this.token = (await Deno.readTextFile(`${this.dir}/gateway/api-token`)).trim();
  }

  async startAppService(): Promise<void> {
    this.appService = new RoleProcess(
      "app service",
      [
        "10.77.2.2",
        "8080",
        `${this.dir}/agent/nbd.sock`,
        "vol0",
        "local",
      ],
      `${this.dir}/app-service.log`,
      { netns: this.ns.app, script: `${lib}volume-service.ts` },
    );
    await waitFor(() => this.appService!.log.includes("ready"), 15_000, "the app service");
    // until the agent's check has seen the service up once, a stopped service is not a failure
    await waitFor(
      async () => (await this.appLiveness())?.serviceDetail === "ok",
      15_000,
      "the agent's service check to pass",
      100,
    );
  }

  /** What the gateway's detector says of the app server's agent and its service. */
  async appLiveness() {
    const s = await this.api("/api/status") as {
      liveness: { agent: string; state: string; serviceHealthy: boolean; serviceDetail: string }[];
    };
    return s.liveness.find((a) => a.agent === "app1");
  }

  async api(path: string, method = "GET"): Promise<unknown> {
    const r = await fetch(`http://10.77.9.1:7880${path}`, {
      method,
      headers: { authorization: `Bearer ${this.token}` },
    });
    const body = await r.json();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(body)}`);
    return body;
  }

  /** Runs the service's failback with its data and waits for the gateway's answer. */
  async failback(): Promise<{ status: number; body: Record<string, unknown> & { report?: FailbackReport } }> {
    const r = await fetch("http://10.77.9.1:7880/api/services/web/failback?wait=1", {
      method: "POST",
      headers: { authorization: `Bearer ${this.token}` },
    });
    return { status: r.status, body: await r.json() };
  }

  async serviceState(): Promise<string> {
    const s = await this.api("/api/services") as { name: string; state: string }[];
    return s.find((x) => x.name === "web")!.state;
  }

  /** The gateway's nat table as iptables-save prints it. */
  async natRules(): Promise<string> {
    return await mustExec(inNs(this.ns.gw, ["iptables-save", "-t", "nat"]));
  }

  async stop(): Promise<void> {
    for (const p of [this.appService, this.agent, this.gateway, this.standby, this.remote, ...this.extra]) {
      if (p) await p.stop().catch(() => {});
    }
    for (const f of ["remote-service.pid", "app-service.pid", "drill-service.pid"]) {
      try {
        const pid = Number((await Deno.readTextFile(`${this.dir}/${f}`)).trim());
        if (pid > 0) Deno.kill(pid, "SIGTERM");
      } catch { /* never started, or stopped already */ }
    }
    await this.net.destroy();
    await exec(["ip", "link", "del", `m${Deno.pid % 100000}`]).catch(() => {});
    this.lock?.close(); // releases the lock
  }
}

/**
 * Polls the service address from the client namespace every intervalMs; each answer
 * is recorded with its time (a line of JSON per answer from a poller process).
 */
export class Poller {
  private proc: RoleProcess;
  constructor(lab: FailoverLab, intervalMs = 50) {
    // a new TCP connection per request (HTTP/1.0): each one is NATed anew, as a new client would be
    const code = `
const [host, port] = [Deno.args[0], Number(Deno.args[1])], every = Number(Deno.args[2]);
async function get() {
  const c = await Deno.connect({ hostname: host, port });
  try {
    await c.write(new TextEncoder().encode("GET / HTTP/1.0\\r\\nHost: service\\r\\n\\r\\n"));
    let text = "";
    const buf = new Uint8Array(8192);
    while (true) {
      const n = await c.read(buf);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    const [head, ...rest] = text.split("\\r\\n\\r\\n");
    return { ok: / 200 /.test(head.split("\\r\\n")[0]), body: rest.join("\\r\\n\\r\\n") };
  } finally { try { c.close(); } catch {} }
}
while (true) {
  const t = Date.now();
  let body = "", ok = false;
  try {
    ({ ok, body } = await Promise.race([get(), new Promise((_, r) => setTimeout(() => r(new Error("timeout")), 1000))]));
  } catch (e) { body = "error: " + e.message; }
  console.log(JSON.stringify({ t, ok, body }));
  const wait = every - (Date.now() - t);
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}`;
    Deno.writeTextFileSync(`${lab.dir}/poller.ts`, code);
    this.proc = new RoleProcess(
      "poller",
      [SERVICE_HOST, String(SERVICE_PORT), String(intervalMs)],
      `${lab.dir}/poller.log`,
      {
        netns: lab.ns.client,
        script: `${lab.dir}/poller.ts`,
      },
    );
  }

  answers(): { t: number; ok: boolean; body: string }[] {
    return this.proc.log.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  }

  /** The gap between the last good answer from `from` and the first good answer from `to` (after `after`). */
  outage(from: string, to: string, after = 0): { lastFrom: number; firstTo: number; ms: number } | undefined {
    const a = this.answers().filter((x) => x.t >= after);
    const firstTo = a.find((x) => x.ok && x.body.startsWith(`${to}:`));
    if (!firstTo) return undefined;
    const lastFrom = [...a].reverse().find((x) => x.ok && x.body.startsWith(`${from}:`) && x.t < firstTo.t);
    if (!lastFrom) return undefined;
    return { lastFrom: lastFrom.t, firstTo: firstTo.t, ms: firstTo.t - lastFrom.t };
  }

  async stop(): Promise<void> {
    await this.proc.stop();
  }
}

/** Writes `text` at the start of the lab's volume (block 0), FUA, through the agent's NBD socket. */
export async function writeMessage(lab: FailoverLab, text: string): Promise<void> {
  const c = await NbdClient.connect(`${lab.dir}/agent/nbd.sock`);
  await c.go("vol0");
  const block = new Uint8Array(4096);
  block.set(new TextEncoder().encode(text));
  await c.write(0, block, true);
  await c.disconnect();
}
