// The contract every failure detector implements, and the two parts both detectors
// share: the TRUST/SUSPECT/FAILURE timeline driven by deadlines, and a sliding
// window of samples. Detectors are pure: no timers, no I/O, the clock is the `now`
// (ms, non-decreasing) passed to every call.
export type DetectorState = "TRUST" | "SUSPECT" | "FAILURE";

/** What the Chen–Toueg–Aguilera estimator expected when a transition happened. */
export interface ChenEvidence {
  kind: "chen";
  /** The heartbeat that was due (null before any heartbeat was seen). */
  expectedSeq: number | null;
  /** EA: estimated arrival time of `expectedSeq`. */
  expectedArrivalMs: number;
  /** τ = EA + α: the heartbeat had to arrive before this instant. */
  freshnessPointMs: number;
}

/** The accrual values behind a phi transition. */
export interface PhiEvidence {
  kind: "phi";
  phi: number;
  meanMs: number;
  stdDevMs: number;
}

export type Evidence = ChenEvidence | PhiEvidence;

export interface Transition {
  from: DetectorState;
  to: DetectorState;
  /** When it happened: the deadline that passed, or the arrival that restored trust. */
  at: number;
  lastSeq: number | null;
  lastArrivalMs: number | null;
  evidence: Evidence;
}

export interface Detector {
  /** Records heartbeat `seq`; false when it was ignored (not newer than the highest seen). */
  heartbeat(seq: number, now: number): boolean;
  /** The sender restarted (new boot): its numbering starts over, forget the old one. */
  restart(now: number): void;
  state(now: number): DetectorState;
  /** When the state changes next unless a heartbeat comes first; undefined once FAILURE. */
  nextDeadline(now: number): number | undefined;
  /** Transitions since the previous poll, oldest first. */
  poll(now: number): Transition[];
  /**
   * The process watching did not run over (from, to] (its event loop stalled): a deadline that fell
   * in there moves to `until`, once per heartbeat, so heartbeats that waited in its socket meanwhile
   * are read before the silence is judged. True when a deadline moved.
   */
  watcherPaused(from: number, to: number, until: number): boolean;
}

/** The deadlines a detector derives from its last heartbeat, with what to report at each. */
export interface Plan {
  suspectAt: number;
  failAt: number;
  suspect: Evidence;
  failure: Evidence;
}

/**
 * The state timeline. Deadlines are applied lazily when a call brings `now` past them,
 * and each transition is stamped with the deadline itself, so a caller whose timer
 * fires late still records the exact instant. Half-open: at `suspectAt` the state is
 * already SUSPECT, and a heartbeat arriving exactly then is late.
 */
export class TimedStates {
  private current: DetectorState = "TRUST";
  private pending: Transition[] = [];
  private lastSeq: number | null = null;
  private lastArrivalMs: number | null = null;
  /** The deadlines were already moved for a pause of the watcher since the last heartbeat. */
  private deferred = false;

  constructor(private plan: Plan) {}

  advance(now: number): void {
    if (this.current === "TRUST" && now >= this.plan.suspectAt) {
      this.move("SUSPECT", this.plan.suspectAt, this.plan.suspect);
    }
    if (this.current === "SUSPECT" && now >= this.plan.failAt) {
      this.move("FAILURE", this.plan.failAt, this.plan.failure);
    }
  }

  /** A heartbeat arrived at `now`: back to TRUST, and `plan` holds from here on. */
  trust(seq: number, now: number, plan: Plan, evidence: Evidence): void {
    this.advance(now);
    this.lastSeq = seq;
    this.lastArrivalMs = now;
    if (this.current !== "TRUST") this.move("TRUST", now, evidence);
    // a deadline before the arrival would stamp transitions out of order
    this.plan = { ...plan, suspectAt: Math.max(plan.suspectAt, now), failAt: Math.max(plan.failAt, now) };
    this.deferred = false;
  }

  watcherPaused(from: number, to: number, until: number): boolean {
    // once per heartbeat: a watcher that stalls again and again still judges, one grace late
    if (this.deferred) return false;
    const inPause = (at: number) => at > from && at <= to;
    let moved = false;
    if (this.current === "TRUST" && inPause(this.plan.suspectAt)) {
      this.plan = { ...this.plan, suspectAt: until, failAt: Math.max(this.plan.failAt, until) };
      moved = true;
    } else if (this.current !== "FAILURE" && inPause(this.plan.failAt)) {
      this.plan = { ...this.plan, failAt: until };
      moved = true;
    }
    this.deferred = moved;
    return moved;
  }

  state(now: number): DetectorState {
    this.advance(now);
    return this.current;
  }

  nextDeadline(now: number): number | undefined {
    this.advance(now);
    if (this.current === "TRUST") return this.plan.suspectAt;
    if (this.current === "SUSPECT") return this.plan.failAt;
    return undefined;
  }

  poll(now: number): Transition[] {
    this.advance(now);
    const out = this.pending;
    this.pending = [];
    return out;
  }

  private move(to: DetectorState, at: number, evidence: Evidence): void {
    this.pending.push({
      from: this.current,
      to,
      at,
      lastSeq: this.lastSeq,
      lastArrivalMs: this.lastArrivalMs,
      evidence,
    });
    this.current = to;
  }
}

/**
 * The last `size` samples with their sum and sum of squares. The running sums are
 * recomputed from scratch each time the ring wraps, so rounding cannot accumulate.
 */
export class SampleWindow {
  private readonly ring: number[] = [];
  private next = 0;
  private sum = 0;
  private sumSq = 0;

  constructor(private readonly size: number) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`window must be a positive integer`);
  }

  get count(): number {
    return this.ring.length;
  }

  push(x: number): void {
    if (this.ring.length < this.size) {
      this.ring.push(x);
      this.sum += x;
      this.sumSq += x * x;
    } else {
      const old = this.ring[this.next];
      this.ring[this.next] = x;
      this.sum += x - old;
      this.sumSq += x * x - old * old;
    }
    this.next = (this.next + 1) % this.size;
    if (this.next === 0) this.resum();
  }

  clear(): void {
    this.ring.length = 0;
    this.next = 0;
    this.sum = 0;
    this.sumSq = 0;
  }

  mean(): number {
    return this.sum / this.ring.length;
  }

  /** Population standard deviation (0 with fewer than two samples). */
  stdDev(): number {
    const n = this.ring.length;
    if (n < 2) return 0;
    const m = this.sum / n;
    return Math.sqrt(Math.max(0, this.sumSq / n - m * m));
  }

  private resum(): void {
    this.sum = 0;
    this.sumSq = 0;
    for (const x of this.ring) {
      this.sum += x;
      this.sumSq += x * x;
    }
  }
}
