// Chen–Toueg–Aguilera failure detector (IEEE ToC 2002, NFD-E): the sender numbers
// heartbeats and sends number i at about i·η on its own clock. From the last n arrivals
// A_i of numbers s_i, the next one, l+1, is expected at
//   EA_{l+1} = (1/n)·Σ(A_i − η·s_i) + (l+1)·η
// Using the numbers rather than gaps between arrivals keeps lost heartbeats from
// biasing the estimate. Freshness point τ = EA + α: nothing newer than l by τ means
// SUSPECT, nothing by the following freshness point τ + η means FAILURE.
import {
  type ChenEvidence,
  type Detector,
  type DetectorState,
  type Plan,
  SampleWindow,
  TimedStates,
  type Transition,
} from "./types.ts";

export interface ChenOptions {
  /** Heartbeat period η. */
  etaMs: number;
  /** Safety margin α added to the expected arrival. */
  alphaMs: number;
  /** Number n of recent arrivals the estimate averages. */
  window: number;
  /** When monitoring began: the first heartbeat is expected by startMs + η (+ α). */
  startMs: number;
}

export class ChenDetector implements Detector {
  private eta: number;
  private alpha: number;
  private readonly samples: SampleWindow;
  // samples are stored relative to this, so epoch-sized clocks keep full precision
  private origin = 0;
  private highest: number | null = null;
  private readonly timeline: TimedStates;

  constructor(opts: ChenOptions) {
    if (!(opts.etaMs > 0)) throw new RangeError("etaMs must be positive");
    if (!(opts.alphaMs >= 0)) throw new RangeError("alphaMs must not be negative");
    this.eta = opts.etaMs;
    this.alpha = opts.alphaMs;
    this.samples = new SampleWindow(opts.window);
    this.timeline = new TimedStates(this.plan(null, opts.startMs + this.eta));
  }

  heartbeat(seq: number, now: number): boolean {
    if (!Number.isSafeInteger(seq) || seq < 0) return false;
    if (this.highest !== null && seq <= this.highest) return false; // duplicate, reordered or replayed
    this.highest = seq;
    if (this.samples.count === 0) this.origin = now - this.eta * seq;
    this.samples.push(now - this.eta * seq - this.origin);
    let ea = this.origin + this.samples.mean() + (seq + 1) * this.eta;
    if (ea + this.alpha <= now) {
      // Even this heartbeat is past its successor's freshness point: the sender's
      // schedule moved (paused, or restarted keeping its numbering), so the old
      // arrivals describe a schedule that no longer holds. Start over from this one.
      this.samples.clear();
      this.origin = now - this.eta * seq;
      this.samples.push(0);
      ea = now + this.eta;
    }
    const plan = this.plan(seq + 1, ea);
    this.timeline.trust(seq, now, plan, plan.suspect);
    return true;
  }

  /**
   * A new margin `alphaMs` from the next heartbeat on; with a new period `etaMs` (the sender's
   * schedule starts over at its next heartbeat, which keeps the numbering) the estimate starts over
   * from that heartbeat too. The deadlines already set stand until it arrives.
   */
  reconfigure(etaMs: number, alphaMs: number): void {
    if (!(etaMs > 0)) throw new RangeError("etaMs must be positive");
    if (!(alphaMs >= 0)) throw new RangeError("alphaMs must not be negative");
    if (etaMs !== this.eta) this.samples.clear();
    this.eta = etaMs;
    this.alpha = alphaMs;
  }

  restart(_now: number): void {
    this.highest = null;
    this.samples.clear();
  }

  state(now: number): DetectorState {
    return this.timeline.state(now);
  }

  nextDeadline(now: number): number | undefined {
    return this.timeline.nextDeadline(now);
  }

  poll(now: number): Transition[] {
    return this.timeline.poll(now);
  }

  watcherPaused(from: number, to: number, until: number): boolean {
    return this.timeline.watcherPaused(from, to, until);
  }

  private plan(expectedSeq: number | null, ea: number): Plan {
    const suspect: ChenEvidence = {
      kind: "chen",
      expectedSeq,
      expectedArrivalMs: ea,
      freshnessPointMs: ea + this.alpha,
    };
    // the following freshness point is that of the heartbeat after: EA + η + α
    const failure: ChenEvidence = {
      kind: "chen",
      expectedSeq: expectedSeq === null ? null : expectedSeq + 1,
      expectedArrivalMs: ea + this.eta,
      freshnessPointMs: ea + this.eta + this.alpha,
    };
    return { suspectAt: suspect.freshnessPointMs, failAt: failure.freshnessPointMs, suspect, failure };
  }
}
