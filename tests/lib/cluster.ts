// Starts Continuum roles as real processes for integration tests, with their own
// temporary directories, and helpers to wait on them and compare images.
import { removeFaketimeShm } from "./faketime.ts";
import { sanitizerPreload } from "./sanitizer.ts";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { Proxy } from "./proxy.ts";

const root = new URL("../../", import.meta.url).pathname;
export const mainTs = `${root}main.ts`;

export async function tempDir(prefix: string, under?: string): Promise<string> {
  // TEST_OUTPUT_DIR: another base (the fault runner puts its roles on a tmpfs of its own)
  const base = under ?? Deno.env.get("TEST_OUTPUT_DIR") ?? `${root}test-output`;
  await Deno.mkdir(base, { recursive: true });
  return await Deno.makeTempDir({ dir: base, prefix: `${prefix}-` });
}

const handedOut = new Set<number>();

/**
 * A gateway's ring as tests make them: `--buffer-size size`, reserved only, not written through as
 * the default does (tests make hundreds of rings; the benchmarks measure the default).
 */
export function testRing(size: string): string[] {
  return ["--buffer-size", size, "--buffer-init", "reserve"];
}

/**
 * A port free now for a role to listen on later. Not the kernel's choice: that comes from the
 * ephemeral range, where a role's own port-0 listeners and outgoing connections take theirs
 * meanwhile, and two calls in a row may get the same one (a remote gateway's site and HTTP
 * ports once did). Below that range, and never the same one twice in this process.
 */
export function freePort(): number {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (handedOut.has(port)) continue;
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
    } catch {
      continue; // taken
    }
    handedOut.add(port);
    return port;
  }
}

export async function writeSecret(path: string): Promise<void> {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  await Deno.writeTextFile(path, btoa(String.fromCharCode(...bytes)) + "\n", { mode: 0o600 });
}

export class RoleProcess {
  private child: Deno.ChildProcess;
  private logText = "";
  readonly exited: Promise<Deno.CommandStatus>;

  /**
   * Runs `deno run -A main.ts ARGS` (or, with `script`, that file), inside a network namespace if given,
   * with `env` added to its environment.
   */
  constructor(
    readonly name: string,
    readonly args: string[],
    readonly logPath: string,
    readonly opts: { netns?: string; script?: string; env?: Record<string, string> } = {},
  ) {
    const deno = [Deno.execPath(), "run", "-A", opts.script ?? mainTs, ...args];
    const argv = opts.netns ? ["ip", "netns", "exec", opts.netns, ...deno] : deno;
    this.child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", ...(sanitizerPreload ? { LD_PRELOAD: sanitizerPreload } : {}), ...opts.env },
    }).spawn();
    const file = Deno.openSync(logPath, { create: true, append: true });
    const pump = async (s: ReadableStream<Uint8Array>) => {
      const dec = new TextDecoder();
      for await (const chunk of s) {
        this.logText += dec.decode(chunk, { stream: true });
        try {
          file.writeSync(chunk);
        } catch { /* closed */ }
      }
    };
    const done = Promise.all([pump(this.child.stdout), pump(this.child.stderr)]);
    const pid = this.child.pid;
    this.exited = this.child.status.then(async (st) => {
      await done;
      file.close();
      if (opts.env?.LD_PRELOAD?.includes("libfaketime")) await removeFaketimeShm(pid);
      return st;
    });
  }

  get log(): string {
    return this.logText;
  }

  get pid(): number {
    return this.child.pid;
  }

  /** Log records (JSON lines) so far. */
  records(): Record<string, unknown>[] {
    return this.logText.split("\n").filter((l) => l.startsWith("{")).map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return {};
      }
    });
  }

  async waitForLog(msg: string, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const r = await waitFor(
      () => this.records().find((x) => x.msg === msg),
      timeoutMs,
      `${this.name}: log "${msg}"`,
    );
    return r!;
  }

  kill(signal: Deno.Signal = "SIGKILL"): void {
    try {
      this.child.kill(signal);
    } catch { /* gone */ }
  }

  async stop(): Promise<Deno.CommandStatus> {
    await terminate(this.child);
    return await this.exited;
  }
}

