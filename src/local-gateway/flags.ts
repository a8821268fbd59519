// The local gateway's flags, and the configuration read from them: every flag is parsed and
// checked here, before the role opens anything, so a usage error leaves nothing half-started.
import { gatewayStateFlags, writesRingThrough } from "../cli/state-flags.ts";
import type { FlagSpec, Parsed } from "../cli/flags.ts";
import { parseSize, UsageError } from "../cli/flags.ts";
import { list, num, optStr, pairs, str } from "../cli/common.ts";
import { logger } from "../log.ts";
import { type Address, parseAddress } from "../link/address.ts";
import { readSecretFile } from "../wire/secret-file.ts";
import { parseFingerprint } from "../transport/identity.ts";
import type { ServiceConfig } from "../failover/controller.ts";
import { parseService } from "../failover/service-spec.ts";
import type { DetectorSettings } from "../failover/liveness.ts";
import type { TlsFiles } from "../web/status-server.ts";

const log = logger("local-gateway");

export const localGatewayFlags: FlagSpec[] = [
  { name: "id", type: "string", description: "name of this site", default: "local" },
  {
    name: "data-dir",
    type: "string",
    description: "state directory (database, journal, mirrors, API token)",
    default: "/var/lib/continuum/gateway",
    placeholder: "DIR",
  },
  {
    name: "agent-listen",
    type: "string",
    multiple: true,
    description: "where agents connect (HOST:PORT or unix:PATH)",
    default: ["127.0.0.1:7800"],
    placeholder: "ADDR",
  },
  {
    name: "agent-secret",
    type: "string",
    multiple: true,
    description: "an agent allowed to connect and the file holding its secret",
    placeholder: "NAME=FILE",
  },

  {
    name: "retain",
    type: "size",
    description: "journal bytes kept after every reader is done with them",
    default: "0",
  },

  {
    name: "max-lag",
    type: "duration",
    description:
      "replication lag bound: the agents' writes wait while a connected, caught-up site is further behind (0: none)",
    default: "0",
  },
  {
    name: "remote",
    type: "string",
    multiple: true,
    description: "a remote site to replicate to",
    placeholder: "NAME=HOST:PORT",
  },
  {
    name: "remote-fingerprint",
    type: "string",
    multiple: true,
    description: "the pinned key fingerprint of a remote site (from its `continuum keygen`)",
    placeholder: "NAME=FINGERPRINT",
  },
  {
    name: "key-dir",
    type: "string",
    description:
      "this site's key pair for remote sites (made by `continuum keygen`) [default: DATA-DIR/keys]",
    placeholder: "DIR",
  },
  {
    name: "remote-bandwidth",
    type: "string",
    multiple: true,
    description: "most bytes per second to a remote site (e.g. 50M)",
    placeholder: "NAME=RATE",
  },
  {
    name: "congestion",
    type: "string",
    description:
      "when a slow site fills the journal: block the writers, or pull ahead (track its missed chunks, copy them later)",
    choices: ["block", "pull-ahead"],
    default: "block",
  },
  {
    name: "window",
    type: "size",
    description: "bytes in flight to one remote site before waiting for acknowledgements",
    default: "256M",
  },
  {
    name: "sync-chunk",
    type: "size",
    description: "chunk size of the differential synchronisation of a replica",
    default: "1M",
  },
  {
    name: "service",
    type: "string",
    multiple: true,
    description: "a protected service and where it fails over to",
    placeholder: "NAME=agent:A,address:IP:PORT,site:S,target:IP:PORT[,protocol:udp]",
  },
  {
    name: "auto-failover",
    type: "boolean",
    description: "fail services over by themselves on FAILURE (otherwise only `continuum ctl failover`)",
    default: true,
  },
  {
    name: "heartbeat-listen",
    type: "string",
    description: "UDP address for agents' heartbeats",
    default: "127.0.0.1:7810",
    placeholder: "ADDR",
  },
  {
    name: "detector",
    type: "string",
    description: "failure detector: Chen–Toueg–Aguilera freshness points, or φ accrual",
    choices: ["chen", "phi"],
    default: "chen",
  },
  {
    name: "heartbeat-interval",
    type: "duration",
    description: "the agents' heartbeat period η",
    default: "100ms",
  },
  {
    name: "detector-alpha",
    type: "duration",
    description: "safety margin α after the expected arrival (chen)",
    default: "200ms",
  },
  {
    name: "detector-window",
    type: "number",
    description: "heartbeats the estimate averages (n)",
    default: 100,
  },
  { name: "phi-suspect", type: "number", description: "φ at which an agent is suspected (phi)", default: 5 },
  { name: "phi-failure", type: "number", description: "φ at which an agent has failed (phi)", default: 12 },
  {
    name: "alarm-webhook",
    type: "string",
    multiple: true,
    description: "a URL alarms are POSTed to as signed JSON (with --alarm-secret-file)",
    placeholder: "URL",
  },
  {
    name: "alarm-secret-file",
    type: "string",
    description: "the secret (mode 0600) alarm webhooks are signed with (HMAC-SHA256)",
    placeholder: "FILE",
  },
  {
    name: "mirror-dir",
    type: "string",
    description: "directory of the gateway's mirror images [default: DATA-DIR/mirrors]",
    placeholder: "DIR",
  },
  {
    name: "http-listen",
    type: "string",
    description: "HTTP API address (HOST:PORT, port 0 picks one)",
    default: "127.0.0.1:7880",
    placeholder: "ADDR",
  },
  {
    name: "tls-cert",
    type: "string",
    description: "certificate chain (PEM) for HTTPS on --http-listen (with --tls-key)",
    placeholder: "FILE",
  },
  {
    name: "tls-key",
    type: "string",
    description: "private key (PEM, mode 0600) of --tls-cert",
    placeholder: "FILE",
  },
  {
    name: "device-prefix",
    type: "string",
    multiple: true,
    description: "a directory the web UI's volumes may name devices in (the allowed device list)",
    default: ["/dev/"],
    placeholder: "DIR",
  },
  {
    name: "admin-password-file",
    type: "string",
    description:
      "first start only: create the web user admin with this file's password (mode 0600); without it a one-time setup link is printed",
    placeholder: "FILE",
  },
  ...gatewayStateFlags,
];

