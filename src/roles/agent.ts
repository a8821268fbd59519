// The agent role: exports each protected volume over NBD, intercepting every
// write (see capture/protected-volume.ts) and forwarding it to the local gateway.
import type { FlagSpec, Parsed } from "../cli/flags.ts";
import { UsageError } from "../cli/flags.ts";
import { ensurePrivateDir, list, num, optStr, pairs, type RoleHandle, str } from "../cli/common.ts";
import { logger } from "../log.ts";
import { Volume } from "../volume/volume.ts";
import {
  type GatewayLossPolicy,
  type LinkVolume,
  NativeAgent,
  type NativeAgentOptions,
  type ProtectedVolume,
} from "../capture/native-agent.ts";
import { parseAddress } from "../link/address.ts";
import { readSecretFile } from "../wire/secret-file.ts";
import { NbdServer } from "../nbd/server.ts";
import { StandbyApplier, StandbyVolume } from "../replication/standby.ts";
import {
  decodeJson,
  decodeMixed,
  decodeTime,
  type Frame,
  FrameType,
  mixedFrame,
  timeFrame,
} from "../wire/frames.ts";
import { type ChunkRequest, FileChunks, serveChunkOp, type Tracked } from "../recovery/chunk-ops.ts";
import { AgentState } from "../capture/agent-state.ts";
import { DirtyMap } from "../capture/dirty-map.ts";
import { type Assignment, AssignmentFile, parseAssignment } from "../capture/assignments.ts";
import { parseCheck, ServiceMonitor } from "../health/service-check.ts";
import { startHeartbeatThread } from "../heartbeat/channel.ts";
import { checkPrefix, DeviceReporter, outsidePrefixes } from "../capture/devices.ts";
import * as io from "../native/mod.ts";
import { StandbyDrills } from "../drills/standby.ts";

const log = logger("agent");

export const agentFlags: FlagSpec[] = [
  {
    name: "id",
    type: "string",
    description: "this agent's name, as the gateway knows it",
    default: Deno.hostname(),
  },
  {
    name: "volume",
    type: "string",
    multiple: true,
    description:
      "a protected volume: export name and file or block device (without it the gateway assigns them)",
    placeholder: "NAME=PATH",
  },
  {
    name: "device-prefix",
    type: "string",
    multiple: true,
    description:
      "a directory whose files and block devices this agent may serve: reported to the gateway for its inventory; assignments elsewhere are refused",
    placeholder: "DIR",
  },
  {
    name: "data-dir",
    type: "string",
    description: "state directory (dirty maps)",
    default: "/var/lib/continuum/agent",
    placeholder: "DIR",
  },
  {
    name: "nbd-socket",
    type: "string",
    description: "Unix socket for NBD clients [default: DATA-DIR/nbd.sock]; 'off' disables",
    placeholder: "PATH",
  },
  {
    name: "nbd-listen",
    type: "string",
    description: "TCP address for NBD clients; 'off' disables",
    default: "127.0.0.1:10809",
    placeholder: "ADDR",
  },
  {
    name: "gateway",
    type: "string",
    description: "the local gateway (HOST:PORT or unix:PATH)",
    default: "127.0.0.1:7800",
    placeholder: "ADDR",
  },
  {
    name: "secret-file",
    type: "string",
    description: "file holding this agent's secret (shared with the gateway)",
    placeholder: "FILE",
  },
  {
    name: "on-gateway-loss",
    type: "string",
    description: "when the gateway is unreachable: block writes, or track dirty regions and continue",
    choices: ["block", "track"],
    default: "block",
  },
  {
    name: "gateway-timeout",
    type: "duration",
    description: "in block mode, how long a write waits for an absent gateway before failing",
    default: "30s",
  },
  {
    name: "dirty-chunk",
    type: "size",
    description: "granularity of the dirty map (resent unit after a crash or outage)",
    default: "1M",
  },
  {
    name: "standby",
    type: "boolean",
    description: "this server is a standby at a remote site: apply the replicated stream, refuse NBD writes",
    default: false,
  },
  {
    name: "on-promote",
    type: "string",
    description:
      "standby: command run (sh -c) when this server is promoted, e.g. mount and start the service",
    placeholder: "COMMAND",
  },
  {
    name: "on-demote",
    type: "string",
    description:
      "standby: command run (sh -c) when the service goes back to the primary site, before the volumes turn read-only, e.g. stop the service and unmount",
    placeholder: "COMMAND",
  },
  {
    name: "on-unfence",
    type: "string",
    description:
      "command run (sh -c) when the gateway lifts this server's fence after recovery or failback, e.g. mount and start the service",
    placeholder: "COMMAND",
  },
  {
    name: "service-check",
    type: "string",
    description: "how to check the service: tcp:HOST:PORT, http(s)://URL or exec:COMMAND",
    placeholder: "CHECK",
  },
  {
    name: "service-check-interval",
    type: "duration",
    description: "how often the service is checked",
    default: "200ms",
  },
  {
    name: "service-check-failures",
    type: "number",
    description: "failed checks in a row before the service counts as failed",
    default: 3,
  },
  {
    name: "heartbeat-to",
    type: "string",
    description: "where heartbeats go (UDP HOST:PORT) [default: the gateway's host, port 7810]",
    placeholder: "ADDR",
  },
  {
    name: "heartbeat-interval",
    type: "duration",
    description: "heartbeat period η",
    default: "100ms",
  },
  {
    name: "max-unconfirmed",
    type: "size",
    description: "records kept for resending until the gateway confirms them durable",
    default: "256M",
  },
];