/** SIGTERM, then SIGKILL if the process is still there after `graceMs`; resolves with its status. */
export async function terminate(child: Deno.ChildProcess, graceMs = 20_000): Promise<Deno.CommandStatus> {
  const kill = (signal: Deno.Signal) => {
    try {
      child.kill(signal);
    } catch { /* gone */ }
  };
  kill("SIGTERM");
  const t = setTimeout(() => kill("SIGKILL"), graceMs);
  const st = await child.status;
  clearTimeout(t);
  return st;
}

/** Polls fn until it returns a truthy value; throws with `what` on timeout. */
export async function waitFor<T>(
  fn: () => T | Promise<T>,
  timeoutMs: number,
  what: string,
  everyMs = 50,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`,
  );
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(path, { highWaterMark: 4 * 1024 * 1024 }).on("data", (d) => h.update(d)).on(
      "end",
      () => resolve(h.digest("hex")),
    ).on("error", reject);
  });
}

export async function run(
  cmd: string,
  args: string[],
  opts: { allowFail?: boolean; stdin?: Uint8Array } = {},
) {
  const c = new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    stdin: opts.stdin ? "piped" : "null",
  });
  const child = c.spawn();
  if (opts.stdin) {
    const w = child.stdin.getWriter();
    await w.write(opts.stdin);
    await w.close();
  }
  const out = await child.output();
  const text = {
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
    code: out.code,
  };
  if (!out.success && !opts.allowFail) {
    throw new Error(`${cmd} ${args.join(" ")} failed (${out.code}): ${text.stderr || text.stdout}`);
  }
  return text;
}

export interface GatewayOptions {
  dir: string;
  agents: Record<string, string>;
  bufferSize?: string;
  extra?: string[];
  /** Added to the process's environment (e.g. libfaketime's, tests/lib/faketime.ts). */
  env?: Record<string, string>;
  /** Agents may also connect over TCP (127.0.0.1:agentPort), where the link is sealed. */
  tcp?: boolean;
}

export class Gateway {
  proc!: RoleProcess;
  readonly socket: string;
  /** The TCP port agents may connect to (0 unless `tcp`); kept across restarts. */
  readonly agentPort: number;
  httpPort = 0;
  private tokenValue = "";

  constructor(readonly o: GatewayOptions) {
    this.socket = `${o.dir}/gw.sock`;
    this.agentPort = o.tcp ? freePort() : 0;
  }

  async start(): Promise<this> {
    if (!this.httpPort) this.httpPort = freePort();
    const args = [
      "--role",
      "local-gateway",
      "--data-dir",
      `${this.o.dir}/gateway`,
      "--agent-listen",
      `unix:${this.socket}`,
      ...(this.agentPort ? ["--agent-listen", `127.0.0.1:${this.agentPort}`] : []),
      "--http-listen",
      `127.0.0.1:${this.httpPort}`,
      ...testRing(this.o.bufferSize ?? "256M"),
      // tests run several gateways on one machine: each takes a free heartbeat port
      "--heartbeat-listen",
      "127.0.0.1:0",
      ...Object.entries(this.o.agents).flatMap(([a, f]) => ["--agent-secret", `${a}=${f}`]),
      ...(this.o.extra ?? []),
    ];
    this.proc = new RoleProcess("gateway", args, `${this.o.dir}/gateway.log`, { env: this.o.env });
    await this.proc.waitForLog("local gateway ready");
    this.tokenValue = (await Deno.readTextFile(`${this.o.dir}/gateway/api-token`)).trim();
    return this;
  }

  get token(): string {
    return this.tokenValue;
  }

  async status(): Promise<GatewayStatus> {
    const r = await fetch(`http://127.0.0.1:${this.httpPort}/api/status`, {
      headers: { authorization: `Bearer ${this.tokenValue}` },
    });
    if (!r.ok) throw new Error(`status ${r.status}`);
    return await r.json();
  }

  mirrorPath(agent: string, volume: string): string {
    return `${this.o.dir}/gateway/mirrors/${agent}/${volume}.img`;
  }
}

export interface GatewayStatus {
  agents: string[];
  journal: { tail: number; durable: number; head: number; used: number; capacity: number };
  volumes: { agent: string; name: string; lastSeq: number; durableSeq: number; mirrorSeq: number }[];
  refused: Record<string, number>;
}

