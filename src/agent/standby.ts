// A standby agent at a remote site, and the orders its gateway gives it on the standby link
// (src/wire/control.ts): assign and unassign copies, promote, demote, roll back to a point, drills.
import { type RoleHandle, str } from "../cli/common.ts";
import { logger } from "../log.ts";
import { Volume } from "../volume/volume.ts";
import type { LinkVolume } from "../capture/native-agent.ts";
import type { NbdServer } from "../nbd/server.ts";
import { StandbyApplier, StandbyVolume } from "../replication/standby.ts";
import { decodeJson, decodeTime, FrameType, timeFrame } from "../wire/frames.ts";
import { type Assignment, AssignmentFile } from "../capture/assignments.ts";
import { DeviceReporter, outsidePrefixes } from "../capture/devices.ts";
import * as io from "../native/mod.ts";
import { StandbyDrills } from "../drills/standby.ts";
import { hashRequestSchema, parseFrame } from "../wire/site-frames.ts";
import {
  type AssignOrder,
  receiver,
  standbyOrders,
  type StandbyReport,
  type UnassignOrder,
} from "../wire/control.ts";
import {
  type AgentContext,
  chunkOp,
  exportCaptured,
  protect,
  runHook,
  serveNbd,
  startDataPlane,
  trackedOf,
  trackedSincePromotion,
} from "./context.ts";

const log = logger("agent");

/**
 * A standby server: its volumes are copies kept by its site's gateway. They are
 * exported read-only and the gateway's stream is applied to them in order, until
 * the gateway orders a promotion: then they are protected volumes like a
 * primary's (captured, journaled by this site's gateway) and the service starts.
 */
export async function runStandby(c: AgentContext): Promise<RoleHandle> {
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
        s.lastSeq = 0;
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
    const quiet = await Promise.all(primary.exports.map((e) => e.quiescence(10_000)));
    const stuck = primary.exports.filter((_, i) => !quiet[i]).map((e) => e.name);
    if (stuck.length) throw new Error(`writes to ${stuck.join(", ")} not confirmed by the gateway`);
    await primary.close();
    primary = undefined;
    await c.state.demote();
    for (const s of copies) {
      s.lastSeq = 0;
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
      // the gateway reconciles the copies it is told of with what its local sites ask for
      agent.sendControl(
        { type: "assignments", names: file.all().map((a) => a.name) } satisfies StandbyReport,
      );
      devices.connected();
      for (const w of reconnected.splice(0)) w();
    },
    onControl: (m) => orders(str(c.p, "gateway"), m),
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
      // records never come here: the data plane applies them (native/standby.c)
      switch (f.type) {
        case FrameType.HashRequest: {
          const q = parseFrame(hashRequestSchema, "hash request", decodeJson(f.body));
          agent.send(await applier.hashes(q.volume, q.chunkSize));
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
  const applier = new StandbyApplier(copies, agent);
  const standbyLinkVolume = (s: StandbyVolume, i: number): LinkVolume => ({
    linkId: i,
    name: s.name,
    size: s.volume.size,
    openFields: () => {
      const at = applier.position(s);
      return { standby: true, lastSeq: at.durableSeq, state: at.state };
    },
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
  const assignCopies = async (m: AssignOrder): Promise<void> => {
    const results: { name: string; ok: boolean; error?: string }[] = [];
    let added = false;
    for (const a of m.volumes) {
      const name = a.name;
      try {
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
    agent.sendControl({ type: "assigned", id: m.id, results } satisfies StandbyReport);
  };
  const unassignCopy = async (m: UnassignOrder): Promise<void> => {
    const name = m.name;
    const answer = (ok: boolean, error?: string) =>
      agent.sendControl(
        { type: "unassigned", id: m.id, name, ok, ...(error ? { error } : {}) } satisfies StandbyReport,
      );
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
  /** Runs a promotion or a demotion and answers it: done, or not with the reason. */
  const answered = (order: "promote" | "demote", id: number, act: () => Promise<void>) => {
    const type = order === "promote" ? "promoted" : "demoted";
    act().then(
      () => agent.sendControl({ type, id, ok: true } satisfies StandbyReport),
      (e) => {
        log.error(`${order} failed`, { error: e });
        agent.sendControl({ type, id, ok: false, error: (e as Error).message } satisfies StandbyReport);
      },
    );
  };
  const orders = receiver(
    standbyOrders,
    {
      assign: (m) => serial(() => assignCopies(m)),
      unassign: (m) => serial(() => unassignCopy(m)),
      "drill-up": (m) => drills.order(m),
      "drill-down": (m) => drills.order(m),
      // the gateway stopped feeding this standby and rolls its copies back to a point (or is done)
      rollback: (m) => {
        if (m.on && primary) {
          return void agent.sendControl(
            { type: "rollback-set", id: m.id, ok: false, error: "promoted already" } satisfies StandbyReport,
          );
        }
        rollingBack = m.on;
        log.warn(m.on ? "rollback: the gateway rewrites the standby copies" : "rollback ended");
        agent.sendControl({ type: "rollback-set", id: m.id, ok: true } satisfies StandbyReport);
      },
      promote: (m) => answered("promote", m.id, () => promote(m.equal)),
      demote: (m) => answered("demote", m.id, demote),
    },
    log,
    (_, id, error) => agent.sendControl({ type: "refused", id, error }),
  );

  const devices = new DeviceReporter(c.devicePrefixes, (m) => agent.sendControl(m));
  // a promoted standby that restarted serves its copies read-write again, journaled by its
  // gateway as before the restart (its role is persisted), and can be demoted (failback)
  if (c.state.promoted) {
    await applier.freeze();
    primary = await protect(c, agent, nextLinkId, (e) => fail(e));
    nextLinkId += primary.exports.length;
  } else copies.forEach(announce);
  agent.start();
  const server = await serveNbd(c.p, c.dataDir);
  nbd.server = server;
  if (primary) {
    for (const pv of primary.exports) exportCaptured(server, agent, pv);
    await primary.ready();
  } else copies.forEach(exportCopy);
  log.info("agent ready", {
    agent: c.id,
    standby: true,
    promoted: primary !== undefined,
    volumes: copies.map((s) => s.name),
  });
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
