// The agent role: exports each protected volume over NBD, intercepting every
// write (see capture/protected-volume.ts) and forwarding it to the local gateway.
import type { FlagSpec, Parsed } from "../cli/flags.ts";
import { UsageError } from "../cli/flags.ts";
import { ensurePrivateDir, num, optStr, pairs, type RoleHandle, str } from "../cli/common.ts";
import { logger } from "../log.ts";
import { Volume } from "../volume/volume.ts";
import { DirtyMap } from "../capture/dirty-map.ts";
import { type GatewayLossPolicy, ProtectedVolume } from "../capture/protected-volume.ts";
import { AgentLink } from "../link/agent-link.ts";
import { parseAddress } from "../link/address.ts";
import { readSecretFile } from "../wire/auth.ts";
import { type NbdExport, NbdServer } from "../nbd/server.ts";
import { readOnlyExport } from "../nbd/read-only-export.ts";
import { StandbyApplier, StandbyVolume } from "../replication/standby.ts";
import type { LinkVolume } from "../link/agent-link.ts";
import {
  decodeJson,
  decodeMixed,
  decodeTime,
  type Frame,
  FrameType,
  mixedFrame,
  timeFrame,
} from "../wire/frames.ts";
import { type ChunkRequest, FileChunks, serveChunkOp } from "../recovery/chunk-ops.ts";
import { AgentState } from "../capture/agent-state.ts";
import { parseCheck, ServiceMonitor } from "../health/service-check.ts";
import { startHeartbeatSender } from "../heartbeat/channel.ts";

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
    description: "a protected volume: export name and file or block device",
    placeholder: "NAME=PATH",
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
  volumes: Map<string, Volume>;
  monitor: ServiceMonitor | undefined;
}