interface Common {
  p: Parsed;
  id: string;
  secret: Uint8Array;
  dataDir: string;
  state: AgentState;
  /** Every volume served now: the --volume ones and the gateway's assignments. */
  volumes: Map<string, Volume>;
  /** The names given by --volume: they win over an assignment of the same name. */
  flagNames: Set<string>;
  /** --device-prefix: the directories assignments may name (none: no limit). */
  devicePrefixes: string[];
  monitor: ServiceMonitor | undefined;
  /** The heartbeat sender, once started: the gateway may set its period. */
  heartbeats?: { setInterval(ms: number): void };
}

export async function runAgent(p: Parsed): Promise<RoleHandle> {
  const dataDir = str(p, "data-dir");
  const id = str(p, "id");
  const volumesArg = pairs("volume", p["volume"]);
  const secretFile = optStr(p, "secret-file");
  if (!secretFile) {
    throw new UsageError("--secret-file is required (the agent's secret shared with the gateway)");
  }
  const secret = readSecretFile(secretFile);
  const chunk = num(p, "dirty-chunk");
  if (chunk < 4096 || chunk % 4096 !== 0) throw new UsageError("--dirty-chunk must be a multiple of 4096");
  const check = optStr(p, "service-check");
  const spec = check ? parseCheck(check) : undefined;
  const devicePrefixes = list(p, "device-prefix");
  for (const d of devicePrefixes) {
    const bad = checkPrefix(d);
    if (bad) throw new UsageError(bad);
  }
  ensurePrivateDir(dataDir);
  const volumes = new Map<string, Volume>();
  try {
    for (const [name, path] of volumesArg) {
      const volume = Volume.open(path);
      volumes.set(name, volume);
      if (volume.size === 0) throw new Error(`volume ${name} (${path}) is empty`);
    }
  } catch (e) {
    for (const v of volumes.values()) v.close();
    throw e;
  }
  const monitor = spec
    ? new ServiceMonitor({
      spec,
      intervalMs: num(p, "service-check-interval"),
      failures: num(p, "service-check-failures"),
    })
    : undefined;
  const c: Common = {
    p,
    id,
    secret,
    dataDir,
    state: await AgentState.load(dataDir),
    volumes,
    flagNames: new Set(volumesArg.keys()),
    devicePrefixes,
    monitor,
  };
  const role = p["standby"] === true && !c.state.promoted ? await runStandby(c) : await runPrimary(c);
  monitor?.start();
  const heartbeats = startHeartbeats(c);
  c.heartbeats = heartbeats;
  return {
    fatal: role.fatal,
    stop: async () => {
      monitor?.stop();
      await heartbeats?.close();
      await role.stop();
      for (const v of volumes.values()) v.close();
    },
  };
}

/** Heartbeats to the gateway's failure detector, carrying the service verdict. */
function startHeartbeats(c: Common) {
  const explicit = optStr(c.p, "heartbeat-to");
  const gw = parseAddress(str(c.p, "gateway"));
  const target = explicit
    ? parseAddress(explicit)
    : gw.transport === "tcp"
    ? { ...gw, port: 7810 }
    : undefined;
  if (!target || target.transport !== "tcp") {
    if (explicit) throw new UsageError("--heartbeat-to must be HOST:PORT");
    return undefined;
  }
  return startHeartbeatThread({
    host: target.hostname,
    port: target.port,
    agentId: c.id,
    secret: c.secret,
    intervalMs: num(c.p, "heartbeat-interval"),
    getStatus: () => ({
      healthy: c.monitor?.healthy ?? true,
      detail: c.monitor?.detail ?? "no service check",
    }),
  });
}

/** The data plane of this agent: its link to the gateway, from the flags. */
function startDataPlane(
  c: Common,
  hooks: Pick<NativeAgentOptions, "onControl" | "onFrame" | "onConnected">,
): NativeAgent {
  const agent = new NativeAgent({
    gateway: parseAddress(str(c.p, "gateway")),
    agent: c.id,
    secret: c.secret,
    onGatewayLoss: str(c.p, "on-gateway-loss") as GatewayLossPolicy,
    gatewayTimeoutMs: num(c.p, "gateway-timeout"),
    maxUnconfirmedBytes: num(c.p, "max-unconfirmed"),
    ...hooks,
  });
  // a fence survives restarts: writes stay refused until the gateway lifts it
  agent.fence(c.state.fenced);
  return agent;
}

