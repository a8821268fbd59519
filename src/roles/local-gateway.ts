// The local gateway role: accepts agents, journals their records (write cache),
// keeps its own mirror of every volume, and serves status over HTTP.
import type { FlagSpec, Parsed } from "../cli/flags.ts";
import { parseSize, UsageError } from "../cli/flags.ts";
import { ensurePrivateDir, list, num, optStr, pairs, type RoleHandle, str } from "../cli/common.ts";
import { logger } from "../log.ts";
import { openDatabase } from "../db/db.ts";
import { Journal } from "../journal/journal.ts";
import { MirrorApplier } from "../mirror/applier.ts";
import { GatewayListener } from "../link/gateway-listener.ts";
import { type Address, parseAddress } from "../link/address.ts";
import { readSecretFile } from "../wire/auth.ts";
import { startStatusServer } from "../web/status-server.ts";
import { loadOrCreateToken } from "../web/token.ts";
import { loadIdentity, parseFingerprint } from "../transport/identity.ts";
import { CursorStore } from "../replication/cursor-store.ts";
import { Sender } from "../replication/sender.ts";
import { SiteClient } from "../replication/site-link.ts";

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
    name: "database",
    type: "string",
    description: "libsql database URL (file:PATH or libsql://…) [default: file:DATA-DIR/gateway.db]",
    placeholder: "URL",
  },
  {
    name: "database-token",
    type: "string",
    description: "auth token for a libsql server URL",
    placeholder: "TOKEN",
  },
  {
    name: "buffer",
    type: "string",
    description: "journal buffer file or device [default: DATA-DIR/journal.ring]",
    placeholder: "PATH",
  },
  {
    name: "buffer-size",
    type: "size",
    description: "journal buffer size when it is a file created here",
    default: "1G",
  },
  {
    name: "retain",
    type: "size",
    description: "journal bytes kept after every reader is done with them",
    default: "0",
  },
  {
    name: "commit-delay",
    type: "duration",
    description: "longest wait before an unforced group commit",
    default: "20ms",
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
    default: "64M",
  },
  {
    name: "sync-chunk",
    type: "size",
    description: "chunk size of the differential synchronisation of a replica",
    default: "1M",
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
];

