// The remote gateway role (a disaster-recovery site): receives site streams over
// pinned TLS, journals them, replays them onto its replica images (the paper's
// RGP) and onto the standby servers of this site (RSP), and acknowledges.
import { eq } from "drizzle-orm";
import type { FlagSpec, Parsed } from "../cli/flags.ts";
import { UsageError } from "../cli/flags.ts";
import { ensurePrivateDir, list, num, optStr, pairs, type RoleHandle, str } from "../cli/common.ts";
import { logger } from "../log.ts";
import { openDatabase, serialized } from "../db/db.ts";
import { volumes as volumesTable } from "../db/schema.ts";
import { Journal, type VolumeInfo } from "../journal/journal.ts";
import { MirrorApplier } from "../mirror/applier.ts";
import { GatewayListener, type StandbyHandler } from "../link/gateway-listener.ts";
import { type Address, parseAddress } from "../link/address.ts";
import { readSecretFile } from "../wire/secret-file.ts";
import { startStatusServer } from "../web/status-server.ts";
import { loadOrCreateToken } from "../web/token.ts";
import { loadIdentity, parseFingerprint } from "../transport/identity.ts";
import { type AckPoint, Receiver } from "../replication/receiver.ts";
import { SiteServer } from "../replication/site-link.ts";
import { CursorStore } from "../replication/cursor-store.ts";
import { type PeerReport, Sender, type Session } from "../replication/sender.ts";
import * as native from "../native/mod.ts";
import { Kind } from "../record/record.ts";
import { decodeHashes, decodeSeqFrame, decodeTime, FrameType, mixedFrame } from "../wire/frames.ts";
import { FileChunks, serveChunkOp } from "../recovery/chunk-ops.ts";
import { TestCopies } from "../failover/test-copies.ts";
import { copyImage } from "../volume/copy.ts";
import { Retention } from "../retention/retention.ts";
import { parsePoint, siteRetention } from "../retention/site.ts";
import { rollBack } from "../retention/rollback.ts";
import { PointImages } from "../retention/point-images.ts";
import type { VolumeLog } from "../retention/volume-log.ts";
import type { Point } from "../retention/points.ts";
import { siteDrill } from "../drills/site.ts";
import type { Assignment } from "../capture/assignments.ts";
import { reconcile } from "../tasks/control-plane.ts";
import { imageDevices, ringDevice, StandbyDevices } from "../tasks/site-inventory.ts";
import { PendingRequests } from "../wire/requests.ts";
import {
  receiver,
  type SiteAnswerBody,
  type StandbyOrder,
  standbyReports,
  type Unsent,
} from "../wire/control.ts";

const log = logger("remote-gateway");