/** Starts the NBD server on the configured socket and/or TCP address. */
async function serveNbd(p: Parsed, dataDir: string): Promise<NbdServer> {
  const socket = optStr(p, "nbd-socket") ?? `${dataDir}/nbd.sock`;
  const tcp = str(p, "nbd-listen");
  const tcpAddr = tcp === "off" ? undefined : parseAddress(tcp);
  if (tcpAddr && tcpAddr.transport !== "tcp") throw new UsageError("--nbd-listen must be HOST:PORT or off");
  return await NbdServer.listen({
    unixPath: socket === "off" ? undefined : socket,
    tcp: tcpAddr?.transport === "tcp" ? { hostname: tcpAddr.hostname, port: tcpAddr.port } : undefined,
  });
}

function exportCaptured(server: NbdServer, agent: NativeAgent, pv: ProtectedVolume): void {
  server.exportVolume(pv.name, agent, pv.linkId, `Continuum protected volume ${pv.name}`);
}

/**
 * Serves a recovery's chunk operations on this agent's volumes. Writes are only
 * taken while the agent is fenced: a recovery rebuilds a volume no client writes
 * (or, `rollingBack`, while its gateway rolls a standby back to a recovery point
 * before promoting it: its feed has stopped and its copies are read-only).
 */
async function chunkOp(
  c: Common,
  agent: NativeAgent,
  f: Frame,
  writable: boolean,
  divergence: (name: string) => (() => Promise<Tracked>) | undefined,
  rollingBack = false,
): Promise<void> {
  if (f.type !== FrameType.ChunkOp) throw new Error(`unexpected frame type ${f.type} from gateway`);
  const { header, payload } = decodeMixed<ChunkRequest>(f.body);
  const [, name] = String(header.volume).split("/");
  const volume = c.volumes.get(name);
  if (header.op === "write" && !c.state.fenced && !rollingBack) {
    agent.send(
      mixedFrame(FrameType.ChunkReply, {
        id: header.id,
        ok: false,
        error: "recovery writes need the volume fenced",
      }),
    );
    return;
  }
  const store = volume ? new FileChunks(volume.fd, volume.size, writable, divergence(name)) : undefined;
  agent.send(await serveChunkOp(store, header, payload));
}

/** Handles the gateway's fence / unfence orders; true when the message was one. */
function fenceOrder(c: Common, agent: NativeAgent, msg: unknown): boolean {
  const m = msg as { type?: string; reason?: string };
  if (m?.type === "fence") {
    const reason = String(m.reason ?? "fenced by the gateway");
    agent.fence(reason);
    c.state.fence(reason).catch((e) => log.error("cannot persist the fence", { error: e }));
  } else if (m?.type === "unfence") {
    const wasFenced = c.state.fenced !== undefined;
    agent.fence(undefined);
    c.state.unfence().then(() => wasFenced ? runHook(c, "on-unfence") : undefined).catch((e) =>
      log.error("--on-unfence failed", { error: e })
    );
  } else return false;
  return true;
}

/** The gateway's QoS configuration sets the heartbeat period; true when the message was that order. */
function heartbeatOrder(c: Common, msg: unknown): boolean {
  const m = msg as { type?: string; etaMs?: unknown };
  if (m?.type !== "heartbeat-interval") return false;
  try {
    c.heartbeats?.setInterval(Number(m.etaMs));
    log.info("heartbeat period set by the gateway", { etaMs: m.etaMs });
  } catch (e) {
    log.warn("heartbeat period refused", { etaMs: m.etaMs, error: e });
  }
  return true;
}

/** Runs an operator's hook command (sh -c), with `env` added; throws when it exits non-zero. */
async function runHook(
  c: Common,
  flag: "on-promote" | "on-demote" | "on-unfence",
  env: Record<string, string> = {},
): Promise<void> {
  const hook = optStr(c.p, flag);
  if (!hook) return;
  const out = await new Deno.Command("sh", { args: ["-c", hook], env, stdout: "inherit", stderr: "inherit" })
    .output();
  if (!out.success) throw new Error(`--${flag} exited with code ${out.code}`);
}

/** How a volume's dirty map starts: as found, cleared (the gateway's copy is equal), or all set. */
type DirtyStart = "keep" | "equal" | "unknown";

function capture(
  c: Common,
  agent: NativeAgent,
  name: string,
  volume: Volume,
  linkId: number,
  mode: DirtyStart,
  onFatal: (e: Error) => void,
): Promise<ProtectedVolume> {
  // a promoted standby's map keeps every chunk written since the promotion: failback moves those
  return agent.addVolume(
    { linkId, name, fd: volume.fd, size: volume.size },
    { path: dirtyPath(c, name), chunk: num(c.p, "dirty-chunk"), mode, sticky: c.state.promoted },
    onFatal,
  );
}