/** One --remote site: where it is, its pinned key, its --remote-bandwidth (bytes/s, 0: none). */
export interface SiteFlags {
  site: string;
  hostname: string;
  port: number;
  fingerprint: string;
  bandwidth: number;
}

export interface RemoteFlags {
  sites: SiteFlags[];
  /** This site's key pair for the remote sites. */
  keyDir: string;
  congestion: "block" | "pull-ahead";
  windowBytes: number;
  syncChunk: number;
}

export interface GatewayConfig {
  /** This site's name (--id). */
  site: string;
  dataDir: string;
  mirrorDir: string;
  /** The secret of each agent allowed to connect. */
  secrets: Map<string, Uint8Array>;
  listen: Address[];
  http: Address & { transport: "tcp" };
  tls?: TlsFiles;
  heartbeat: { hostname: string; port: number };
  /** Directories the web UI's volumes may name devices in. */
  prefixes: string[];
  services: ServiceConfig[];
  database: { url: string; token?: string };
  journal: {
    path: string;
    size: number;
    retainBytes: number;
    commitDelayMs: number;
    commitIdleMs: number;
    maxLagMs: number;
    writeThrough: boolean;
  };
  remotes: RemoteFlags;
  detector: DetectorSettings;
  autoFailover: boolean;
  alarms: { webhooks: string[]; secretFile?: string };
  adminPasswordFile?: string;
}

