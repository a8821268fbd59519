// The recovery points a site's retention log holds for one volume (pure: no I/O). Every record
// kept in the log is indexed by where it ends in the log, so a copy "at sequence S" is the base
// image plus the log up to the end of S's record. Records between a SyncBegin and its SyncEnd
// leave the copy inconsistent: no point inside that window can be used.
import { betweenSeqs, Kind } from "../record/record.ts";

/** The base image: the copy every point is rebuilt from (the oldest point held). */
export interface Base {
  /** The sequence the base image holds (0: an empty volume). */
  seq: number;
  /** Agent time of that record, 0 when unknown. */
  time: number;
  /** Log offset where the records after the base begin. */
  logStart: number;
  /** False when the base was folded in the middle of a resynchronisation. */
  consistent: boolean;
  /**
   * The base ends with a rebasing resynchronisation (its sequence, -1, is not known yet): it is
   * the sequence before the next captured write.
   */
  rebase?: boolean;
}

/** A point an operator can use. */
export interface Point {
  seq: number;
  /** Capture time at the agent (ms since the epoch). */
  time: number;
  /** Log offset the copy is replayed to. */
  end: number;
  /**
   * "barrier": a FLUSH; "sync": the end of a resynchronisation; "base": the oldest point;
   * "record": another captured record (a checkpoint may name one).
   */
  kind: "barrier" | "sync" | "base" | "record";
  /** Named checkpoints at this sequence. */
  names?: string[];
}

export class PointError extends Error {
  constructor(message: string, readonly code: "unknown" | "expired" | "inconsistent" | "not-yet") {
    super(message);
    this.name = "PointError";
  }
}

const F_CONSISTENT = 1, F_BARRIER = 2, F_SYNC_END = 4, F_BETWEEN = 8;

/** The index of one volume's log: one entry per record, in log order. */
export class PointIndex {
  private seqs: number[] = [];
  private ends: number[] = [];
  private times: number[] = [];
  private flags: number[] = [];
  /** Entries before this one were folded into the base. */
  private first = 0;
  private inSync: boolean;
  /** After a SyncBegin, until the next captured write (the stream's rebase). */
  private rebase: boolean;
  /** Entries that ended a rebasing resynchronisation: their sequence comes with the next write. */
  private unknown: number[] = [];

  constructor(public base: Base) {
    this.inSync = !base.consistent;
    this.rebase = base.rebase === true;
  }

  /** Indexes the record that ends at log offset `end`. */
  add(h: { kind: Kind; flags: number; seq: number; time: number }, end: number): void {
    if (h.kind === Kind.SyncBegin) this.inSync = this.rebase = true;
    if (h.kind === Kind.SyncEnd) this.inSync = false;
    if (!betweenSeqs(h) && this.rebase) {
      // a rebasing resynchronisation carries sequence 0: the copy it made is the volume just
      // before this write (no captured write came between its begin and its end)
      this.rebase = false;
      for (const i of this.unknown) this.seqs[i] = h.seq - 1;
      this.unknown = [];
      if (this.base.rebase) this.base = { ...this.base, seq: h.seq - 1, rebase: false };
    }
    if (h.kind === Kind.SyncEnd && this.rebase) this.unknown.push(this.seqs.length);
    let f = this.inSync ? 0 : F_CONSISTENT;
    if (h.kind === Kind.Flush && !betweenSeqs(h)) f |= F_BARRIER;
    if (h.kind === Kind.SyncEnd) f |= F_SYNC_END;
    else if (betweenSeqs(h)) f |= F_BETWEEN;
    this.seqs.push(h.seq);
    this.ends.push(end);
    this.times.push(h.time);
    this.flags.push(f);
  }

  /** Entries still held (not folded). */
  get size(): number {
    return this.seqs.length - this.first;
  }

  /** Log offset after the newest record. */
  get end(): number {
    return this.seqs.length > this.first ? this.ends[this.ends.length - 1] : this.base.logStart;
  }

  /** The newest sequence held. */
  get newestSeq(): number {
    for (let i = this.seqs.length - 1; i >= this.first; i--) {
      if (this.unknown.includes(i)) continue;
      if (!(this.flags[i] & F_BETWEEN) || this.flags[i] & F_SYNC_END) return this.seqs[i];
    }
    return this.base.seq;
  }

  /** Time of the newest record held (0: none). */
  get newestTime(): number {
    return this.seqs.length > this.first ? this.times[this.times.length - 1] : this.base.time;
  }