function dirtyPath(c: Common, name: string): string {
  return `${c.dataDir}/${name}.dirty`;
}

/** A captured volume's dirty map as a tracked divergence (from its gateway's copy, or since a promotion). */
function trackedOf(c: Common, pv: ProtectedVolume): () => Promise<Tracked> {
  return () => {
    const d = pv.dirty();
    const since = c.state.promotedSince;
    return Promise.resolve({
      ...d,
      since: since
        ? `the promotion at ${new Date(since).toISOString()}`
        : "the gateway's durable copy (dirty map)",
    });
  };
}

/**
 * A demoted standby's map from its last promotion: every chunk written while it served. A map
 * that is missing (or for another geometry) proves nothing.
 */
function trackedSincePromotion(c: Common, name: string, size: number): () => Promise<Tracked> {
  return async () => {
    try {
      await Deno.stat(dirtyPath(c, name));
    } catch {
      throw new Error(`no divergence of ${name} is tracked here (never promoted)`);
    }
    const map = await DirtyMap.open(dirtyPath(c, name), size, num(c.p, "dirty-chunk"));
    try {
      if (map.fresh) throw new Error(`the divergence map of ${name} is unreadable`);
      return { chunkSize: map.chunkSize, chunks: map.setChunks(), since: "the last promotion (now demoted)" };
    } finally {
      await map.close();
    }
  };
}

/**
 * Captures each --volume (or, at a promotion, each standby copy). Waits (bounded) for the
 * gateway to accept them, so a refusal (e.g. a changed size) stops the agent at start
 * instead of after clients wrote.
 */
async function protect(
  c: Common,
  agent: NativeAgent,
  linkBase: number,
  onFatal: (e: Error) => void,
  mode: DirtyStart = "keep",
) {
  const exports: ProtectedVolume[] = [];
  let linkId = linkBase;
  for (const [name, volume] of c.volumes) {
    exports.push(await capture(c, agent, name, volume, linkId++, mode, onFatal));
  }
  return {
    exports,
    ready: () =>
      Promise.race([Promise.all(exports.map((e) => e.opened)), new Promise((r) => setTimeout(r, 5000))]),
    close: async (server?: NbdServer) => {
      for (const e of exports) await server?.withdraw(e.name);
      await Promise.all(exports.map((e) => e.close()));
    },
  };
}

/** A volume served because the gateway assigned it. */
interface Served {
  a: Assignment;
  volume: Volume;
  pv: ProtectedVolume;
}

/**
 * The volumes the gateway assigns over the link (the control plane): `assign` opens and
 * exports them, `unassign` stops exporting and closes them, data left in place. Orders run
 * one at a time and each is answered (`assigned` / `unassigned`, with the error if it
 * failed); a bad assignment is refused, never fatal. The list is remembered in the data
 * directory, so a restart without the gateway serves the same volumes.
 */
class AssignedVolumes {
  private served = new Map<string, Served>();
  private queue: Promise<void> = Promise.resolve();
  /** Set once the NBD server runs: assigned volumes are exported through it. */
  private server: NbdServer | undefined;

  constructor(
    private readonly c: Common,
    private readonly agent: NativeAgent,
    private readonly file: AssignmentFile,
    private nextLinkId: number,
    private readonly onFatal: (e: Error) => void,
  ) {}

  names(): string[] {
    return [...this.served.keys()];
  }

  /** The NBD server is up: what is served is exported, and what is assigned from now on. */
  exportThrough(server: NbdServer): void {
    this.server = server;
    for (const s of this.served.values()) exportCaptured(server, this.agent, s.pv);
  }

  /** Tells the gateway what is remembered, so it can withdraw what it no longer assigns. */
  report(): void {
    this.agent.sendControl({ type: "assignments", names: this.file.all().map((a) => a.name) });
  }

  /** Serves the remembered assignments at start (a --volume of the same name wins). */
  async restore(): Promise<void> {
    const opened: Promise<void>[] = [];
    for (const a of this.file.all()) {
      if (this.c.flagNames.has(a.name)) {
        log.warn("--volume overrides the gateway's assignment of the same name", { volume: a.name });
        continue;
      }
      try {
        const s = await this.open(a, false);
        opened.push(s.pv.opened.catch((e) => {
          log.error("the gateway refused a remembered volume; not serving it", { volume: a.name, error: e });
          return this.close(a.name, 0);
        }));
      } catch (e) {
        log.error("cannot serve a remembered assignment", { volume: a.name, path: a.path, error: e });
      }
    }
    // bounded like the --volume ones: an absent gateway does not hold the start
    await Promise.race([Promise.all(opened), new Promise((r) => setTimeout(r, 5000))]);
  }

