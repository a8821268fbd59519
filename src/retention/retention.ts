// A remote site's retention: one VolumeLog per volume it receives, a syncer that makes the
// records taken durable (the site acknowledges a record only once it is, so a restart loses no
// point it acknowledged), and expiry by the site's window and space bound.
import { Changes } from "../io/changes.ts";
import { logger } from "../log.ts";
import type { RetentionPolicy } from "./expiry.ts";
import { type Point, PointError } from "./points.ts";
import { type RecordHeaderLite, type Seed, VolumeLog } from "./volume-log.ts";

const log = logger("retention");

export interface RetentionOptions {
  dir: string;
  policy: RetentionPolicy;
  /** Told when space made points expire that the window would keep (an alarm). */
  onForced?: (volume: string, upTo: number) => void;
  expireEveryMs?: number;
}

export interface RetentionStatus {
  volume: string;
  /** The volume's window and space bound (its task's, else the site's flags). */
  windowMs: number;
  maxBytes: number;
  bytes: number;
  points: number;
  oldest?: { seq: number; time: number };
  newest: { seq: number; time: number };
  consistent: boolean;
  forcedExpiries: number;
  /** Why the volume's retention stopped taking records. */
  error?: string;
}

export class Retention {
  private logs = new Map<string, VolumeLog>();
  /** Volumes whose task sets their retention (the site's flags hold for the rest). */
  private own = new Map<string, Partial<RetentionPolicy>>();
  private opening = new Map<string, Promise<VolumeLog>>();
  private written = 0;
  private syncedMark = 0;
  private readonly syncs = new Changes();
  private running = true;
  private wake: (() => void) | undefined;
  private readonly loop: Promise<void>;
  private lastExpiry = 0;
  /** Volumes whose log missed records (their error): no new point is taken for them. */
  private gaps = new Map<string, string>();

  constructor(private readonly o: RetentionOptions) {
    this.loop = this.run();
  }

  get policy(): RetentionPolicy {
    return this.o.policy;
  }

  /** A volume's policy: its task's where it sets one, else the site's. */
  policyOf(key: string): RetentionPolicy {
    const o = this.own.get(key);
    return {
      windowMs: o?.windowMs ?? this.o.policy.windowMs,
      maxBytes: o?.maxBytes ?? this.o.policy.maxBytes,
    };
  }

  /**
   * Opens (or creates, from `seed`) the retention of a volume (AGENT/NAME); `own`: the window and
   * space its task asks for (each absent part: the site's). A task that no longer asks keeps its
   * last policy until the site restarts: a hello sent before the local gateway knows its tasks
   * must not make a site give up its points.
   */
  open(
    key: string,
    size: number,
    seed: (into: string) => Promise<Seed>,
    own?: Partial<RetentionPolicy>,
  ): Promise<VolumeLog> {
    if (own) this.own.set(key, own);
    const have = this.logs.get(key);
    if (have) return Promise.resolve(have);
    let p = this.opening.get(key);
    if (!p) {
      // segments well below the space bound, so expiry can free space a segment at a time
      const segBytes = Math.max(1 << 20, Math.min(64 << 20, Math.floor(this.policyOf(key).maxBytes / 8)));
      p = VolumeLog.open(`${this.o.dir}/${key}`, size, seed, segBytes).then((l) => {
        this.logs.set(key, l);
        return l;
      }).finally(() => this.opening.delete(key));
      this.opening.set(key, p);
    }
    return p;
  }

  /**
   * Takes a verified record of a volume; returns the mark the site's acknowledgement waits for
   * (`synced` reaching it), or undefined when the volume has no retention open.
   */
  take(key: string, body: Uint8Array, h: RecordHeaderLite): number | undefined {
    const l = this.logs.get(key);
    if (!l) return undefined;
    try {
      // a duplicate waits for the next sync too: the copy taken first may not be durable yet
      l.take(body, h);
    } catch (e) {
      // replication goes on without this volume's points; the status says why
      if (!this.gaps.has(key)) log.error("retention stopped for a volume", { volume: key, error: e });
      this.gaps.set(key, (e as Error).message);
      return undefined;
    }
    this.wake?.();
    return ++this.written;
  }

  /** Every mark up to this one is durable. */
  get synced(): number {
    return this.syncedMark;
  }

  /** Resolves when `synced` next moves, or when `signal` aborts. */
  syncedMoved(signal: AbortSignal): Promise<void> {
    return this.syncs.next(undefined, signal);
  }

  has(key: string): boolean {
    return this.logs.has(key);
  }

  log(key: string): VolumeLog {
    const l = this.logs.get(key);
    if (!l) {
      throw new PointError(
        `no recovery points are kept here for ${key} (the site's --retention or the task's retention)`,
        "unknown",
      );
    }
    return l;
  }

  points(key: string, limit?: number): Point[] {
    return this.log(key).points(limit);
  }

  status(): RetentionStatus[] {
    return [...this.logs].map(([volume, l]) => {
      const pts = l.index;
      return {
        volume,
        ...this.policyOf(volume),
        bytes: l.bytes,
        points: pts.count(),
        oldest: pts.base.consistent && !pts.base.rebase
          ? { seq: pts.base.seq, time: pts.base.time }
          : undefined,
        newest: { seq: pts.newestSeq, time: pts.newestTime },
        consistent: pts.base.consistent,
        forcedExpiries: l.forced,
        ...(this.gaps.has(volume) ? { error: this.gaps.get(volume) } : {}),
      };
    });
  }

  private async run(): Promise<void> {
    const every = this.o.expireEveryMs ?? 1000;
    while (this.running) {
      if (performance.now() - this.lastExpiry >= every) {
        this.lastExpiry = performance.now();
        await this.expire();
      }
      if (this.written > this.syncedMark) {
        const mark = this.written;
        try {
          await Promise.all([...this.logs.values()].map((l) => l.flush()));
          this.syncedMark = mark;
          this.syncs.notify();
        } catch (e) {
          // the site's acknowledgements wait: nothing is lost, the stream stalls until it works
          log.error("cannot write the retention log", { error: e });
          // a retry backoff: a failing disk is not hammered
          await new Promise((r) => setTimeout(r, 1000));
        }
        continue;
      }
      // nothing to make durable: sleep until the next expiry is due, or a record is taken (take wakes it)
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(0, every - (performance.now() - this.lastExpiry)));
        this.wake = () => {
          clearTimeout(t);
          r();
        };
      });
      this.wake = undefined;
    }
  }

  /** Expires what the policy no longer keeps, every volume. */
  async expire(now = Date.now()): Promise<void> {
    for (const [key, l] of this.logs) {
      try {
        const plan = await l.expire(this.policyOf(key), now);
        if (plan.forced) {
          log.warn("retention full: the oldest points expired before the window", { volume: key });
          this.o.onForced?.(key, plan.upTo);
        }
      } catch (e) {
        log.error("cannot expire retention", { volume: key, error: e });
      }
    }
  }

  async close(): Promise<void> {
    this.running = false;
    this.wake?.();
    await this.loop;
    for (const l of this.logs.values()) await l.close();
  }
}