export async function runAgent(p: Parsed): Promise<RoleHandle> {
  const dataDir = str(p, "data-dir");
  const id = str(p, "id");
  const volumesArg = pairs("volume", p["volume"]);
  if (volumesArg.size === 0) throw new UsageError("at least one --volume NAME=PATH is required");
  const secretFile = optStr(p, "secret-file");
  if (!secretFile) {
    throw new UsageError("--secret-file is required (the agent's secret shared with the gateway)");
  }
  const secret = readSecretFile(secretFile);
  const chunk = num(p, "dirty-chunk");
  if (chunk < 4096 || chunk % 4096 !== 0) throw new UsageError("--dirty-chunk must be a multiple of 4096");
  const check = optStr(p, "service-check");
  const spec = check ? parseCheck(check) : undefined;
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
  const c: Common = { p, id, secret, dataDir, state: await AgentState.load(dataDir), volumes, monitor };
  const role = p["standby"] === true && !c.state.promoted ? await runStandby(c) : await runPrimary(c);
  monitor?.start();
  const heartbeats = startHeartbeats(c);
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
  return startHeartbeatSender({
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

/** Starts the NBD server on the configured socket and/or TCP address. */
async function serveNbd(p: Parsed, dataDir: string, exports: () => NbdExport[]): Promise<NbdServer> {
  const socket = optStr(p, "nbd-socket") ?? `${dataDir}/nbd.sock`;
  const tcp = str(p, "nbd-listen");
  const tcpAddr = tcp === "off" ? undefined : parseAddress(tcp);
  if (tcpAddr && tcpAddr.transport !== "tcp") throw new UsageError("--nbd-listen must be HOST:PORT or off");
  return await NbdServer.listen({
    unixPath: socket === "off" ? undefined : socket,
    tcp: tcpAddr?.transport === "tcp" ? { hostname: tcpAddr.hostname, port: tcpAddr.port } : undefined,
    exports,
  });
}

/**
 * Serves a recovery's chunk operations on this agent's volumes. Writes are only
 * taken while the agent is fenced: a recovery rebuilds a volume no client writes.
 */
async function chunkOp(c: Common, link: AgentLink, f: Frame, writable: boolean): Promise<void> {
  if (f.type !== FrameType.ChunkOp) throw new Error(`unexpected frame type ${f.type} from gateway`);
  const { header, payload } = decodeMixed<ChunkRequest>(f.body);
  const [, name] = String(header.volume).split("/");
  const volume = c.volumes.get(name);
  if (header.op === "write" && !c.state.fenced) {
    link.send(
      mixedFrame(FrameType.ChunkReply, {
        id: header.id,
        ok: false,
        error: "recovery writes need the volume fenced",
      }),
    );
    return;
  }
  const store = volume ? new FileChunks(volume.fd, volume.size, writable) : undefined;
  link.send(await serveChunkOp(store, header, payload));
}

/** Handles the gateway's fence / unfence orders; true when the message was one. */
function fenceOrder(c: Common, msg: unknown): boolean {
  const m = msg as { type?: string; reason?: string };
  if (m?.type === "fence") c.state.fence(String(m.reason ?? "fenced by the gateway"));
  else if (m?.type === "unfence") {
    const wasFenced = c.state.fenced !== undefined;
    c.state.unfence().then(() => wasFenced ? runHook(c, "on-unfence") : undefined).catch((e) =>
      log.error("--on-unfence failed", { error: e })
    );
  } else return false;
  return true;
}

/** Runs an operator's hook command (sh -c); throws when it exits non-zero. */
async function runHook(c: Common, flag: "on-promote" | "on-demote" | "on-unfence"): Promise<void> {
  const hook = optStr(c.p, flag);
  if (!hook) return;
  const out = await new Deno.Command("sh", { args: ["-c", hook], stdout: "inherit", stderr: "inherit" })
    .output();
  if (!out.success) throw new Error(`--${flag} exited with code ${out.code}`);
}

/**
 * Wraps each volume in a ProtectedVolume on the link: every write is captured.
 * Waits (bounded) for the gateway to accept the volumes, so a refusal (e.g. a
 * changed size) stops the agent at start instead of after clients wrote.
 */
async function protect(
  c: Common,
  link: AgentLink,
  linkBase: number,
  onFatal: (e: Error) => void,
  /** At a promotion: whether the gateway's copy is known to equal this one (nothing to resend) or not. */
  promotedCopy?: "equal" | "unknown",
) {
  const maps: DirtyMap[] = [];
  const exports: ProtectedVolume[] = [];
  let linkId = linkBase;
  for (const [name, volume] of c.volumes) {
    const dirty = await DirtyMap.open(`${c.dataDir}/${name}.dirty`, volume.size, num(c.p, "dirty-chunk"));
    // a map left from an earlier promotion says nothing about the copies now
    if (promotedCopy === "equal") {
      dirty.clear(dirty.setChunks());
      await dirty.settle();
    } else if (promotedCopy === "unknown") await dirty.markAll();
    maps.push(dirty);
    const pv = new ProtectedVolume({
      name,
      volume,
      dirty,
      link,
      linkId: linkId++,
      onGatewayLoss: str(c.p, "on-gateway-loss") as GatewayLossPolicy,
      gatewayTimeoutMs: num(c.p, "gateway-timeout"),
      maxUnconfirmedBytes: num(c.p, "max-unconfirmed"),
      readOnly: () => c.state.fenced,
      onFatal,
    });
    pv.opened.catch(() => {}); // awaited below
    exports.push(pv);
    link.register(pv);
  }
  return {
    exports,
    ready: () =>
      Promise.race([Promise.all(exports.map((e) => e.opened)), new Promise((r) => setTimeout(r, 5000))]),
    close: async () => {
      await Promise.all(exports.map((e) => e.close()));
      for (const m of maps) m.close();
    },
  };
}

async function runPrimary(c: Common): Promise<RoleHandle> {
  let fail!: (e: Error) => void;
  const fatal = new Promise<never>((_, reject) => fail = reject);
  fatal.catch(() => {}); // observed by main
  const link: AgentLink = new AgentLink({
    gateway: parseAddress(str(c.p, "gateway")),
    agent: c.id,
    secret: c.secret,
    onControl: (m) => fenceOrder(c, m),
    onFrame: (f) => chunkOp(c, link, f, true),
  });
  const prot = await protect(c, link, 0, (e) => fail(e));
  try {
    link.start();
    await prot.ready();
    const server = await serveNbd(c.p, c.dataDir, () => prot.exports);
    log.info("agent ready", {
      agent: c.id,
      volumes: prot.exports.map((e) => e.name),
      fenced: c.state.fenced ?? null,
    });
    return {
      fatal,
      stop: async () => {
        await server.close();
        await prot.close();
        await link.close();
      },
    };
  } catch (e) {
    await link.close();
    await prot.close();
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
  for (const [name, volume] of c.volumes) copies.push(await StandbyVolume.open(name, volume, c.dataDir));
  const applier = new StandbyApplier(copies, (b) => link.send(b));
  let announced = 0;
  let exports: NbdExport[] = copies.map((s) => readOnlyExport(s.name, s.volume, "standby"));
  let primary: Awaited<ReturnType<typeof protect>> | undefined;
  let fail!: (e: Error) => void;
  const fatal = new Promise<never>((_, reject) => fail = reject);
  fatal.catch(() => {});

  /** `equal`: the gateway's replica holds exactly what this copy holds (it waited for this standby). */
  const promote = async (equal: boolean): Promise<void> => {
    if (primary) return;
    log.warn("promotion: this standby takes over the service", { copiesEqual: equal });
    await applier.freeze();
    await c.state.promote();
    copies.forEach((_, i) => link.unregister(i));
    primary = await protect(c, link, copies.length, (e) => fail(e), equal ? "equal" : "unknown");
    exports = primary.exports;
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
    exports = copies.map((s) => readOnlyExport(s.name, s.volume, "standby"));
    // every write made here must be durable at the gateway before the copies change hands
    const deadline = Date.now() + 10_000;
    while (primary.exports.some((e) => !e.quiescent) && Date.now() < deadline) {
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
    }
    applier.thaw();
    announced = 0;
    copies.forEach((s, i) => link.register(standbyLinkVolume(s, i)));
    log.warn("demoted: standby again, volumes read-only", { volumes: copies.map((s) => s.name) });
  };

  const link: AgentLink = new AgentLink({
    gateway: parseAddress(str(c.p, "gateway")),
    agent: c.id,
    secret: c.secret,
    onConnected: () => {
      announced = 0;
      applier.reset();
    },
    onControl: (m) => {
      const msg = m as { type?: string; id?: number; equal?: boolean };
      const act = msg?.type === "promote"
        ? () => promote(msg.equal === true)
        : msg?.type === "demote"
        ? demote
        : undefined;
      if (!act) return void fenceOrder(c, m);
      const answer = msg.type === "promote" ? "promoted" : "demoted";
      act().then(
        () => link.sendControl({ type: answer, id: msg.id, ok: true }),
        (e) => {
          log.error(`${msg.type} failed`, { error: e });
          link.sendControl({ type: answer, id: msg.id, ok: false, error: (e as Error).message });
        },
      );
    },
    onFrame: async (f) => {
      if (f.type === FrameType.ChunkOp) return chunkOp(c, link, f, false);
      if (primary) return; // promoted: the stream to the standby copy is over
      switch (f.type) {
        case FrameType.Record:
          await applier.record(f.body);
          break;
        case FrameType.HashRequest: {
          const q = decodeJson<{ volume?: number; chunkSize?: number }>(f.body);
          link.send(await applier.hashes(Number(q.volume), Number(q.chunkSize)));
          break;
        }
        case FrameType.Ping:
          link.send(timeFrame(FrameType.Pong, decodeTime(f.body)));
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
      if (++announced === copies.length) link.sendControl({ type: "standby-ready" });
    },
    onRefused: (message) =>
      log.error("gateway refused the standby volume", { volume: s.name, reason: message }),
    onLinkDown: () => {},
    onAccepted: () => {},
    onDurable: () => {},
  });
  copies.forEach((s, i) => link.register(standbyLinkVolume(s, i)));
  link.start();
  const server = await serveNbd(c.p, c.dataDir, () => exports);
  log.info("agent ready", { agent: c.id, standby: true, volumes: copies.map((s) => s.name) });
  return {
    fatal,
    stop: async () => {
      await server.close();
      await primary?.close();
      await link.close();
    },
  };
}