  /** The gateway's assign / unassign orders; false when the message is neither. */
  control(m: unknown): boolean {
    const msg = m as { type?: string; id?: unknown; volumes?: unknown; name?: unknown };
    if (msg?.type === "assign") this.serial(() => this.assign(msg.id, msg.volumes));
    else if (msg?.type === "unassign") this.serial(() => this.unassign(msg.id, msg.name));
    else return false;
    return true;
  }

  private serial(fn: () => Promise<void>): void {
    this.queue = this.queue.then(fn).catch((e) => log.error("control order failed", { error: e }));
  }

  private async assign(id: unknown, volumes: unknown): Promise<void> {
    const results: { name: string | null; ok: boolean; error?: string }[] = [];
    if (!Array.isArray(volumes)) {
      results.push({ name: null, ok: false, error: "assign needs a list of volumes" });
    } else {
      for (const raw of volumes) {
        const a = parseAssignment(raw);
        if (typeof a === "string") {
          log.error("assignment refused", { reason: a });
          results.push({ name: (raw as { name?: string })?.name ?? null, ok: false, error: a });
          continue;
        }
        try {
          await this.assignOne(a);
          results.push({ name: a.name, ok: true });
        } catch (e) {
          log.error("assignment failed", { volume: a.name, path: a.path, error: e });
          results.push({ name: a.name, ok: false, error: (e as Error).message });
        }
      }
    }
    this.agent.sendControl({ type: "assigned", id, results });
  }

  private async assignOne(a: Assignment): Promise<void> {
    if (this.c.flagNames.has(a.name)) {
      const v = this.c.volumes.get(a.name)!;
      if (v.path === a.path && v.size === a.size) return;
      throw new Error(`volume ${a.name} is given by --volume on this agent (${v.path}), which wins`);
    }
    const outside = outsidePrefixes(a.path, this.c.devicePrefixes);
    if (outside) throw new Error(outside);
    const cur = this.served.get(a.name);
    if (cur && cur.a.path === a.path && cur.a.size === a.size) return;
    if (cur) await this.close(a.name);
    const s = await this.open(a, cur !== undefined);
    const timeout = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`the gateway did not accept volume ${a.name} within 10 s`)), 10_000)
    );
    try {
      await Promise.race([s.pv.opened, timeout]);
    } catch (e) {
      await this.close(a.name, 0);
      throw e;
    }
    await this.file.set(a);
    log.info("volume assigned: exporting it", { volume: a.name, path: a.path, size: a.size });
  }

  private async unassign(id: unknown, name: unknown): Promise<void> {
    const answer = (ok: boolean, error?: string) =>
      this.agent.sendControl({ type: "unassigned", id, name, ok, ...(error ? { error } : {}) });
    if (typeof name !== "string") return void answer(false, "unassign needs a volume name");
    if (this.c.flagNames.has(name)) {
      return void answer(false, `volume ${name} is given by --volume on this agent, which wins`);
    }
    await this.close(name);
    await this.file.delete(name);
    log.info("volume unassigned: no longer exported, its data left in place", { volume: name });
    answer(true);
  }

  /** Opens the device, checks its size and starts capturing it. `changed`: it replaces another device. */
  private async open(a: Assignment, changed: boolean): Promise<Served> {
    const volume = Volume.open(a.path);
    let pv: ProtectedVolume;
    try {
      if (volume.size !== a.size) {
        throw new Error(`${a.path} is ${volume.size} bytes, the assignment of ${a.name} says ${a.size}`);
      }
      // another device under the same name: nothing is known of what the gateway holds of it
      pv = await capture(
        this.c,
        this.agent,
        a.name,
        volume,
        this.nextLinkId++,
        changed ? "unknown" : "keep",
        this.onFatal,
      );
    } catch (e) {
      volume.close();
      throw e;
    }
    const s = { a, volume, pv };
    this.served.set(a.name, s);
    this.c.volumes.set(a.name, volume);
    if (this.server) exportCaptured(this.server, this.agent, pv);
    return s;
  }

  /**
   * Stops serving a volume: its export is withdrawn (its clients' requests in flight
   * answered), the gateway confirms its pending records (bounded by `waitMs`), and the
   * device is closed as it is.
   */
  async close(name: string, waitMs = 10_000): Promise<void> {
    const s = this.served.get(name);
    if (!s) return;
    this.served.delete(name);
    await this.server?.withdraw(name);
    await s.pv.close(waitMs);
    s.volume.close();
    if (this.c.volumes.get(name) === s.volume) this.c.volumes.delete(name);
  }

  /** The captured volume served under `name`, if any. */
  captured(name: string): ProtectedVolume | undefined {
    return this.served.get(name)?.pv;
  }

  async closeAll(): Promise<void> {
    await this.queue;
    for (const name of [...this.served.keys()]) await this.close(name);
  }
}

