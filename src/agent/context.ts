// What every part of an agent shares: its settings and state (AgentContext), its data plane
// (the link to its gateway), the NBD server, the capture of a volume with its dirty map, the
// recovery's chunk operations and the operator's hooks. The primary (src/agent/primary.ts) and
// the standby (src/agent/standby.ts) are built from these.
import type { Parsed } from "../cli/flags.ts";
import { UsageError } from "../cli/flags.ts";
import { num, optStr, str } from "../cli/common.ts";
import type { Volume } from "../volume/volume.ts";
import {
  type GatewayLossPolicy,
  NativeAgent,
  type NativeAgentOptions,
  type ProtectedVolume,
} from "../capture/native-agent.ts";
import { parseAddress } from "../link/address.ts";
import { NbdServer } from "../nbd/server.ts";
import { decodeMixed, type Frame, FrameType, mixedFrame } from "../wire/frames.ts";
import { type ChunkRequest, FileChunks, serveChunkOp, type Tracked } from "../recovery/chunk-ops.ts";
import type { AgentState } from "../capture/agent-state.ts";
import { DirtyMap } from "../capture/dirty-map.ts";
import type { ServiceMonitor } from "../health/service-check.ts";

export interface AgentContext {
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

/** The data plane of this agent: its link to the gateway, from the flags. */
export function startDataPlane(
  c: AgentContext,
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
  if (c.state.fenced !== undefined) c.monitor?.endGrace();
  return agent;
}

/** Starts the NBD server on the configured socket and/or TCP address. */
export async function serveNbd(p: Parsed, dataDir: string): Promise<NbdServer> {
  const socket = optStr(p, "nbd-socket") ?? `${dataDir}/nbd.sock`;
  const tcp = str(p, "nbd-listen");
  const tcpAddr = tcp === "off" ? undefined : parseAddress(tcp);
  if (tcpAddr && tcpAddr.transport !== "tcp") throw new UsageError("--nbd-listen must be HOST:PORT or off");
  return await NbdServer.listen({
    unixPath: socket === "off" ? undefined : socket,
    tcp: tcpAddr?.transport === "tcp" ? { hostname: tcpAddr.hostname, port: tcpAddr.port } : undefined,
  });
}

export function exportCaptured(server: NbdServer, agent: NativeAgent, pv: ProtectedVolume): void {
  server.exportVolume(pv.name, agent, pv.linkId, `Continuum protected volume ${pv.name}`);
}

/**
 * Serves a recovery's chunk operations on this agent's volumes. Writes are only
 * taken while the agent is fenced: a recovery rebuilds a volume no client writes
 * (or, `rollingBack`, while its gateway rolls a standby back to a recovery point
 * before promoting it: its feed has stopped and its copies are read-only).
 */
export async function chunkOp(
  c: AgentContext,
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

/** Runs an operator's hook command (sh -c), with `env` added; throws when it exits non-zero. */
export async function runHook(
  c: AgentContext,
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
export type DirtyStart = "keep" | "equal" | "unknown";

export function capture(
  c: AgentContext,
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

export function dirtyPath(c: AgentContext, name: string): string {
  return `${c.dataDir}/${name}.dirty`;
}

/** A captured volume's dirty map as a tracked divergence (from its gateway's copy, or since a promotion). */
export function trackedOf(c: AgentContext, pv: ProtectedVolume): () => Promise<Tracked> {
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
export function trackedSincePromotion(c: AgentContext, name: string, size: number): () => Promise<Tracked> {
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
export async function protect(
  c: AgentContext,
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
