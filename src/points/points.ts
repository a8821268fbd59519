// Recovery points, the local gateway's half: named checkpoints (stored here and carried in each
// site's stream right after the record they name, so each names the same sequence number at
// every site) and the points each site holds, asked over the site link. The sites' half is
// src/retention/.
import { NAME_HINT, NAME_RE } from "../names.ts";
import { and, asc, eq } from "drizzle-orm";
import type { Db } from "../db/db.ts";
import { serialized } from "../db/db.ts";
import { checkpoints } from "../db/schema.ts";
import type { Audit } from "../audit/audit.ts";
import type { SitePoint, SiteRequester, SiteRetention } from "../wire/control.ts";

export class PointsError extends Error {
  constructor(message: string, readonly status: 400 | 404 | 409) {
    super(message);
    this.name = "PointsError";
  }
}

export interface PointsDeps {
  db: Db;
  audit: Audit;
  request: SiteRequester;
  /** The newest sequence of a volume (AGENT/NAME) in the local journal; undefined: not journaled here. */
  lastSeq: (volume: string) => number | undefined;
  /** Puts a checkpoint of a volume (AGENT/NAME) in every site's stream. */
  mark: (volume: string, c: Checkpoint) => void;
  /** Whether the link to a site is up (its stream takes a checkpoint now, else when it is back). */
  linked: (site: string) => boolean;
}

export interface Checkpoint {
  name: string;
  seq: number;
  createdAt: number;
  createdBy: string;
}

export interface SitePoints {
  site: string;
  ok: boolean;
  error?: string;
  points?: SitePoint[];
  retention?: SiteRetention;
  windowMs?: number;
}

export class RecoveryPoints {
  constructor(private readonly d: PointsDeps) {}

  async checkpoints(volume: string): Promise<Checkpoint[]> {
    const rows = await this.d.db.select().from(checkpoints).where(eq(checkpoints.volume, volume))
      .orderBy(asc(checkpoints.seq));
    return rows.map((r) => ({ name: r.name, seq: r.seq, createdAt: r.createdAt, createdBy: r.createdBy }));
  }

  /**
   * Names the volume's newest journaled sequence (everything the application wrote before the
   * request); the name goes to every site in its stream, to a site away when it catches up.
   */
  async checkpoint(
    task: string,
    volume: string,
    sites: string[],
    name: string,
    by: string,
  ): Promise<{ checkpoint: Checkpoint; sites: { site: string; linked: boolean }[] }> {
    if (!NAME_RE.test(name)) {
      throw new PointsError(`checkpoint name "${name}": ${NAME_HINT}`, 400);
    }
    if (/^\d+$/.test(name)) {
      throw new PointsError(`checkpoint name "${name}": a number names a sequence`, 400);
    }
    const seq = this.d.lastSeq(volume);
    if (seq === undefined) throw new PointsError(`nothing of ${volume} is journaled here yet`, 409);
    const [had] = await this.d.db.select().from(checkpoints)
      .where(and(eq(checkpoints.volume, volume), eq(checkpoints.name, name)));
    if (had) throw new PointsError(`checkpoint "${name}" of ${volume} exists (sequence ${had.seq})`, 409);
    const c: Checkpoint = { name, seq, createdAt: Date.now(), createdBy: by };
    await serialized(this.d.db, () => this.d.db.insert(checkpoints).values({ task, volume, ...c }));
    await this.d.audit.record({
      subject: `task:${task}`,
      kind: "checkpoint",
      cause: `checkpoint "${name}" of ${volume} at sequence ${seq} by ${by}`,
      detail: { volume, name, seq },
    });
    this.d.mark(volume, c);
    return { checkpoint: c, sites: sites.map((site) => ({ site, linked: this.d.linked(site) })) };
  }

  /** Each site's points of the volume, with the checkpoints as this gateway holds them. */
  async list(
    volume: string,
    sites: string[],
    limit = 1000,
  ): Promise<{ checkpoints: Checkpoint[]; sites: SitePoints[] }> {
    const cps = await this.checkpoints(volume);
    const out = await Promise.all(sites.map(async (site): Promise<SitePoints> => {
      try {
        const a = await this.d.request(site, { type: "points", volume, limit }, 10_000);
        if (!a.ok) return { site, ok: false, error: a.error ?? "no reason given" };
        return { site, ok: true, points: a.points, retention: a.retention, windowMs: a.windowMs };
      } catch (e) {
        return { site, ok: false, error: `site ${site}: ${(e as Error).message}` };
      }
    }));
    return { checkpoints: cps, sites: out };
  }
}

/** Every checkpoint stored (a restarted gateway puts them in the sites' streams again). */
export async function allCheckpoints(db: Db): Promise<{ volume: string; name: string; seq: number }[]> {
  return await db.select({ volume: checkpoints.volume, name: checkpoints.name, seq: checkpoints.seq })
    .from(checkpoints).orderBy(asc(checkpoints.seq));
}

/** Whether `site` holds a recovery point of `volume`; rejects with the site's reason. */
export async function checkSitePoint(
  request: PointsDeps["request"],
  site: string,
  volume: string,
  point: number | string,
): Promise<{ seq: number }> {
  const a = await request(site, { type: "point", volume, point }, 30_000);
  if (a.ok !== true) throw new Error(String(a.error ?? "no reason given"));
  return { seq: Number(a.seq) };
}
