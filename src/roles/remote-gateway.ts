// The remote gateway role (a disaster-recovery site): receives site streams over
// the pinned, sealed site link, journals them, replays them onto its replica images (the paper's
// RGP) and onto the standby servers of this site (RSP), and acknowledges. What it
// runs, in order: the journal and the replica states, the standby feeders (before
// the replica applier starts, so that their positions hold the journal), the
// retention, the standby link and the reconciliation of its copies, promotion,
// failover tests, the site listener answering the local sites, the HTTP status.
import type { Parsed } from "../cli/flags.ts";
import { UsageError } from "../cli/flags.ts";
import { ensurePrivateDir, list, num, optStr, pairs, type RoleHandle, str } from "../cli/common.ts";
import { writesRingThrough } from "../cli/state-flags.ts";
import { logger } from "../log.ts";
import { openDatabase } from "../db/db.ts";
import { Journal } from "../journal/journal.ts";
import { MirrorApplier } from "../mirror/applier.ts";
import { type Address, parseAddress } from "../link/address.ts";
import { readSecretFile } from "../wire/secret-file.ts";
import { startStatusServer } from "../web/status-server.ts";
import { loadOrCreateToken } from "../web/token.ts";
import { loadIdentity, parseFingerprint } from "../transport/identity.ts";
import { CursorStore } from "../replication/cursor-store.ts";
import { Kind } from "../record/record.ts";
import { TestCopies } from "../failover/test-copies.ts";
import { Retention } from "../retention/retention.ts";
import { siteRetention } from "../retention/site.ts";
import { PointImages } from "../retention/point-images.ts";
import { ReplicaStates } from "../site/replica-states.ts";
import { StandbyFeeders } from "../site/standby-feeders.ts";
import { StandbyLink } from "../site/standby-link.ts";
import { StandbyCopies } from "../site/standby-copies.ts";
import { Promotion } from "../site/promotion.ts";
import { answerSiteRequests } from "../site/site-requests.ts";
import { siteChunkOps } from "../site/chunk-ops.ts";
import { replicaBase, testSnapshot } from "../site/replica-copies.ts";
import { siteStatus } from "../site/status.ts";
import { listenForSites } from "../site/site-listener.ts";

const log = logger("remote-gateway");

export async function runRemoteGateway(p: Parsed): Promise<RoleHandle> {
  const dataDir = str(p, "data-dir");
  ensurePrivateDir(dataDir);
  const site = str(p, "id");
  const identity = await loadIdentity(optStr(p, "key-dir") ?? `${dataDir}/keys`);
  const trusted = new Map<string, string>();
  for (const [name, fp] of pairs("trust", p["trust"])) trusted.set(parseFingerprint(fp), name);
  if (trusted.size === 0) log.warn("no --trust given: no local site can stream here");
  const secrets = new Map<string, Uint8Array>();
  for (const [agent, file] of pairs("agent-secret", p["agent-secret"])) {
    secrets.set(agent, readSecretFile(file));
  }
  const listen = parseAddress(str(p, "listen"));
  if (listen.transport !== "tcp") throw new UsageError("--listen must be HOST:PORT");
  const http = parseAddress(str(p, "http-listen"));
  if (http.transport !== "tcp") throw new UsageError("--http-listen must be HOST:PORT");
  const ackAfter = str(p, "ack-after") as "rgp" | "rsp";
  const replicaDir = optStr(p, "replica-dir") ?? `${dataDir}/replicas`;
  const mirrorPath = (agent: string, name: string) => `${replicaDir}/${agent}/${name}.img`;

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
        commitDelayMs: num(p, "commit-delay"),
        commitIdleMs: num(p, "commit-idle"),
        // the replica applies only durable records: small commits keep it (and the acks) moving
        commitBytes: 8 << 20,
        writeThrough: writesRingThrough(p),
      },
    );
    cleanups.push(() => journal.close());
    const replicas = await ReplicaStates.load(db, journal);
    const store = new CursorStore(db);
    const applier = new MirrorApplier(journal, {
      // the local site's acknowledgements wait for the replica's sync: sync when the stream pauses
      idleSyncMs: 2,
      // well below the sender's window, so acknowledgements flow while the window is still open
      syncBytes: 16 << 20,
      onMarker: (volume, kind) => {
        if (kind === Kind.SyncEnd) replicas.set(volume, "consistent");
      },
    });
    const feeders = await StandbyFeeders.open({
      journal,
      store,
      applier,
      ackAfter,
      syncChunk: num(p, "sync-chunk"),
      promoted: replicas.promoted,
    }, secrets.keys());
    cleanups.push(() => feeders.close());
    applier.start();
    cleanups.push(() => applier.stop());

    const retentionMs = num(p, "retention");
    // the site's flags hold for every volume; a task may ask for retention of its own volume
    const retention = new Retention({
      dir: optStr(p, "retention-dir") ?? `${dataDir}/retention`,
      policy: { windowMs: retentionMs, maxBytes: num(p, "retention-size") },
    });
    cleanups.push(() => retention.close());
    const pointImages = await PointImages.open(`${dataDir}/point-images`, retention);
    cleanups.push(() => pointImages.close());
    const points = siteRetention({
      retention,
      site,
      state: (v) => replicas.get(v.id),
      copyReplica: (v, into) => replicaBase(applier, v, into),
    });
    /** Registers (or finds) a volume a local site or a standby agent announced. */
    const register = async (
      agent: string,
      name: string,
      size: number,
      own?: { windowMs: number; maxBytes?: number },
    ) => {
      const v = await journal.registerVolume(agent, name, size, mirrorPath(agent, name));
      applier.prepare(v);
      replicas.known(v.id);
      if (retentionMs > 0 || own) await points.open(v, own);
      feeders.volumeAdded(v);
      return v;
    };

    const link = await StandbyLink.listen({
      listen: list(p, "agent-listen").map((a) => parseAddress(a)),
      journal,
      secrets,
      mirrorPath,
      onVolume: (v) => applier.prepare(v),
      stream: feeders.handler(register),
    });
    cleanups.push(() => link.close());
    const ctx = { site, journal, applier, replicas, feeders };
    const copies = new StandbyCopies({ ...ctx, link, localSites: [...new Set(trusted.values())] });
    const promotion = new Promotion({ ...ctx, rollbackDir: `${dataDir}/rollback`, link, retention, copies });
    const tests = await TestCopies.open({
      dir: `${dataDir}/tests`,
      listen: parseAddress(str(p, "test-listen")),
      snapshot: testSnapshot({ ...ctx, points }),
    });
    cleanups.push(() => tests.close());

    const sites = await listenForSites({
      ...ctx,
      hostname: listen.hostname,
      port: listen.port,
      identity,
      trusted,
      retention,
      points,
      register,
      chunkOp: siteChunkOps({ ...ctx, pointImages, link }),
      requests: answerSiteRequests({ ...ctx, replicaDir, link, copies, promotion, tests, points }),
    });
    cleanups.push(() => sites.close());

    const server = startStatusServer({
      listen: http as Address & { transport: "tcp" },
      token: loadOrCreateToken(`${dataDir}/api-token`),
      status: siteStatus({
        ...ctx,
        fingerprint: identity.fingerprint,
        ackAfter,
        link,
        sites,
        tests,
        retention,
      }),
    });
    cleanups.push(() => server.close());
    log.info("remote gateway ready", {
      site,
      listen: `${listen.hostname}:${sites.port}`,
      fingerprint: identity.fingerprint,
      agents: link.describe(),
      http: `http://${http.hostname}:${server.port}`,
    });
    return { stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