async function runPrimary(c: Common): Promise<RoleHandle> {
  let fail!: (e: Error) => void;
  const fatal = new Promise<never>((_, reject) => fail = reject);
  fatal.catch(() => {}); // observed by main
  const agent = startDataPlane(c, {
    onControl: (m) => {
      if (!fenceOrder(c, agent, m) && !heartbeatOrder(c, m)) assigned.control(m);
    },
    onFrame: (f) => {
      // not awaited: a recovery keeps several operations in flight (a scan beside its copies)
      chunkOp(c, agent, f, true, (name) => {
        const pv = prot?.exports.find((e) => e.name === name) ?? assigned.captured(name);
        return pv ? trackedOf(c, pv) : undefined;
      }).catch((e) => log.warn("chunk operation failed", { error: e }));
    },
    onConnected: () => {
      assigned.report();
      devices.connected();
    },
  });
  agent.serveChunkWrites();
  const devices = new DeviceReporter(c.devicePrefixes, (m) => agent.sendControl(m));
  let server: NbdServer | undefined;
  let prot: Awaited<ReturnType<typeof protect>> | undefined;
  const assigned = new AssignedVolumes(
    c,
    agent,
    await AssignmentFile.load(c.dataDir),
    c.volumes.size,
    (e) => fail(e),
  );
  try {
    prot = await protect(c, agent, 0, (e) => fail(e));
    agent.start();
    await prot.ready();
    await assigned.restore();
    server = await serveNbd(c.p, c.dataDir);
    for (const pv of prot.exports) exportCaptured(server, agent, pv);
    assigned.exportThrough(server);
    log.info("agent ready", {
      agent: c.id,
      volumes: [...prot.exports.map((e) => e.name), ...assigned.names()],
      fenced: c.state.fenced ?? null,
    });
    const running = { server, prot };
    return {
      fatal,
      stop: async () => {
        devices.close();
        await assigned.closeAll();
        await running.prot.close(running.server);
        await running.server.close();
        await agent.close();
      },
    };
  } catch (e) {
    devices.close();
    await assigned.closeAll();
    await prot?.close(server);
    await server?.close();
    await agent.close();
    throw e;
  }
}

/**
 * A standby server: its volumes are copies kept by its site's gateway. They are
 * exported read-only and the gateway's stream is applied to them in order, until
 * the gateway orders a promotion: then they are protected volumes like a
 * primary's (captured, journaled by this site's gateway) and the service starts.
 */