  /**
   * Folds every entry that ends at or before `upTo` into the base (the caller applied those
   * records to the base image). Returns the new base.
   */
  fold(upTo: number): Base {
    let i = this.first;
    while (i < this.seqs.length && this.ends[i] <= upTo) i++;
    if (i === this.first) return this.base;
    const last = i - 1;
    // a sync chunk carries the sequence of the record before it, which is then the base's; the
    // end of a rebasing resynchronisation learns its sequence from the next write
    const pending = this.unknown.includes(last);
    this.base = {
      seq: pending ? -1 : this.seqs[last],
      time: this.times[last],
      logStart: this.ends[last],
      consistent: (this.flags[last] & F_CONSISTENT) !== 0,
      ...(pending ? { rebase: true } : {}),
    };
    this.unknown = this.unknown.filter((u) => u > last);
    this.first = i;
    // drop folded entries now and then, not on every fold
    if (this.first > 65536 && this.first > this.seqs.length / 2) {
      for (const a of [this.seqs, this.ends, this.times, this.flags]) a.splice(0, this.first);
      this.unknown = this.unknown.map((u) => u - this.first);
      this.first = 0;
    }
    return this.base;
  }

  /**
   * The log offset to replay to for a copy at sequence `seq`: the end of that captured record,
   * or of the resynchronisation that ended at it. Throws PointError when it cannot be used.
   */
  resolve(seq: number): Point {
    if (!Number.isSafeInteger(seq) || seq < 0) {
      throw new PointError(`point ${seq}: not a sequence number`, "unknown");
    }
    if (seq === this.base.seq && this.base.consistent && !this.base.rebase) {
      return { seq, time: this.base.time, end: this.base.logStart, kind: "base" };
    }
    // a base whose sequence is not known yet (a rebase) has no later entry with one either
    if (this.base.rebase) {
      throw new PointError(
        `point ${seq} is not held: this copy was resynchronised and its next write is not here yet`,
        "not-yet",
      );
    }
    let inconsistent = false;
    for (let i = this.seqs.length - 1; i >= this.first; i--) {
      const f = this.flags[i];
      if (this.seqs[i] !== seq || ((f & F_BETWEEN) && !(f & F_SYNC_END)) || this.unknown.includes(i)) {
        continue;
      }
      if (f & F_CONSISTENT) {
        return {
          seq,
          time: this.times[i],
          end: this.ends[i],
          kind: f & F_SYNC_END ? "sync" : f & F_BARRIER ? "barrier" : "record",
        };
      }
      inconsistent = true;
    }
    if (inconsistent) {
      throw new PointError(
        `point ${seq} lies inside a resynchronisation: the copy was inconsistent there`,
        "inconsistent",
      );
    }
    // the base may end inside a resynchronisation: the oldest point is then the first usable entry
    const oldest = this.oldestUsable();
    if (oldest !== undefined && seq < oldest) {
      throw new PointError(`point ${seq} has expired: the oldest point held is ${oldest}`, "expired");
    }
    if (seq > this.newestSeq) {
      throw new PointError(`point ${seq} is not held yet: the newest is ${this.newestSeq}`, "not-yet");
    }
    throw new PointError(`no record with sequence ${seq} is held`, "unknown");
  }

  /** The sequence of the oldest point a copy can be made at (undefined: none). */
  private oldestUsable(): number | undefined {
    if (this.base.consistent && !this.base.rebase) return this.base.seq;
    for (let i = this.first; i < this.seqs.length; i++) {
      const f = this.flags[i];
      if (!(f & F_CONSISTENT) || ((f & F_BETWEEN) && !(f & F_SYNC_END)) || this.unknown.includes(i)) continue;
      return this.seqs[i];
    }
    return undefined;
  }

  /** The barriers and resynchronisation ends held, oldest first (at most `limit`, the newest). */
  points(limit = Infinity): Point[] {
    const out: Point[] = [];
    for (let i = this.seqs.length - 1; i >= this.first && out.length < limit; i--) {
      const f = this.flags[i];
      if (!(f & F_CONSISTENT) || !(f & (F_BARRIER | F_SYNC_END)) || this.unknown.includes(i)) continue;
      out.push({
        seq: this.seqs[i],
        time: this.times[i],
        end: this.ends[i],
        kind: f & F_SYNC_END ? "sync" : "barrier",
      });
    }
    if (out.length < limit && this.base.consistent && !this.base.rebase) {
      out.push({ seq: this.base.seq, time: this.base.time, end: this.base.logStart, kind: "base" });
    }
    return out.reverse();
  }

  /** How many barriers and resynchronisation ends are held (the base included). */
  count(): number {
    let n = this.base.consistent && !this.base.rebase ? 1 : 0;
    for (let i = this.first; i < this.seqs.length; i++) {
      const f = this.flags[i];
      if (f & F_CONSISTENT && f & (F_BARRIER | F_SYNC_END) && !this.unknown.includes(i)) n++;
    }
    return n;
  }

  /** Time of the oldest point held (the base's, else the first record's). */
  get oldestTime(): number {
    return this.base.time || (this.seqs.length > this.first ? this.times[this.first] : 0);
  }
}