export async function runLocalGateway(p: Parsed): Promise<RoleHandle> {
  const dataDir = str(p, "data-dir");
  ensurePrivateDir(dataDir);
  const secrets = new Map<string, Uint8Array>();
  for (const [agent, file] of pairs("agent-secret", p["agent-secret"])) {
    secrets.set(agent, readSecretFile(file));
  }
  if (secrets.size === 0) log.warn("no --agent-secret given: no agent can connect");
  const listen = list(p, "agent-listen").map((a) => parseAddress(a));
  const http = parseAddress(str(p, "http-listen"));
  if (http.transport !== "tcp") throw new UsageError("--http-listen must be HOST:PORT");
  const mirrorDir = optStr(p, "mirror-dir") ?? `${dataDir}/mirrors`;

  const { db, close: closeDb } = await openDatabase(
    optStr(p, "database") ?? `file:${dataDir}/gateway.db`,
    optStr(p, "database-token"),
  );
  const cleanups: (() => Promise<void> | void)[] = [closeDb];
  const stop = async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch (e) {
        log.warn("error while stopping", { error: e });
      }
    }
  };
  try {
    const journal = await Journal.open(
      db,
      optStr(p, "buffer") ?? `${dataDir}/journal.ring`,
      num(p, "buffer-size"),
      {
        retainBytes: num(p, "retain"),
        commitDelayMs: num(p, "commit-delay"),
      },
    );
    cleanups.push(() => journal.close());
    const mirror = new MirrorApplier(journal);
    // senders are opened before the mirror applier moves: their stored positions hold the journal
    const remotes = await openRemotes(p, dataDir, journal, mirror);
    await mirror.start();
    cleanups.push(() => mirror.stop());
    for (const r of remotes) {
      r.client.start();
      cleanups.push(() => r.client.close());
    }
    const listener = await GatewayListener.listen({
      listen,
      journal,
      secrets: () => secrets,
      mirrorPath: (agent, volume) => `${mirrorDir}/${agent}/${volume}.img`,
      onVolume: (v) => {
        mirror.prepare(v);
        for (const r of remotes) {
          r.sender.volumeAdded(v);
          r.client.reannounce();
        }
      },
    });
    cleanups.push(() => listener.close());
    const token = loadOrCreateToken(`${dataDir}/api-token`);
    const started = Date.now();
    const server = startStatusServer({
      listen: http as Address & { transport: "tcp" },
      token,
      status: () => ({
        role: "local-gateway",
        site: str(p, "id"),
        uptimeMs: Date.now() - started,
        agents: listener.connectedAgents(),
        refused: Object.fromEntries(listener.refused),
        journal: { ...journal.positions, used: journal.positions.head - journal.positions.tail },
        volumes: journal.volumes().map((v) => ({
          id: v.id,
          agent: v.agent,
          name: v.name,
          size: v.size,
          mirror: v.mirrorPath,
          lastSeq: v.lastSeq,
          durableSeq: v.durableSeq,
          mirrorSeq: mirror.applied(v.id),
        })),
        sites: remotes.map((r) => ({
          site: r.site,
          lastError: r.client.lastError || null,
          ...r.sender.status(),
        })),
      }),
    });
    cleanups.push(() => server.close());
    log.info("local gateway ready", {
      agents: listener.describe(),
      http: `http://${http.hostname}:${server.port}`,
      journal: journal.ring.path,
    });
    return { stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

interface Remote {
  site: string;
  sender: Sender;
  client: SiteClient;
}

/** One sender (journal reader) and one TLS client per --remote site. */
async function openRemotes(
  p: Parsed,
  dataDir: string,
  journal: Journal,
  mirror: MirrorApplier,
): Promise<Remote[]> {
  const addrs = pairs("remote", p["remote"]);
  if (addrs.size === 0) return [];
  const fps = pairs("remote-fingerprint", p["remote-fingerprint"]);
  const identity = await loadIdentity(optStr(p, "key-dir") ?? `${dataDir}/keys`);
  const store = new CursorStore(journal.database);
  const bandwidth = pairs("remote-bandwidth", p["remote-bandwidth"]);
  for (const site of bandwidth.keys()) {
    if (!addrs.has(site)) {
      throw new UsageError(`--remote-bandwidth ${site}: no --remote ${site}=HOST:PORT given`);
    }
  }
  ensurePrivateDir(`${dataDir}/sites`);
  const out: Remote[] = [];
  for (const [site, addr] of addrs) {
    const fp = fps.get(site);
    if (!fp) {
      throw new UsageError(`--remote ${site}: no --remote-fingerprint ${site}=… given (pin the site's key)`);
    }
    const a = parseAddress(addr);
    if (a.transport !== "tcp") throw new UsageError(`--remote ${site} must be HOST:PORT`);
    const sender = await Sender.open({
      name: `site:${site}`,
      journal,
      store,
      source: { imageFd: (id) => mirror.imageFd(id), appliedPos: () => mirror.appliedPos },
      carries: () => true,
      windowBytes: num(p, "window"),
      syncChunk: num(p, "sync-chunk"),
      bandwidth: bandwidth.has(site) ? parseSize(bandwidth.get(site)!) : 0,
      congestion: str(p, "congestion") as "block" | "pull-ahead",
      stateDir: `${dataDir}/sites`,
    });
    const client = new SiteClient({
      site,
      hostname: a.hostname,
      port: a.port,
      fingerprint: parseFingerprint(fp),
      identity,
      localSite: str(p, "id"),
      sender,
      volumes: () => journal.volumes(),
    });
    out.push({ site, sender, client });
  }
  for (const site of pairs("remote-fingerprint", p["remote-fingerprint"]).keys()) {
    if (!addrs.has(site)) {
      throw new UsageError(`--remote-fingerprint ${site}: no --remote ${site}=HOST:PORT given`);
    }
  }
  return out;
}