export interface AgentOptions {
  dir: string;
  id: string;
  secretFile: string;
  /** The gateway's Unix socket (the link in clear after the handshake) ... */
  gatewaySocket?: string;
  /** ... or its TCP port on 127.0.0.1 (the link sealed). */
  gatewayPort?: number;
  volumes: Record<string, string>;
  extra?: string[];
  /** Directory name under dir (default agent-ID). */
  home?: string;
}

export class Agent {
  proc!: RoleProcess;
  readonly socket: string;

  constructor(readonly o: AgentOptions) {
    if (!o.gatewaySocket === !o.gatewayPort) throw new Error("an agent takes a gateway socket or a port");
    this.socket = `${this.home}/nbd.sock`;
  }

  async start(waitReady = true): Promise<this> {
    const args = [
      "--role",
      "agent",
      "--id",
      this.o.id,
      "--data-dir",
      this.home,
      "--gateway",
      this.o.gatewayPort ? `127.0.0.1:${this.o.gatewayPort}` : `unix:${this.o.gatewaySocket}`,
      "--secret-file",
      this.o.secretFile,
      "--nbd-listen",
      "off",
      ...Object.entries(this.o.volumes).flatMap(([n, p]) => ["--volume", `${n}=${p}`]),
      ...(this.o.extra ?? []),
    ];
    this.proc = new RoleProcess(`agent ${this.o.id}`, args, `${this.home}.log`);
    if (waitReady) await this.proc.waitForLog("agent ready");
    return this;
  }

  get home(): string {
    return `${this.o.dir}/${this.o.home ?? `agent-${this.o.id}`}`;
  }

  uri(volume: string): string {
    return `nbd+unix:///${volume}?socket=${this.socket}`;
  }
}

/** Creates a sparse image file of `size` bytes. */
export async function sparseImage(path: string, size: number): Promise<string> {
  const f = await Deno.open(path, { create: true, write: true });
  await f.truncate(size);
  f.close();
  return path;
}

/** Waits until the gateway's mirror holds everything journaled for the volume and the agent sent everything. */
export async function waitMirrorCaughtUp(
  gw: Gateway,
  agent: string,
  volume: string,
  timeoutMs = 60_000,
): Promise<void> {
  await waitFor(
    async () => {
      const s = await gw.status();
      const v = s.volumes.find((x) => x.agent === agent && x.name === volume);
      return v && v.mirrorSeq === v.lastSeq && v.durableSeq === v.lastSeq;
    },
    timeoutMs,
    `mirror of ${agent}/${volume} to catch up`,
  );
}

/** Waits until two files have equal contents (the copies converged). */
export async function waitEqual(a: string, b: string, timeoutMs = 60_000): Promise<string> {
  return await waitFor(
    async () => {
      const [x, y] = await Promise.all([sha256File(a), sha256File(b)]);
      return x === y ? x : undefined;
    },
    timeoutMs,
    `${a} and ${b} to become equal`,
    300,
  );
}

/** A two-role setup in one temp dir: one gateway, one agent with the given volumes. */
export async function startPair(
  prefix: string,
  volumes: Record<string, number>,
  agentExtra: string[] = [],
  /** Run on the volumes' images before the agent starts (fill them). */
  prepare?: (paths: Record<string, string>) => Promise<void>,
  gatewayExtra: string[] = [],
  /** The agent's link over TCP (sealed) instead of the gateway's Unix socket. */
  link: "unix" | "tcp" = "unix",
) {
  const dir = await tempDir(prefix);
  const secret = `${dir}/agent.secret`;
  await writeSecret(secret);
  const gw = await new Gateway({ dir, agents: { a1: secret }, extra: gatewayExtra, tcp: link === "tcp" })
    .start();
  const paths: Record<string, string> = {};
  for (const [name, size] of Object.entries(volumes)) {
    paths[name] = await sparseImage(`${dir}/${name}.img`, size);
  }
  await prepare?.(paths);
  const agent = await new Agent({
    dir,
    id: "a1",
    secretFile: secret,
    ...(link === "tcp" ? { gatewayPort: gw.agentPort } : { gatewaySocket: gw.socket }),
    volumes: paths,
    extra: agentExtra,
  })
    .start();
  await waitFor(() => gw.status().then((s) => s.agents.includes("a1")), 20_000, "agent to connect");
  return {
    dir,
    secret,
    gw,
    agent,
    paths,
    async stop() {
      await agent.proc.stop();
      await gw.proc.stop();
    },
  };
}