/** Reads and checks the local gateway's flags; a UsageError names the first wrong one. */
export function gatewayConfig(p: Parsed): GatewayConfig {
  const dataDir = str(p, "data-dir");
  const secrets = new Map<string, Uint8Array>();
  for (const [agent, file] of pairs("agent-secret", p["agent-secret"])) {
    secrets.set(agent, readSecretFile(file));
  }
  if (secrets.size === 0) log.warn("no --agent-secret given: no agent can connect");
  const listen = list(p, "agent-listen").map((a) => parseAddress(a));
  const http = parseAddress(str(p, "http-listen"));
  if (http.transport !== "tcp") throw new UsageError("--http-listen must be HOST:PORT");
  const tlsCert = optStr(p, "tls-cert"), tlsKey = optStr(p, "tls-key");
  if ((tlsCert === undefined) !== (tlsKey === undefined)) {
    throw new UsageError("--tls-cert and --tls-key go together");
  }
  const heartbeat = parseAddress(str(p, "heartbeat-listen"));
  if (heartbeat.transport !== "tcp") throw new UsageError("--heartbeat-listen must be HOST:PORT");
  const prefixes = list(p, "device-prefix");
  for (const d of prefixes) {
    if (!d.startsWith("/") || d.split("/").includes("..")) {
      throw new UsageError(`--device-prefix ${d}: must be an absolute directory without '..'`);
    }
  }
  const remotes = remoteFlags(p, dataDir);
  const services = [...pairs("service", p["service"])].map(([name, spec]) => {
    try {
      return parseService(name, spec);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
  });
  for (const c of services) {
    if (!remotes.sites.some((r) => r.site === c.site)) {
      throw new UsageError(`--service ${c.name}: no --remote ${c.site} given`);
    }
    if (!secrets.has(c.agent)) {
      throw new UsageError(`--service ${c.name}: no --agent-secret ${c.agent} given`);
    }
  }
  return {
    site: str(p, "id"),
    dataDir,
    mirrorDir: optStr(p, "mirror-dir") ?? `${dataDir}/mirrors`,
    secrets,
    listen,
    http,
    tls: tlsCert && tlsKey ? { certFile: tlsCert, keyFile: tlsKey } : undefined,
    heartbeat,
    prefixes,
    services,
    database: {
      url: optStr(p, "database") ?? `file:${dataDir}/gateway.db`,
      token: optStr(p, "database-token"),
    },
    journal: {
      path: optStr(p, "buffer") ?? `${dataDir}/journal.ring`,
      size: num(p, "buffer-size"),
      retainBytes: num(p, "retain"),
      commitDelayMs: num(p, "commit-delay"),
      commitIdleMs: num(p, "commit-idle"),
      maxLagMs: num(p, "max-lag"),
      writeThrough: writesRingThrough(p),
    },
    remotes,
    detector: {
      mode: str(p, "detector") as "chen" | "phi",
      etaMs: num(p, "heartbeat-interval"),
      alphaMs: num(p, "detector-alpha"),
      window: num(p, "detector-window"),
      phiSuspect: num(p, "phi-suspect"),
      phiFailure: num(p, "phi-failure"),
    },
    autoFailover: p["auto-failover"] === true,
    alarms: { webhooks: list(p, "alarm-webhook"), secretFile: optStr(p, "alarm-secret-file") },
    adminPasswordFile: optStr(p, "admin-password-file"),
  };
}

/** The --remote sites with their fingerprints and bandwidths (checked only when a --remote is given). */
function remoteFlags(p: Parsed, dataDir: string): RemoteFlags {
  const addrs = pairs("remote", p["remote"]);
  const fps = pairs("remote-fingerprint", p["remote-fingerprint"]);
  const bandwidth = pairs("remote-bandwidth", p["remote-bandwidth"]);
  const sites: SiteFlags[] = [];
  if (addrs.size > 0) {
    for (const site of bandwidth.keys()) {
      if (!addrs.has(site)) {
        throw new UsageError(`--remote-bandwidth ${site}: no --remote ${site}=HOST:PORT given`);
      }
    }
    for (const [site, addr] of addrs) {
      const fp = fps.get(site);
      if (!fp) {
        throw new UsageError(
          `--remote ${site}: no --remote-fingerprint ${site}=… given (pin the site's key)`,
        );
      }
      const a = parseAddress(addr);
      if (a.transport !== "tcp") throw new UsageError(`--remote ${site} must be HOST:PORT`);
      sites.push({
        site,
        hostname: a.hostname,
        port: a.port,
        fingerprint: parseFingerprint(fp),
        bandwidth: bandwidth.has(site) ? parseSize(bandwidth.get(site)!) : 0,
      });
    }
    for (const site of fps.keys()) {
      if (!addrs.has(site)) {
        throw new UsageError(`--remote-fingerprint ${site}: no --remote ${site}=HOST:PORT given`);
      }
    }
  }
  return {
    sites,
    keyDir: optStr(p, "key-dir") ?? `${dataDir}/keys`,
    congestion: str(p, "congestion") as "block" | "pull-ahead",
    windowBytes: num(p, "window"),
    syncChunk: num(p, "sync-chunk"),
  };
}
