// The remote gateway's use of its retention: which volumes it opens and how their base image is
// seeded, the named checkpoints the stream brings, the control requests the local site sends
// about points, and the copy of a volume at a point for a failover test.
import { NAME_RE } from "../names.ts";
import type { VolumeInfo } from "../journal/journal.ts";
import { logger } from "../log.ts";
import { PointError } from "./points.ts";
import type { Retention } from "./retention.ts";
import type { SiteAnswerBody } from "../wire/control.ts";

export interface SiteRetentionDeps {
  retention: Retention;
  site: string;
  /** The replica's state (empty, consistent, inconsistent, promoted). */
  state: (v: VolumeInfo) => string;
  /**
   * Copies the replica into `into` while nothing is applied to it, once it applied everything
   * journaled; resolves with the sequence and capture time it holds.
   */
  copyReplica: (v: VolumeInfo, into: string) => Promise<{ seq: number; time: number }>;
}

/** A point as requests name it: a sequence number or a checkpoint name. */
export function parsePoint(raw: unknown): number | string {
  if (typeof raw === "number" && Number.isSafeInteger(raw) && raw >= 0) return raw;
  if (typeof raw === "string" && /^\d{1,15}$/.test(raw)) return Number(raw);
  if (typeof raw === "string" && NAME_RE.test(raw)) return raw;
  throw new PointError(`point ${JSON.stringify(raw)}: not a sequence number or a checkpoint name`, "unknown");
}

const log = logger("retention");

/** An answer, or the error it failed with (named with this site). */
function answered<A extends { ok: boolean }>(site: string, f: () => A): A | { ok: false; error: string } {
  try {
    return f();
  } catch (e) {
    return { ok: false, error: `site ${site}: ${(e as Error).message}` };
  }
}

export function siteRetention(d: SiteRetentionDeps) {
  const key = (v: VolumeInfo) => `${v.agent}/${v.name}`;
  return {
    /** Opens a registered volume's retention; a new one starts from the replica as it is. */
    open: (v: VolumeInfo, own?: { windowMs: number; maxBytes?: number }) =>
      d.retention.open(key(v), v.size, async (into) => {
        const state = d.state(v);
        if (state === "empty" && v.lastSeq === 0) {
          const f = await Deno.open(into, { write: true, create: true, mode: 0o600 });
          await f.truncate(v.size);
          f.close();
          return { seq: 0, time: 0, consistent: true };
        }
        const { seq, time } = await d.copyReplica(v, into);
        // a replica a resynchronisation filled before any captured write reached it is at no
        // sequence number yet: the base takes the one before the next captured write
        return { seq, time, consistent: state === "consistent", ...(seq === 0 ? { rebase: true } : {}) };
      }, own),

    /** Takes a record the receiver verified; the mark its acknowledgement waits for. */
    take: (v: VolumeInfo, body: Uint8Array, h: { kind: number; flags: number; seq: number; time: number }) =>
      d.retention.take(key(v), body, h),

    /**
     * A checkpoint from the stream names a sequence of a volume; without a retention for the
     * volume there is nothing to name. A refused name is logged: the stream goes on.
     */
    async mark(v: VolumeInfo, name: string, seq: number): Promise<void> {
      const l = d.retention.has(key(v)) ? d.retention.log(key(v)) : undefined;
      try {
        await l?.checkpoint(name, seq);
      } catch (e) {
        log.warn("checkpoint not kept", { volume: key(v), name, seq, error: e });
      }
    },

    /** Writes the copy of `volume` (AGENT/NAME) at `point` into `into`. */
    async copyAt(volume: string, point: number | string, into: string) {
      const l = d.retention.log(volume);
      const p = l.resolve(point);
      await l.materialize(p, into);
      return { seq: p.seq, size: l.size, time: p.time };
    },

    /** Answers the local site's `retention` request: the policy and each volume's retention. */
    retentionStatus: (): SiteAnswerBody<"retention"> => {
      const { windowMs, maxBytes } = d.retention.policy;
      return { ok: true, windowMs, maxBytes, volumes: d.retention.status() };
    },

    /** Answers a `point` request: the sequence and time of a volume's point. */
    point: (volume: string, point: number | string): SiteAnswerBody<"point"> =>
      answered(d.site, () => {
        const p = d.retention.log(volume).resolve(parsePoint(point));
        return { ok: true, seq: p.seq, time: p.time };
      }),

    /** Answers a `points` request: a volume's points (at most `limit`, 1000 when absent). */
    points: (volume: string, limit = 1000): SiteAnswerBody<"points"> =>
      answered(d.site, () => ({
        ok: true,
        points: d.retention.log(volume).points(limit),
        retention: d.retention.status().find((s) => s.volume === volume),
        windowMs: d.retention.policyOf(volume).windowMs,
      })),
  };
}