/** Runs `continuum keygen` into dir; returns the fingerprint. */
export async function keygen(dir: string, name: string): Promise<string> {
  const r = await run(Deno.execPath(), ["run", "-A", mainTs, "keygen", "--dir", dir, "--name", name]);
  const m = /^fingerprint=(\S+)$/m.exec(r.stdout);
  if (!m) throw new Error(`keygen printed no fingerprint: ${r.stdout}`);
  return m[1];
}

export interface RemoteOptions {
  dir: string;
  site: string;
  trust: Record<string, string>;
  standbySecrets: Record<string, string>;
  ackAfter?: "rgp" | "rsp";
  extra?: string[];
}

export class RemoteGateway {
  proc!: RoleProcess;
  readonly home: string;
  readonly agentSocket: string;
  readonly keyDir: string;
  port = 0;
  httpPort = 0;
  fingerprint = "";
  private tokenValue = "";

  constructor(readonly o: RemoteOptions) {
    this.home = `${o.dir}/${o.site}`;
    this.agentSocket = `${o.dir}/${o.site}.sock`;
    this.keyDir = `${o.dir}/${o.site}-keys`;
  }

  async init(): Promise<this> {
    this.fingerprint = await keygen(this.keyDir, this.o.site);
    this.port = freePort();
    this.httpPort = freePort();
    return this;
  }

  async start(): Promise<this> {
    const args = [
      "--role",
      "remote-gateway",
      "--id",
      this.o.site,
      "--data-dir",
      this.home,
      "--key-dir",
      this.keyDir,
      "--listen",
      `127.0.0.1:${this.port}`,
      "--agent-listen",
      `unix:${this.agentSocket}`,
      "--http-listen",
      `127.0.0.1:${this.httpPort}`,
      ...testRing("256M"),
      "--ack-after",
      this.o.ackAfter ?? "rsp",
      ...Object.entries(this.o.trust).flatMap(([n, fp]) => ["--trust", `${n}=${fp}`]),
      ...Object.entries(this.o.standbySecrets).flatMap(([a, f]) => ["--agent-secret", `${a}=${f}`]),
      ...(this.o.extra ?? []),
    ];
    this.proc = new RoleProcess(`remote ${this.o.site}`, args, `${this.home}.log`);
    await this.proc.waitForLog("remote gateway ready");
    this.tokenValue = (await Deno.readTextFile(`${this.home}/api-token`)).trim();
    return this;
  }

  async status(): Promise<RemoteStatus> {
    const r = await fetch(`http://127.0.0.1:${this.httpPort}/api/status`, {
      headers: { authorization: `Bearer ${this.tokenValue}` },
    });
    if (!r.ok) throw new Error(`status ${r.status}`);
    return await r.json();
  }

  replicaPath(agent: string, volume: string): string {
    return `${this.home}/replicas/${agent}/${volume}.img`;
  }
}

export interface RemoteStatus {
  sites: string[];
  standbyAgents: string[];
  replicas: { agent: string; name: string; state: string; lastSeq: number; appliedSeq: number }[];
  journal: { used: number };
  /** The feeds to the standby agents. */
  standby: { peer: string; lagSeconds: number; lagBytes: number; inFlightBytes: number }[];
}

export interface SiteStatus {
  site: string;
  connected: boolean;
  lagBytes: number;
  lagSeconds: number;
  /** Sent and not yet acknowledged. */
  inFlightBytes: number;
  volumes: {
    name: string;
    state: string;
    ackedSeq: number;
    lagRecords: number;
    syncCompared: number;
    syncMoved: number;
  }[];
}

/**
 * A whole topology on loopback: one local gateway with one agent, and remote
 * sites each with a remote gateway and a standby agent.
 */
