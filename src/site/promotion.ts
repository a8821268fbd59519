// Failover and failback at the remote site. Promotion: this site stops taking the old primary's
// records for an agent, the standby feeder's claim on the journal ends, the standby is first
// rolled back to a recovery point if one is asked for, and the standby agent runs its promotion
// (its service must answer its check). Demotion (failback): the promoted agent stops its
// service and becomes a standby again once this gateway holds all it wrote; the replica then
// holds the service's final data (the local site copies it back from here), and the local
// site's stream is taken again.
import { logger } from "../log.ts";
import type { Point } from "../retention/points.ts";
import type { Retention } from "../retention/retention.ts";
import { rollBack } from "../retention/rollback.ts";
import { parsePoint } from "../retention/site.ts";
import type { VolumeLog } from "../retention/volume-log.ts";
import type { RolledBack, SiteAnswerBody } from "../wire/control.ts";
import type { StandbyCopies } from "./standby-copies.ts";
import type { SiteContext } from "./context.ts";
import type { StandbyLink } from "./standby-link.ts";

const log = logger("remote-gateway");

export interface PromotionOptions extends SiteContext {
  /** Where a rollback keeps its work files. */
  rollbackDir: string;
  link: StandbyLink;
  retention: Retention;
  copies: StandbyCopies;
}

export class Promotion {
  constructor(private readonly o: PromotionOptions) {}

  /** Promotes the standby of an agent, at a recovery point of its retention if one is given. */
  async promote(agent: string, point?: number | string): Promise<SiteAnswerBody<"promote">> {
    const { site, journal, link, replicas } = this.o;
    if (!link.connected(agent)) {
      return { ok: false, error: `standby agent ${agent} is not connected to site ${site}` };
    }
    // a point is resolved for each volume before anything changes: a bad one changes nothing
    const rollTo: { key: string; log: VolumeLog; point: Point }[] = [];
    if (point !== undefined) {
      try {
        const which = parsePoint(point);
        for (const v of journal.volumes().filter((x) => x.agent === agent && !x.retired)) {
          const key = `${v.agent}/${v.name}`;
          const l = this.o.retention.log(key);
          rollTo.push({ key, log: l, point: l.resolve(which) });
        }
      } catch (e) {
        return { ok: false, error: `site ${site}: ${(e as Error).message}` };
      }
    }
    replicas.promoted.add(agent);
    for (const v of journal.volumes()) if (v.agent === agent) replicas.set(v.id, "promoted");
    // the standby applies what the replica holds first: then both copies are equal and the
    // promoted volume needs no resynchronisation into this site's journal
    let equal = await this.o.feeders.level(agent, 30_000);
    await this.o.feeders.end(agent);
    let rolledBack: RolledBack[] = [];
    if (rollTo.length) {
      // the standby takes chunk writes while it is rolled back; the replica is then ahead of it,
      // so the promoted volume brings this site's copies level (by its dirty map, all set)
      equal = false;
      const r = await this.rollBack(agent, rollTo);
      if (!Array.isArray(r)) return r;
      rolledBack = r;
    }
    if (equal) { for (const v of journal.volumes()) if (v.agent === agent) v.known = true; }
    const r = await link.ask(agent, { type: "promote", equal });
    log.warn(r.ok ? "standby promoted" : "promotion failed", { agent, error: r.error });
    return { ok: r.ok === true, error: r.error, ...(rolledBack.length ? { rolledBack } : {}) };
  }

  /** Demotes a promoted agent back to a standby (failback). */
  async demote(agent: string): Promise<SiteAnswerBody<"demote">> {
    const { site, journal, link, replicas, applier, feeders } = this.o;
    if (!replicas.promoted.has(agent)) return { ok: true, note: "not promoted here" };
    if (!link.connected(agent)) {
      return { ok: false, error: `agent ${agent} is not connected to site ${site}` };
    }
    // the feeder exists before the agent re-registers as a standby, so it attaches to it
    await feeders.start(agent);
    const r = await link.ask(agent, { type: "demote" });
    if (!r.ok) {
      await feeders.end(agent); // a feeder without its standby would hold the journal
      log.error("demotion failed", { agent, error: r.error });
      return { ok: false, error: r.error };
    }
    await applier.caughtUp();
    replicas.promoted.delete(agent);
    const held: Record<string, number> = {};
    for (const v of journal.volumes()) {
      if (v.agent !== agent) continue;
      replicas.set(v.id, "consistent");
      held[v.name] = applier.applied(v.id);
    }
    log.warn("standby demoted: the service went back to the primary site", { agent, held });
    void this.o.copies.reconcile(agent);
    return { ok: true, held };
  }

  /** Rolls the standby's copies back to their points through its chunk link; the error answer if not. */
  private async rollBack(
    agent: string,
    rollTo: { key: string; log: VolumeLog; point: Point }[],
  ) {
    const { link } = this.o;
    const chunks = link.chunks(agent);
    const open = await link.ask(agent, { type: "rollback", on: true });
    if (!chunks || open.ok !== true) {
      return { ok: false, error: `standby ${agent} cannot be rolled back: ${open.error ?? "not connected"}` };
    }
    const done: RolledBack[] = [];
    try {
      for (const r of rollTo) {
        const out = await rollBack({
          log: r.log,
          point: r.point,
          dir: this.o.rollbackDir,
          target: chunks.store(r.key, "rsp"),
        });
        done.push({ volume: r.key, seq: r.point.seq, bytesMoved: out.bytesMoved, verified: out.verified });
        log.warn("standby rolled back to a point before its promotion", done[done.length - 1]);
      }
    } catch (e) {
      await link.ask(agent, { type: "rollback", on: false });
      return { ok: false, error: `the rollback of standby ${agent} failed: ${(e as Error).message}` };
    }
    return done;
  }
}