async function runStandby(c: Common): Promise<RoleHandle> {
  const copies: StandbyVolume[] = [];
  const file = await AssignmentFile.load(c.dataDir);
  /**
   * Opens an assigned copy. `fresh`: assigned just now, so nothing is known of what the device
   * holds: it is reported inconsistent and the gateway compares it by hash before streaming.
   */
  const openCopy = async (a: Assignment, fresh: boolean): Promise<StandbyVolume> => {
    const volume = Volume.open(a.path);
    try {
      if (volume.size !== a.size) {
        throw new Error(`${a.path} is ${volume.size} bytes, the assignment of ${a.name} says ${a.size}`);
      }
      const s = await StandbyVolume.open(a.name, volume, c.dataDir);
      if (fresh) {
        s.seq = { lastSeq: 0, rebase: false };
        s.state = "inconsistent";
        await s.persist();
      }
      c.volumes.set(a.name, volume);
      return s;
    } catch (e) {
      volume.close();
      throw e;
    }
  };
  for (const [name, volume] of c.volumes) copies.push(await StandbyVolume.open(name, volume, c.dataDir));
  for (const a of file.all()) {
    if (c.flagNames.has(a.name)) continue; // --volume wins
    try {
      copies.push(await openCopy(a, false));
    } catch (e) {
      log.error("cannot serve a remembered standby assignment", { volume: a.name, path: a.path, error: e });
    }
  }
  const applier = new StandbyApplier(copies, (b) => agent.send(b));
  let announced = 0;
  /** Set while the link is restarted for a new set of copies: the old connection starts no stream. */
  let reconnecting = false;
  let primary: Awaited<ReturnType<typeof protect>> | undefined;
  /** The link id each copy is announced under (fresh ones after a change: ids are never reused). */
  const linkIds = new Map<StandbyVolume, number>();
  let nextLinkId = 0;
  const announce = (s: StandbyVolume) => {
    const id = nextLinkId++;
    linkIds.set(s, id);
    agent.announce(standbyLinkVolume(s, id));
  };
  let fail!: (e: Error) => void;
  const fatal = new Promise<never>((_, reject) => fail = reject);
  fatal.catch(() => {});
  const nbd: { server?: NbdServer } = {};
  const exportCopy = (s: StandbyVolume) =>
    nbd.server?.exportFile(s.name, s.volume.fd, s.volume.size, true, `Continuum standby copy of ${s.name}`);

  /** `equal`: the gateway's replica holds exactly what this copy holds (it waited for this standby). */
  /** While the gateway rolls the standby copies back to a point (chunk writes taken). */
  let rollingBack = false;
  const promote = async (equal: boolean): Promise<void> => {
    if (primary) return;
    rollingBack = false;
    log.warn("promotion: this standby takes over the service", { copiesEqual: equal });
    await applier.freeze();
    await c.state.promote();
    for (const s of copies) agent.withdraw(linkIds.get(s)!);
    primary = await protect(c, agent, nextLinkId, (e) => fail(e), equal ? "equal" : "unknown");
    nextLinkId += primary.exports.length;
    const server = nbd.server!;
    for (const s of copies) await server.withdraw(s.name);
    for (const pv of primary.exports) exportCaptured(server, agent, pv);
    await primary.ready();
    await runHook(c, "on-promote");
    await c.monitor?.waitHealthy(30_000);
    log.warn("promoted: serving the volumes read-write", { volumes: copies.map((s) => s.name) });
  };

  /**
   * The service goes back to the primary site: stop it here (--on-demote), wait
   * until the gateway holds every write made here, then be a standby again. The
   * copies are reported inconsistent, so the gateway's feeder compares them
   * (by hash: nothing moves when they are equal) before streaming again.
   */
  const demote = async (): Promise<void> => {
    if (!primary) return;
    log.warn("demotion: the service goes back to the primary site");
    await runHook(c, "on-demote");
    const server = nbd.server!;
    for (const pv of primary.exports) await server.withdraw(pv.name);
    // every write made here must be durable at the gateway before the copies change hands
    const deadline = performance.now() + 10_000;
    while (primary.exports.some((e) => !e.quiescent) && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const stuck = primary.exports.filter((e) => !e.quiescent).map((e) => e.name);
    if (stuck.length) throw new Error(`writes to ${stuck.join(", ")} not confirmed by the gateway`);
    await primary.close();
    primary = undefined;
    await c.state.demote();
    for (const s of copies) {
      s.seq = { lastSeq: 0, rebase: false };
      s.state = "inconsistent";
      await s.persist();
      exportCopy(s);
    }
    applier.thaw();
    announced = 0;
    copies.forEach(announce);
    log.warn("demoted: standby again, volumes read-only", { volumes: copies.map((s) => s.name) });
  };

  const agent = startDataPlane(c, {
    onConnected: () => {
      announced = 0;
      reconnecting = false;
      applier.reset();
      // the gateway reconciles the copies it is told of with what its local sites ask for
      agent.sendControl({ type: "assignments", names: file.all().map((a) => a.name) });
      devices.connected();
      for (const w of reconnected.splice(0)) w();
    },
    onControl: (m) => {
      const msg = m as { type?: string; id?: number; equal?: boolean; volumes?: unknown; name?: unknown };
      if (msg?.type === "assign") return void serial(() => assignCopies(msg.id, msg.volumes));
      if (msg?.type === "unassign") return void serial(() => unassignCopy(msg.id, msg.name));
      if (drills.order(m)) return;
      if (msg?.type === "rollback") {
        // the gateway stopped feeding this standby and rolls its copies back to a point
        const on = (m as { on?: boolean }).on === true;
        if (on && primary) {
          return void agent.sendControl({
            type: "rollback-set",
            id: msg.id,
            ok: false,
            error: "promoted already",
          });
        }
        rollingBack = on;
        log.warn(on ? "rollback: the gateway rewrites the standby copies" : "rollback ended");
        return void agent.sendControl({ type: "rollback-set", id: msg.id, ok: true });
      }
      const act = msg?.type === "promote"
        ? () => promote(msg.equal === true)
        : msg?.type === "demote"
        ? demote
        : undefined;
      if (!act) return void fenceOrder(c, agent, m);
      const answer = msg.type === "promote" ? "promoted" : "demoted";
      act().then(
        () => agent.sendControl({ type: answer, id: msg.id, ok: true }),
        (e) => {
          log.error(`${msg.type} failed`, { error: e });
          agent.sendControl({ type: answer, id: msg.id, ok: false, error: (e as Error).message });
        },
      );
    },
    onFrame: async (f) => {
      if (f.type === FrameType.ChunkOp) {
        return chunkOp(c, agent, f, rollingBack, (name) => {
          const pv = primary?.exports.find((e) => e.name === name);
          if (pv) return trackedOf(c, pv);
          const v = c.volumes.get(name);
          return v ? trackedSincePromotion(c, name, v.size) : undefined;
        }, rollingBack);
      }
      if (primary) return; // promoted: the stream to the standby copy is over
      switch (f.type) {
        case FrameType.Record:
          await applier.record(f.body);
          break;
        case FrameType.HashRequest: {
          const q = decodeJson<{ volume?: number; chunkSize?: number }>(f.body);
          agent.send(await applier.hashes(Number(q.volume), Number(q.chunkSize)));
          break;
        }
        case FrameType.Ping:
          agent.send(timeFrame(FrameType.Pong, decodeTime(f.body)));
          break;
        default:
          throw new Error(`unexpected frame type ${f.type} from gateway`);
      }
    },
  });
  const standbyLinkVolume = (s: StandbyVolume, i: number): LinkVolume => ({
    linkId: i,
    name: s.name,
    size: s.volume.size,
    openFields: () => ({ standby: true, lastSeq: s.seq.lastSeq, state: s.state }),
    onOpened: (info) => {
      applier.opened(s.name, info.journalId);
      // every volume is known to the gateway: it may start streaming
      if (++announced === copies.length && !reconnecting) agent.sendControl({ type: "standby-ready" });
    },
    onRefused: (message) =>
      log.error("gateway refused the standby volume", { volume: s.name, reason: message }),
  });

  // The gateway's assignments of standby copies (relayed by this site's gateway from the local
  // site's control plane), one at a time, each answered. A new or removed copy restarts the
  // link: the gateway then announces the new set and compares a new copy by hash. The answer
  // goes out on the new connection, so the gateway's next order cannot reach the closing one.
  let queue: Promise<void> = Promise.resolve();
  const reconnected: (() => void)[] = [];
  const restartLink = async () => {
    const up = new Promise<void>((r) => {
      reconnected.push(r);
      setTimeout(r, 10_000);
    });
    await agent.reconnect();
    await up;
  };
  const serial = (fn: () => Promise<void>) => {
    queue = queue.then(fn).catch((e) => log.error("control order failed", { error: e }));
  };
  const assignCopies = async (id: unknown, volumes: unknown): Promise<void> => {
    const results: { name: string | null; ok: boolean; error?: string }[] = [];
    let added = false;
    for (const raw of Array.isArray(volumes) ? volumes : [null]) {
      const a = parseAssignment(raw);
      const name = typeof a === "string" ? (raw as { name?: string } | null)?.name ?? null : a.name;
      try {
        if (typeof a === "string") throw new Error(a);
        if (primary) throw new Error(`this standby is promoted: ${a.name} serves the service`);
        const cur = c.volumes.get(a.name);
        const copy = copies.find((s) => s.name === a.name);
        if (c.flagNames.has(a.name) || copy) {
          if (cur!.size !== a.size) {
            throw new Error(`standby copy ${a.name} is ${cur!.size} bytes, the assignment says ${a.size}`);
          }
          if (cur!.path !== a.path) {
            throw new Error(`standby copy ${a.name} is ${cur!.path} here: unassign it before moving it`);
          }
        } else {
          const outside = outsidePrefixes(a.path, c.devicePrefixes);
          if (outside) throw new Error(outside);
          const s = await openCopy(a, true);
          copies.push(s);
          exportCopy(s);
          reconnecting = true;
          announce(s);
          await file.set(a);
          added = true;
          log.info("standby copy assigned", { volume: a.name, path: a.path, size: a.size });
        }
        results.push({ name, ok: true });
      } catch (e) {
        log.error("standby assignment failed", { volume: name, error: e });
        results.push({ name, ok: false, error: (e as Error).message });
      }
    }
    if (added) await restartLink();
    agent.sendControl({ type: "assigned", id, results });
  };
  const unassignCopy = async (id: unknown, name: unknown): Promise<void> => {
    const answer = (ok: boolean, error?: string) =>
      agent.sendControl({ type: "unassigned", id, name, ok, ...(error ? { error } : {}) });
    if (typeof name !== "string") return void answer(false, "unassign needs a volume name");
    if (c.flagNames.has(name)) {
      return void answer(false, `volume ${name} is given by --volume here, which wins`);
    }
    if (primary) return void answer(false, `this standby is promoted: ${name} serves the service`);
    const s = copies.find((x) => x.name === name);
    if (s) {
      reconnecting = true;
      agent.withdraw(linkIds.get(s)!);
      linkIds.delete(s);
      // what was received is applied before the copy is closed; the stream restarts below
      await applier.freeze();
      copies.splice(copies.indexOf(s), 1);
      applier.forget(s);
      await nbd.server?.withdraw(name);
      await io.fdatasync(s.volume.fd);
      s.volume.close();
      c.volumes.delete(name);
      applier.thaw();
    }
    await file.delete(name);
    log.info("standby copy unassigned: its data left in place", { volume: name });
    if (s) await restartLink();
    answer(true);
  };
  const drills = new StandbyDrills({
    hook: (flag, env) => runHook(c, flag, env),
    waitHealthy: c.monitor ? (ms) => c.monitor!.waitHealthy(ms) : undefined,
    promoted: () => primary !== undefined,
    send: (m) => agent.sendControl(m),
  });

  const devices = new DeviceReporter(c.devicePrefixes, (m) => agent.sendControl(m));
  copies.forEach(announce);
  agent.start();
  const server = await serveNbd(c.p, c.dataDir);
  nbd.server = server;
  copies.forEach(exportCopy);
  log.info("agent ready", { agent: c.id, standby: true, volumes: copies.map((s) => s.name) });
  return {
    fatal,
    stop: async () => {
      devices.close();
      await primary?.close(server);
      await server.close();
      await agent.close();
    },
  };
}