export const remoteGatewayFlags: FlagSpec[] = [
  { name: "id", type: "string", description: "name of this site", default: "dr" },
  {
    name: "data-dir",
    type: "string",
    description: "state directory (database, journal, replicas, keys, API token)",
    default: "/var/lib/continuum/remote",
    placeholder: "DIR",
  },
  {
    name: "listen",
    type: "string",
    description: "where local gateways connect (TLS)",
    default: "127.0.0.1:7900",
    placeholder: "ADDR",
  },
  {
    name: "key-dir",
    type: "string",
    description: "this site's key pair (made by `continuum keygen`) [default: DATA-DIR/keys]",
    placeholder: "DIR",
  },
  {
    name: "trust",
    type: "string",
    multiple: true,
    description: "a local site allowed to stream here, pinned by its fingerprint",
    placeholder: "NAME=FINGERPRINT",
  },
  {
    name: "agent-listen",
    type: "string",
    multiple: true,
    description: "where this site's standby agents connect",
    default: ["127.0.0.1:7801"],
    placeholder: "ADDR",
  },
  {
    name: "agent-secret",
    type: "string",
    multiple: true,
    description: "a standby agent allowed to connect and the file holding its secret",
    placeholder: "NAME=FILE",
  },
  {
    name: "ack-after",
    type: "string",
    description: "acknowledge a record once applied to the replica (rgp) or also to the standby server (rsp)",
    choices: ["rgp", "rsp"],
    default: "rsp",
  },
  {
    name: "database",
    type: "string",
    description: "libsql database URL [default: file:DATA-DIR/gateway.db]",
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
    name: "commit-delay",
    type: "duration",
    description: "longest wait before an unforced group commit",
    default: "100ms",
  },
  {
    name: "replica-dir",
    type: "string",
    description: "directory of the replica images [default: DATA-DIR/replicas]",
    placeholder: "DIR",
  },
  {
    name: "sync-chunk",
    type: "size",
    description: "chunk size when a standby copy is synchronised",
    default: "1M",
  },
  {
    name: "retention",
    type: "duration",
    description: "how long every point of each replica is kept (0: no retention; e.g. 24h)",
    default: "0",
  },
  {
    name: "retention-size",
    type: "size",
    description: "space bound of each volume's retention log (the oldest points expire beyond it)",
    default: "10G",
  },
  {
    name: "retention-dir",
    type: "string",
    description: "directory of the retention logs and base images [default: DATA-DIR/retention]",
    placeholder: "DIR",
  },
  {
    name: "http-listen",
    type: "string",
    description: "HTTP API address (HOST:PORT, port 0 picks one)",
    default: "127.0.0.1:7881",
    placeholder: "ADDR",
  },
  {
    name: "test-listen",
    type: "string",
    description:
      "where failover test copies are exported over NBD while a test runs (HOST:PORT, port 0 picks one, or unix:PATH)",
    default: "127.0.0.1:0",
    placeholder: "ADDR",
  },
];

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
  const testListen = parseAddress(str(p, "test-listen"));
  const replicaDir = optStr(p, "replica-dir") ?? `${dataDir}/replicas`;

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
        // the replica applies only durable records: small commits keep it (and the acks) moving
        commitBytes: 8 << 20,
      },
    );
    cleanups.push(() => journal.close());

    // replica states (empty, consistent, inconsistent), persisted with the volume
    const states = new Map<number, string>();
    for (const row of await db.select().from(volumesTable)) states.set(row.id, row.state);
    const setState = (id: number, state: string) => {
      if (states.get(id) === state) return;
      states.set(id, state);
      serialized(db, () => db.update(volumesTable).set({ state }).where(eq(volumesTable.id, id))).catch((e) =>
        log.error("cannot record replica state", { volume: id, error: e })
      );
      log.info("replica state", { volume: id, state });
    };

    const store = new CursorStore(db);
    const applier = new MirrorApplier(journal, {
      // the local site's acknowledgements wait for the replica's sync: sync when the stream pauses
      idleSyncMs: 2,
      // well below the sender's window, so acknowledgements flow while the window is still open
      syncBytes: 16 << 20,
      onMarker: (volume, kind) => {
        if (kind === Kind.SyncEnd) setState(volume, "consistent");
      },
    });
    // standby feeders are opened before the replica applier starts, so their positions hold the journal
    const promoted = new Set(
      [...states].filter(([, s]) => s === "promoted").map(([id]) => journal.volume(id)?.agent).filter((a) =>
        a !== undefined
      ),
    );
    const feeders = new Map<string, Sender>();
    /** Each volume's acknowledgement point, as its local site announced it (its task's). */
    const ackOf = new Map<number, AckPoint | undefined>();
    /**
     * A standby's feeder holds journal space when the site's acknowledgement waits for it (a
     * volume of it acknowledged at rsp): an optional one that falls behind is resynchronised.
     */
    const feederRequired = (agent: string) => {
      const mine = journal.volumes().filter((v) => v.agent === agent);
      if (mine.length === 0) return ackAfter === "rsp";
      return mine.some((v) => (ackOf.get(v.id) ?? ackAfter) === "rsp");
    };
    const openFeeder = async (agent: string) =>
      feeders.set(
        agent,
        await Sender.open({
          name: `standby:${agent}`,
          journal,
          store,
          source: { imageFd: (id) => applier.imageFd(id), appliedPos: () => applier.appliedPos },
          // a retired volume (its standby copy unassigned) is not fed
          carries: (v) => v.agent === agent && !v.retired,
          required: feederRequired(agent),
          syncChunk: num(p, "sync-chunk"),
        }),
      );
    const closeFeeder = async (agent: string) => {
      const f = feeders.get(agent);
      if (!f) return;
      const s = sessions.get(agent);
      if (s) f.detach(s);
      journal.dropCursor(f.name);
      await store.remove(f.name);
      feeders.delete(agent);
    };
    for (const agent of secrets.keys()) if (!promoted.has(agent)) await openFeeder(agent);
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
      state: (v) => states.get(v.id) ?? "empty",
      copyReplica: async (v, into) => {
        // the base starts where the replica is once it applied everything journaled
        await applier.caughtUp();
        return await applier.hold(async () => {
          await copyImage(v.mirrorPath, into);
          return { seq: applier.applied(v.id), time: applier.appliedAt(v.id) };
        });
      },
    });

    const register = async (
      agent: string,
      name: string,
      size: number,
      /** The task's retention, from the stream's hello (absent: the site's flags). */
      own?: { windowMs: number; maxBytes?: number },
    ): Promise<VolumeInfo> => {
      const v = await journal.registerVolume(agent, name, size, `${replicaDir}/${agent}/${name}.img`);
      applier.prepare(v);
      if (!states.has(v.id)) states.set(v.id, "empty");
      if (retentionMs > 0 || own) await points.open(v, own);
      for (const f of feeders.values()) f.volumeAdded(v);
      return v;
    };

    const sessions = new Map<string, Session>();
    const reports = new Map<string, Map<number, PeerReport>>();
    const standby: StandbyHandler = {
      open: async (agent, m) => {
        const v = await register(agent, m.name, m.size);
        const state = m.state === "consistent" || m.state === "inconsistent" ? m.state : "empty";
        if (!reports.has(agent)) reports.set(agent, new Map());
        reports.get(agent)!.set(v.id, { lastSeq: m.lastSeq, state });
        return v.id;
      },
      ready: (agent, channel) => {
        const f = feeders.get(agent);
        if (!f) return;
        sessions.set(agent, f.attach(channel, reports.get(agent) ?? new Map()));
        log.info("standby server attached", { agent });
      },
      frame: (agent, f) => {
        const s = sessions.get(agent);
        if (!s) return;
        if (f.type === FrameType.Accepted) s.onAck(decodeSeqFrame(f.body).seq);
        else if (f.type === FrameType.Hashes) {
          const h = decodeHashes(f.body);
          s.onHashes(h.volume, h.hashes);
        } else if (f.type === FrameType.Pong) s.onPong(decodeTime(f.body));
      },
      closed: (agent) => {
        remembered.delete(agent);
        const error = `standby agent ${agent} is not connected to site ${site}`;
        for (const x of copyStates.get(agent)?.values() ?? []) Object.assign(x, { state: "pending", error });
        const s = sessions.get(agent);
        if (s) feeders.get(agent)?.detach(s);
        sessions.delete(agent);
        reports.delete(agent);
      },
    };
    const answers = new PendingRequests<StandbyAnswer>();
    // the devices each standby agent may serve, for the local sites' inventories
    const standbyDevices = new StandbyDevices();
    const agents = await GatewayListener.listen({
      listen: list(p, "agent-listen").map((a) => parseAddress(a)),
      journal,
      secrets,
      mirrorPath: (agent, volume) => `${replicaDir}/${agent}/${volume}.img`,
      onVolume: (v) => applier.prepare(v),
      standby,
      onControl: (agent, msg) => fromStandby(agent, msg),
    });
    const answer = (m: { id: number } & StandbyAnswer) => void answers.answer(m.id, m);
    const fromStandby = receiver(
      standbyReports,
      {
        devices: (m, agent) => standbyDevices.report(agent, m.devices),
        // a standby agent connected and says what it remembers: reconcile it
        assignments: (m, agent) => {
          remembered.set(agent, new Set(m.names));
          reconcileStandby(agent);
        },
        assigned: answer,
        unassigned: answer,
        promoted: answer,
        demoted: answer,
        "rollback-set": answer,
        "drill-ready": answer,
        "drill-stopped": answer,
        refused: (m, agent) =>
          void answers.fail(m.id, new Error(`standby agent ${agent} refused the order: ${m.error}`)),
      },
      log,
      (agent, id, error) => void answers.fail(id, new Error(`standby agent ${agent}: ${error}`)),
    );

    /**
     * Promotes the standby of an agent: this site stops taking the old primary's
     * records for it, the standby feeder's claim on the journal ends, and the
     * standby agent runs its promotion (its service must answer its check).
     */
    const promote = async (agent: string, point?: number | string): Promise<SiteAnswerBody<"promote">> => {
      if (!agents.connectedAgents().includes(agent)) {
        return { ok: false, error: `standby agent ${agent} is not connected to site ${site}` };
      }
      // a point is resolved for each volume before anything changes: a bad one changes nothing
      const rollTo: { key: string; log: VolumeLog; point: Point }[] = [];
      if (point !== undefined) {
        try {
          const which = parsePoint(point);
          for (const v of journal.volumes().filter((x) => x.agent === agent && !x.retired)) {
            const key = `${v.agent}/${v.name}`;
            const l = retention.log(key);
            rollTo.push({ key, log: l, point: l.resolve(which) });
          }
        } catch (e) {
          return { ok: false, error: `site ${site}: ${(e as Error).message}` };
        }
      }
      promoted.add(agent);
      for (const v of journal.volumes()) if (v.agent === agent) setState(v.id, "promoted");
      // the standby applies what the replica holds first: then both copies are equal and the
      // promoted volume needs no resynchronisation into this site's journal
      let equal = await standbyLevel(agent, 30_000);
      await closeFeeder(agent);
      const rolledBack: { volume: string; seq: number; bytesMoved: number; verified: unknown }[] = [];
      if (rollTo.length) {
        // the standby takes chunk writes while it is rolled back; the replica is then ahead of it,
        // so the promoted volume brings this site's copies level (by its dirty map, all set)
        equal = false;
        const link = agents.chunks(agent);
        const open = await ask(agent, { type: "rollback", on: true });
        if (!link || open.ok !== true) {
          return {
            ok: false,
            error: `standby ${agent} cannot be rolled back: ${open.error ?? "not connected"}`,
          };
        }
        try {
          for (const r of rollTo) {
            const out = await rollBack({
              log: r.log,
              point: r.point,
              dir: `${dataDir}/rollback`,
              target: link.store(r.key, "rsp"),
            });
            rolledBack.push({
              volume: r.key,
              seq: r.point.seq,
              bytesMoved: out.bytesMoved,
              verified: out.verified,
            });
            log.warn(
              "standby rolled back to a point before its promotion",
              rolledBack[rolledBack.length - 1],
            );
          }
        } catch (e) {
          await ask(agent, { type: "rollback", on: false });
          return { ok: false, error: `the rollback of standby ${agent} failed: ${(e as Error).message}` };
        }
      }
      if (equal) { for (const v of journal.volumes()) if (v.agent === agent) v.known = true; }
      const r = await ask(agent, { type: "promote", equal });
      log.warn(r.ok ? "standby promoted" : "promotion failed", { agent, error: r.error });
      return { ok: r.ok === true, error: r.error, ...(rolledBack.length ? { rolledBack } : {}) };
    };

    /** Whether the standby of an agent applied everything the replica did (waits up to `ms`). */
    const standbyLevel = async (agent: string, ms: number): Promise<boolean> => {
      const f = feeders.get(agent);
      if (!f || !sessions.has(agent)) return false;
      await applier.caughtUp();
      const vols = journal.volumes().filter((v) => v.agent === agent);
      const deadline = performance.now() + ms;
      while (performance.now() < deadline) {
        const level = f.theCursor.released >= journal.positions.durable &&
          vols.every((v) => f.volume(v.id)?.state === "consistent");
        if (level) return true;
        await new Promise((r) => setTimeout(r, 20));
      }
      log.warn("the standby did not catch up with the replica: its promoted volumes are resynchronised", {
        agent,
      });
      return false;
    };

    /** Sends an order to a standby agent and waits (bounded) for its answer. */
    const ask = async (agent: string, order: Unsent<StandbyOrder>, timeoutMs = 60_000) => {
      // an order that times out or is refused is an answer like any other: not done, with the reason
      return await answers.request(
        (id) => {
          agents.sendControl(agent, { ...order, id });
          return true;
        },
        timeoutMs,
        () =>
          new Error(`the agent did not finish its ${order.type} within ${Math.round(timeoutMs / 1000)} s`),
      ).catch((e): StandbyAnswer => ({ ok: false, error: (e as Error).message }));
    };

    /**
     * Failback, at this site: the promoted agent stops its service and becomes a
     * standby again once this gateway holds all it wrote; the replica then holds
     * the service's final data (the local site copies it back from here), and the
     * local site's stream is taken again.
     */
    const demote = async (agent: string): Promise<SiteAnswerBody<"demote">> => {
      if (!promoted.has(agent)) return { ok: true, note: "not promoted here" };
      if (!agents.connectedAgents().includes(agent)) {
        return { ok: false, error: `agent ${agent} is not connected to site ${site}` };
      }
      // the feeder exists before the agent re-registers as a standby, so it attaches to it
      await openFeeder(agent);
      const r = await ask(agent, { type: "demote" });
      if (!r.ok) {
        await closeFeeder(agent); // a feeder without its standby would hold the journal
        log.error("demotion failed", { agent, error: r.error });
        return { ok: false, error: r.error };
      }
      await applier.caughtUp();
      promoted.delete(agent);
      const held: Record<string, number> = {};
      for (const v of journal.volumes()) {
        if (v.agent !== agent) continue;
        setState(v.id, "consistent");
        held[v.name] = applier.applied(v.id);
      }
      log.warn("standby demoted: the service went back to the primary site", { agent, held });
      reconcileStandby(agent);
      return { ok: true, held };
    };
    cleanups.push(() => agents.close());

    const tests = await TestCopies.open({
      dir: `${dataDir}/tests`,
      listen: testListen,
      snapshot: async (key, into, point) => {
        const [agent, name] = key.split("/");
        const v = journal.volumes().find((x) => x.agent === agent && x.name === name);
        if (!v) throw new Error(`site ${site} holds no replica of ${key}`);
        if (promoted.has(agent)) {
          throw new Error(
            `the service of ${agent} runs at site ${site} (promoted): there is nothing to test`,
          );
        }
        if (point !== undefined) {
          return await points.copyAt(key, point, into);
        }
        // the replica stays at one sequence while it is copied: the copy is that consistent prefix
        return await applier.hold(async () => {
          const state = states.get(v.id) ?? "empty";
          if (state !== "consistent") {
            throw new Error(
              `the replica of ${key} at site ${site} is ${state}: a test needs a consistent copy`,
            );
          }
          await copyImage(v.mirrorPath, into);
          return { seq: applier.applied(v.id), size: v.size, time: applier.appliedAt(v.id) };
        });
      },
    });
    cleanups.push(() => tests.close());

    const sites = new SiteServer({
      hostname: listen.hostname,
      port: listen.port,
      identity,
      trusted,
      site,
      newReceiver: (send) =>
        new Receiver({
          journal,
          register,
          copyState: (v) => (states.get(v.id) ?? "empty") as "empty" | "consistent" | "inconsistent",
          setState: (v, s) => setState(v.id, s),
          replicaPos: () => applier.syncedPos,
          standbyPos: (agent, ack) =>
            (ack ?? ackAfter) === "rsp" ? feeders.get(agent)?.theCursor.released : undefined,
          onHello: (points) => {
            for (const { v, ack } of points) ackOf.set(v.id, ack);
            for (const [agent, f] of feeders) f.theCursor.required = feederRequired(agent);
          },
          promoted: (agent) => promoted.has(agent),
          retain: points.take,
          retained: () => retention.synced,
          checkpoint: points.mark,
          send,
        }),
      hashes: async (v, chunk) => {
        await applier.caughtUp();
        return await native.hashRange(applier.imageFd(v.id), 0, v.size, chunk);
      },
      onChunkOp: async (req, payload) => {
        const [agent, name] = String(req.volume).split("/");
        const v = journal.volumes().find((x) => x.agent === agent && x.name === name);
        if (!v) {
          return mixedFrame(FrameType.ChunkReply, {
            id: req.id,
            ok: false,
            error: `no volume ${req.volume} here`,
          });
        }
        if (req.point !== undefined) {
          // a recovery from a point reads the point's image, rebuilt from the retention
          if (req.kind !== "rgp") {
            return mixedFrame(FrameType.ChunkReply, {
              id: req.id,
              ok: false,
              error: "points are served from the replica (rgp)",
            });
          }
          try {
            const image = await pointImages.get(req.volume, parsePoint(req.point));
            return await serveChunkOp(new FileChunks(image.fd, image.size, false), req, payload);
          } catch (e) {
            return mixedFrame(FrameType.ChunkReply, { id: req.id, ok: false, error: (e as Error).message });
          }
        }
        if (req.kind === "rsp") {
          // the standby's copy is on its own server: relay the operation to its agent
          const link = agents.chunks(agent);
          if (!link) {
            return mixedFrame(FrameType.ChunkReply, {
              id: req.id,
              ok: false,
              error: `standby ${agent} not connected`,
            });
          }
          try {
            const r = await link.call({ ...req }, payload);
            return mixedFrame(FrameType.ChunkReply, { ...r.header, id: req.id }, r.payload);
          } catch (e) {
            return mixedFrame(FrameType.ChunkReply, { id: req.id, ok: false, error: (e as Error).message });
          }
        }
        if (req.kind !== "rgp") {
          return mixedFrame(FrameType.ChunkReply, {
            id: req.id,
            ok: false,
            error: `no ${req.kind} copy here`,
          });
        }
        return await serveChunkOp(new FileChunks(applier.imageFd(v.id), v.size, false), req, payload);
      },
      requests: {
        promote: async (m) => {
          await tests.stopAgent(m.agent, "a real failover promotes its standby");
          return await promote(m.agent, m.point);
        },
        demote: (m) => demote(m.agent),
        "drill-up": (m, from) => siteDrill(drillDeps, from, m),
        "drill-down": (m, from) => siteDrill(drillDeps, from, m),
        "test-start": async (m, from) => ({ ok: true, test: await tests.start(from, m) }),
        "test-renew": (m, from) => {
          const test = tests.renew(from, m.test);
          return Promise.resolve(test ? { ok: true, test } : { ok: false, error: `no test ${m.test} here` });
        },
        "test-stop": async (m, from) => ({
          ok: true,
          found: await tests.stop(from, { id: m.test, task: m.task }, `site ${from} ended it`),
        }),
        retention: () => Promise.resolve(points.retentionStatus()),
        point: (m) => Promise.resolve(points.point(m.volume, m.point)),
        points: (m) => Promise.resolve(points.points(m.volume, m.limit)),
        copies: (m) => Promise.resolve(copies(m.volume)),
        standbys: (m, from) => standbysWanted(from, m.agents),
        inventory: () =>
          Promise.resolve(standbyDevices.inventory({
            site,
            connected: agents.connectedAgents(),
            journal: ringDevice(journal.ring),
            replicaDir,
            replicas: imageDevices(journal.volumes()),
          })),
      },
    });
    const drillDeps = {
      find: (s: string, id: string) => tests.find(s, id),
      connected: (agent: string) => agents.connectedAgents().includes(agent),
      ask,
    };
    /** Stops (true) or resumes (false) feeding a volume of an agent to its standby. */
    const feedStandby = async (agent: string, name: string, retired: boolean): Promise<void> => {
      const v = journal.volumes().find((x) => x.agent === agent && x.name === name);
      if (!v || (v.retired ?? false) === retired) return;
      await journal.retire(v.id, retired);
      const f = feeders.get(agent);
      if (retired) f?.volumeRetired(v.id);
      else {
        // the records durable now are in the replica once it caught up: a synchronisation reads there
        const imageSeq = v.durableSeq;
        await applier.caughtUp();
        f?.volumeResumed(v, imageSeq);
      }
    };

    // The local sites' control planes say which standby copies (RSP) each standby agent must
    // hold: their whole desired state, sent on every (re)connection and change. This site
    // reconciles each standby agent with it whenever it changes and whenever the agent connects
    // (it then reports the copies it remembers): missing copies are assigned (and fed), copies no
    // local site asks for are unassigned (and no longer fed), the agent's data left in place.
    const plans = new Map<string, Map<string, Assignment[]>>();
    const remembered = new Map<string, Set<string>>();
    const copyStates = new Map<string, Map<string, { state: CopyAssignState; error?: string }>>();
    const reconciling = new Map<string, Promise<void>>();
    const desiredOf = (agent: string): Assignment[] => {
      const out = new Map<string, Assignment>();
      for (const p of plans.values()) for (const a of p.get(agent) ?? []) out.set(a.name, a);
      return [...out.values()];
    };
    /** Reconciles one standby agent (one run at a time per agent, each after the previous). */
    const reconcileStandby = (agent: string): Promise<void> => {
      const run = (reconciling.get(agent) ?? Promise.resolve()).then(() => reconcileOnce(agent)).catch((e) =>
        log.error("cannot reconcile a standby agent's copies", { agent, error: e })
      );
      reconciling.set(agent, run);
      return run;
    };
    const reconcileOnce = async (agent: string): Promise<void> => {
      const desired = desiredOf(agent);
      const states = new Map<string, { state: CopyAssignState; error?: string }>();
      const mem = remembered.get(agent);
      // a promoted standby serves the service: its copies are left as they are until its demotion
      if (!mem || !agents.connectedAgents().includes(agent) || promoted.has(agent)) {
        const error = promoted.has(agent)
          ? `standby agent ${agent} is promoted at site ${site}: it serves the service`
          : `standby agent ${agent} is not connected to site ${site}`;
        for (const a of desired) states.set(a.name, { state: "pending", error });
        copyStates.set(agent, states);
        return;
      }
      // a copy is withdrawn only once every local site said what it wants (after a restart here)
      const everyone = [...new Set(trusted.values())].every((s) => plans.has(s));
      for (const name of everyone ? reconcile(desired, [...mem]).unassign : []) {
        await feedStandby(agent, name, true);
        const r = await ask(agent, { type: "unassign", name });
        if (r.ok === true) remembered.get(agent)?.delete(name);
        else {
          // a copy the standby keeps (its --volume) is fed as before
          await feedStandby(agent, name, false);
          log.warn("the standby keeps a copy no task asks for", { agent, volume: name, error: r.error });
        }
      }
      if (desired.length) {
        for (const a of desired) await feedStandby(agent, a.name, false);
        const r = await ask(agent, { type: "assign", volumes: desired });
        for (const a of desired) {
          const x = (r.results ?? []).find((y) => y.name === a.name);
          if (x?.ok === true) {
            remembered.get(agent)?.add(a.name);
            states.set(a.name, { state: "assigned" });
          } else {
            // what the standby does not hold must not be fed to it
            await feedStandby(agent, a.name, true);
            const error = x?.error ?? r.error ?? "no answer";
            states.set(a.name, {
              state: x ? "failed" : "pending",
              error: x ? `standby agent ${agent} cannot hold ${a.name}: ${error}` : error,
            });
          }
        }
      }
      copyStates.set(agent, states);
    };

    /** A local site's desired standby copies: reconciled now, answered with each copy's state. */
    const standbysWanted = async (
      from: string,
      wanted: Record<string, Assignment[]>,
    ): Promise<SiteAnswerBody<"standbys">> => {
      const plan = new Map(Object.entries(wanted));
      // connected standbys too: what they remember may be no task's any more
      const touched = new Set([...(plans.get(from)?.keys() ?? []), ...plan.keys(), ...remembered.keys()]);
      const before = new Map([...touched].map((a) => [a, JSON.stringify(desiredOf(a))]));
      const first = !plans.has(from);
      plans.set(from, plan);
      // the same state again (the local site refreshing its status) costs no order
      const todo = [...touched].filter((a) =>
        first || before.get(a) !== JSON.stringify(desiredOf(a)) || !copyStates.has(a) ||
        [...copyStates.get(a)!.values()].some((x) => x.state !== "assigned")
      );
      await Promise.all(todo.map(reconcileStandby));
      const out: Record<string, { name: string; state: CopyAssignState; error?: string }[]> = {};
      for (const [agent, list] of plan) {
        out[agent] = list.map((a) => ({
          name: a.name,
          ...(copyStates.get(agent)?.get(a.name) ?? { state: "pending" }),
        }));
      }
      return { ok: true, agents: out };
    };

    /** What this site's copies of a volume hold: its replica (RGP) and its standby's (RSP). */
    const copies = (key: string): SiteAnswerBody<"copies"> => {
      const [agent, name] = key.split("/");
      const v = journal.volumes().find((x) => x.agent === agent && x.name === name);
      if (!v) return { ok: false, error: `no volume ${key} here` };
      const state = states.get(v.id) ?? "empty";
      const rgp = {
        // a promoted copy takes the service's own writes: it is the newest consistent copy
        state: state === "empty" || state === "promoted" ? "consistent" : state,
        lastSeq: applier.applied(v.id),
        lastTime: applier.appliedAt(v.id),
      };
      const f = feeders.get(agent);
      const fv = f?.volume(v.id);
      const standbyUp = agents.connectedAgents().includes(agent);
      const rsp = promoted.has(agent)
        ? {
          state: standbyUp ? "consistent" : "unreachable",
          lastSeq: v.lastSeq,
          lastTime: applier.appliedAt(v.id),
        }
        : fv && standbyUp
        ? { state: fv.state, lastSeq: fv.ackedSeq, lastTime: fv.ackedTime }
        : null;
      return { ok: true, rgp, rsp };
    };
    await sites.start();
    cleanups.push(() => sites.close());

    const token = loadOrCreateToken(`${dataDir}/api-token`);
    const started = performance.now();
    const server = startStatusServer({
      listen: http as Address & { transport: "tcp" },
      token,
      status: () => ({
        role: "remote-gateway",
        site,
        uptimeMs: Math.round(performance.now() - started),
        ackAfter,
        fingerprint: identity.fingerprint,
        sites: sites.connectedSites(),
        streams: sites.receiverStatus(),
        standbyAgents: agents.connectedAgents(),
        journal: { ...journal.positions, used: journal.positions.head - journal.positions.tail },
        replicas: journal.volumes().map((v) => ({
          id: v.id,
          agent: v.agent,
          name: v.name,
          size: v.size,
          image: v.mirrorPath,
          state: states.get(v.id) ?? "empty",
          ack: ackOf.get(v.id) ?? ackAfter,
          lastSeq: v.lastSeq,
          appliedSeq: applier.applied(v.id),
        })),
        standby: [...feeders.values()].map((f) => f.status()),
        promoted: [...promoted],
        tests: tests.list(),
        retention: {
          windowMs: retention.policy.windowMs,
          maxBytes: retention.policy.maxBytes,
          volumes: retention.status(),
        },
      }),
    });
    cleanups.push(() => server.close());
    log.info("remote gateway ready", {
      site,
      listen: `${listen.hostname}:${sites.port}`,
      fingerprint: identity.fingerprint,
      agents: agents.describe(),
      http: `http://${http.hostname}:${server.port}`,
    });
    return { stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** Where a desired standby copy stands. */
type CopyAssignState = "pending" | "assigned" | "failed";

/** A standby agent's answer to an order (assign answers with a result per volume). */
interface StandbyAnswer {
  ok?: boolean;
  error?: string;
  results?: { name?: string; ok?: boolean; error?: string }[];
}
