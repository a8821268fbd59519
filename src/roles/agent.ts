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
import { decodeJson, decodeTime, FrameType, timeFrame } from "../wire/frames.ts";

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
    name: "max-unconfirmed",
    type: "size",
    description: "records kept for resending until the gateway confirms them durable",
    default: "256M",
  },
];

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
  ensurePrivateDir(dataDir);

  if (p["standby"] === true) return await runStandby(p, id, secret, volumesArg, dataDir);
  const link = new AgentLink({ gateway: parseAddress(str(p, "gateway")), agent: id, secret });
  let fail!: (e: Error) => void;
  const fatal = new Promise<never>((_, reject) => fail = reject);
  fatal.catch(() => {}); // observed by main
  const exports: ProtectedVolume[] = [];
  const opened: Volume[] = [];
  const maps: DirtyMap[] = [];
  try {
    let linkId = 0;
    for (const [name, path] of volumesArg) {
      const volume = Volume.open(path);
      opened.push(volume);
      if (volume.size === 0) throw new Error(`volume ${name} (${path}) is empty`);
      const dirty = await DirtyMap.open(`${dataDir}/${name}.dirty`, volume.size, chunk);
      maps.push(dirty);
      const pv = new ProtectedVolume({
        name,
        volume,
        dirty,
        link,
        linkId: linkId++,
        onGatewayLoss: str(p, "on-gateway-loss") as GatewayLossPolicy,
        gatewayTimeoutMs: num(p, "gateway-timeout"),
        maxUnconfirmedBytes: num(p, "max-unconfirmed"),
        onFatal: (e) => fail(e),
      });
      pv.opened.catch(() => {}); // awaited below
      exports.push(pv);
      link.register(pv);
    }
    link.start();
    // a gateway that answers refuses misconfigured volumes (e.g. a changed size) now, not after
    // clients wrote to them; an unreachable gateway is the business of --on-gateway-loss
    await Promise.race([Promise.all(exports.map((e) => e.opened)), new Promise((r) => setTimeout(r, 5000))]);
    const server = await serveNbd(p, dataDir, () => exports);
    log.info("agent ready", {
      agent: id,
      volumes: exports.map((e) => e.name),
      nbdTcpPort: server.tcpPort ?? null,
    });
    return {
      fatal,
      stop: async () => {
        await server.close();
        await Promise.all(exports.map((e) => e.close()));
        await link.close();
        for (const m of maps) m.close();
        for (const v of opened) v.close();
      },
    };
  } catch (e) {
    await link.close();
    for (const m of maps) m.close();
    for (const v of opened) v.close();
    throw e;
  }
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
 * A standby server: its volumes are copies kept by its site's gateway. They are
 * exported read-only; the gateway's stream is applied to them in order.
 */
async function runStandby(
  p: Parsed,
  id: string,
  secret: Uint8Array,
  volumesArg: Map<string, string>,
  dataDir: string,
): Promise<RoleHandle> {
  ensurePrivateDir(dataDir);
  const opened: Volume[] = [];
  const copies: StandbyVolume[] = [];
  try {
    for (const [name, path] of volumesArg) {
      const volume = Volume.open(path);
      opened.push(volume);
      copies.push(await StandbyVolume.open(name, volume, dataDir));
    }
  } catch (e) {
    for (const v of opened) v.close();
    throw e;
  }
  const applier = new StandbyApplier(copies, (b) => link.send(b));
  let announced = 0;
  const link: AgentLink = new AgentLink({
    gateway: parseAddress(str(p, "gateway")),
    agent: id,
    secret,
    onConnected: () => {
      announced = 0;
      applier.reset();
    },
    onFrame: async (f) => {
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
  copies.forEach((c, i) => {
    const lv: LinkVolume = {
      linkId: i,
      name: c.name,
      size: c.volume.size,
      openFields: () => ({ standby: true, lastSeq: c.seq.lastSeq, state: c.state }),
      onOpened: (info) => {
        applier.opened(c.name, info.journalId);
        // every volume is known to the gateway: it may start streaming
        if (++announced === copies.length) link.sendControl({ type: "standby-ready" });
      },
      onRefused: (message) =>
        log.error("gateway refused the standby volume", { volume: c.name, reason: message }),
      onLinkDown: () => {},
      onAccepted: () => {},
      onDurable: () => {},
    };
    link.register(lv);
  });
  link.start();
  const server = await serveNbd(
    p,
    dataDir,
    () => copies.map((c) => readOnlyExport(c.name, c.volume, "standby")),
  );
  log.info("agent ready", { agent: id, standby: true, volumes: copies.map((c) => c.name) });
  return {
    stop: async () => {
      await server.close();
      await link.close();
      for (const v of opened) v.close();
    },
  };
}