export async function startTopology(prefix: string, opts: {
  size: number;
  sites: string[];
  gatewayExtra?: string[];
  /** Added to the local gateway's environment. */
  gatewayEnv?: Record<string, string>;
  remoteExtra?: string[];
  ackAfter?: "rgp" | "rsp";
  /** Run before the roles start (fill images, place old copies). */
  prepare?: (dir: string, paths: { lsp: string; rsp: Record<string, string> }) => Promise<void>;
  /** Sites whose link from the local gateway goes through a test proxy (cut, heal, corrupt). */
  proxied?: string[];
  /** The local gateway also takes agents over TCP (Gateway's `tcp`). */
  agentTcp?: boolean;
  /** Where the topology's directory goes (default: tempDir's). */
  under?: string;
}) {
  const dir = await tempDir(prefix, opts.under);
  const secret = `${dir}/agent.secret`;
  await writeSecret(secret);
  const localKeys = `${dir}/local-keys`;
  const localFp = await keygen(localKeys, "local");
  const lsp = await sparseImage(`${dir}/lsp.img`, opts.size);
  const rsp: Record<string, string> = {};
  const remotes: Record<string, RemoteGateway> = {};
  for (const site of opts.sites) {
    rsp[site] = await sparseImage(`${dir}/rsp-${site}.img`, opts.size);
    await writeSecret(`${dir}/standby-${site}.secret`);
    remotes[site] = await new RemoteGateway({
      dir,
      site,
      trust: { local: localFp },
      standbySecrets: { a1: `${dir}/standby-${site}.secret` },
      ackAfter: opts.ackAfter,
      extra: opts.remoteExtra,
    }).init();
  }
  await opts.prepare?.(dir, { lsp, rsp });
  for (const r of Object.values(remotes)) await r.start();
  const standbys: Record<string, Agent> = {};
  for (const site of opts.sites) {
    standbys[site] = await new Agent({
      dir,
      id: "a1",
      secretFile: `${dir}/standby-${site}.secret`,
      gatewaySocket: remotes[site].agentSocket,
      volumes: { vol0: rsp[site] },
      extra: ["--standby"],
      home: `standby-${site}`,
    }).start();
  }
  const proxies: Record<string, Proxy> = {};
  for (const s of opts.proxied ?? []) {
    proxies[s] = new Proxy({ hostname: "127.0.0.1", port: remotes[s].port });
  }
  const gw = await new Gateway({
    dir,
    agents: { a1: secret },
    extra: [
      "--key-dir",
      localKeys,
      ...opts.sites.flatMap((s) => [
        "--remote",
        `${s}=127.0.0.1:${proxies[s]?.port ?? remotes[s].port}`,
        "--remote-fingerprint",
        `${s}=${remotes[s].fingerprint}`,
      ]),
      ...(opts.gatewayExtra ?? []),
    ],
    env: opts.gatewayEnv,
    tcp: opts.agentTcp,
  }).start();
  const agent = await new Agent({
    dir,
    id: "a1",
    secretFile: secret,
    gatewaySocket: gw.socket,
    volumes: { vol0: lsp },
  })
    .start();
  await waitFor(() => gw.status().then((s) => s.agents.includes("a1")), 20_000, "agent to connect");
  const t = {
    dir,
    gw,
    agent,
    remotes,
    standbys,
    proxies,
    lsp,
    rsp,
    localFp,
    async sites(): Promise<SiteStatus[]> {
      return ((await gw.status()) as unknown as { sites: SiteStatus[] }).sites;
    },
    /** Waits until every site acknowledged everything and the local journal is empty. */
    async caughtUp(timeoutMs = 120_000): Promise<void> {
      await waitMirrorCaughtUp(gw, "a1", "vol0", timeoutMs);
      await waitFor(
        async () => {
          const s = await gw.status();
          const sites = (s as unknown as { sites: SiteStatus[] }).sites;
          const v = s.volumes.find((x) => x.name === "vol0")!;
          return sites.every((x) =>
            x.connected && x.volumes.every((vv) => vv.state === "consistent" && vv.ackedSeq === v.lastSeq)
          );
        },
        timeoutMs,
        "every site to acknowledge everything",
        200,
      );
    },
    /** Every copy of vol0, by name. */
    copies(): Record<string, string> {
      const out: Record<string, string> = { lsp, lgp: gw.mirrorPath("a1", "vol0") };
      for (const s of opts.sites) {
        out[`rgp-${s}`] = remotes[s].replicaPath("a1", "vol0");
        out[`rsp-${s}`] = rsp[s];
      }
      return out;
    },
    async stop() {
      for (const p of Object.values(proxies)) p.close();
      await agent.proc.stop();
      await gw.proc.stop();
      for (const s of Object.values(standbys)) await s.proc.stop();
      for (const r of Object.values(remotes)) await r.proc.stop();
    },
  };
  return t;
}

/** sha256 of every file, by key. */
export async function hashAll(files: Record<string, string>): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [k, p] of Object.entries(files)) out[k] = await sha256File(p);
  return out;
}
