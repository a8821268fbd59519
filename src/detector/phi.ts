// Phi accrual failure detector (Hayashibara et al., SRDS 2004). Inter-arrival times
// over a window are modelled as a normal distribution; the suspicion level after t ms
// of silence is φ(t) = −log10(1 − F(t)). SUSPECT from φ ≥ suspectPhi, FAILURE from
// φ ≥ failurePhi. Since φ only grows with t, both crossings are fixed instants after
// the last arrival, computed once per heartbeat: last + mean + z·σ, where z is the
// standard normal quantile of the threshold.
import {
  type Detector,
  type DetectorState,
  type PhiEvidence,
  type Plan,
  SampleWindow,
  TimedStates,
  type Transition,
} from "./types.ts";

export interface PhiOptions {
  /** Nominal heartbeat period: the assumed distribution before real intervals exist. */
  etaMs: number;
  /** When monitoring began: silence is measured from here until the first heartbeat. */
  startMs: number;
  /** Inter-arrival intervals kept (default 1000). */
  window?: number;
  /** Floor on σ so a very regular sender is not suspected at the first jitter (default η/10). */
  minStdDevMs?: number;
  /** Default 3. */
  suspectPhi?: number;
  /** Default 8. */
  failurePhi?: number;
}

const LN10 = Math.log(10);
const LOG_SQRT_2PI = 0.5 * Math.log(2 * Math.PI);

/** erf(x) by its Taylor series; accurate to ~1e-14 for |x| < 2.2, where it is used. */
function erfSeries(x: number): number {
  let term = x;
  let sum = x;
  for (let n = 1; Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
    term *= -x * x / n;
    sum += term / (2 * n + 1);
  }
  return sum * 2 / Math.sqrt(Math.PI);
}

/** Mills ratio Q(z)/pdf(z) by its continued fraction 1/(z+1/(z+2/(z+3/(z+…)))), for z ≥ 3. */
function millsRatio(z: number): number {
  let acc = z;
  for (let k = 200; k >= 1; k--) acc = z + k / acc;
  return 1 / acc;
}

/** log10 of the standard normal upper tail Q(z) = 1 − Φ(z), without underflow. */
export function log10UpperTail(z: number): number {
  if (z >= 3) return (-z * z / 2 - LOG_SQRT_2PI + Math.log(millsRatio(z))) / LN10;
  if (z <= -3) return Math.log10(1 - Math.exp(-z * z / 2 - LOG_SQRT_2PI) * millsRatio(-z));
  return Math.log10(0.5 * (1 - erfSeries(z / Math.SQRT2)));
}

/** The z at which −log10 Q(z) reaches `phi` (bisection; φ(z) is increasing). */
function quantileForPhi(phi: number): number {
  let lo = -10, hi = 60;
  for (let i = 0; i < 200 && hi - lo > 1e-12; i++) {
    const mid = (lo + hi) / 2;
    if (-log10UpperTail(mid) < phi) lo = mid;
    else hi = mid;
  }
  return hi;
}

export class PhiDetector implements Detector {
  private readonly eta: number;
  private readonly minStdDev: number;
  private readonly suspectPhi: number;
  private readonly failurePhi: number;
  private readonly zSuspect: number;
  private readonly zFailure: number;
  private readonly intervals: SampleWindow;
  private highest: number | null = null;
  // silence is measured from here: the last arrival, or the start before any
  private lastMs: number;
  private hasArrival = false;
  private readonly timeline: TimedStates;

  constructor(opts: PhiOptions) {
    if (!(opts.etaMs > 0)) throw new RangeError("etaMs must be positive");
    this.eta = opts.etaMs;
    this.minStdDev = opts.minStdDevMs ?? opts.etaMs / 10;
    this.suspectPhi = opts.suspectPhi ?? 3;
    this.failurePhi = opts.failurePhi ?? 8;
    if (!(this.minStdDev > 0)) throw new RangeError("minStdDevMs must be positive");
    if (!(this.suspectPhi > 0 && this.failurePhi > this.suspectPhi)) {
      throw new RangeError("need 0 < suspectPhi < failurePhi");
    }
    this.zSuspect = quantileForPhi(this.suspectPhi);
    this.zFailure = quantileForPhi(this.failurePhi);
    this.intervals = new SampleWindow(opts.window ?? 1000);
    this.lastMs = opts.startMs;
    this.timeline = new TimedStates(this.plan());
  }

  /** The current suspicion level. */
  phi(now: number): number {
    const { mean, sd } = this.distribution();
    return -log10UpperTail((now - this.lastMs - mean) / sd);
  }

  heartbeat(seq: number, now: number): boolean {
    if (!Number.isSafeInteger(seq) || seq < 0) return false;
    if (this.highest !== null && seq <= this.highest) return false; // duplicate, reordered or replayed
    this.timeline.advance(now);
    const { mean, sd } = this.distribution();
    const evidence: PhiEvidence = { kind: "phi", phi: this.phi(now), meanMs: mean, stdDevMs: sd };
    if (this.hasArrival) this.intervals.push(now - this.lastMs);
    this.highest = seq;
    this.lastMs = now;
    this.hasArrival = true;
    this.timeline.trust(seq, now, this.plan(), evidence);
    return true;
  }

  restart(_now: number): void {
    // the gap across a restart is not an inter-arrival time of the running sender
    this.highest = null;
    this.hasArrival = false;
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

  private distribution(): { mean: number; sd: number } {
    // until real intervals exist, assume η with a wide spread
    if (this.intervals.count === 0) return { mean: this.eta, sd: Math.max(this.eta / 4, this.minStdDev) };
    return { mean: this.intervals.mean(), sd: Math.max(this.intervals.stdDev(), this.minStdDev) };
  }

  private plan(): Plan {
    const { mean, sd } = this.distribution();
    const at = (z: number) => this.lastMs + mean + z * sd;
    const evidence = (phi: number): PhiEvidence => ({ kind: "phi", phi, meanMs: mean, stdDevMs: sd });
    return {
      suspectAt: at(this.zSuspect),
      failAt: at(this.zFailure),
      suspect: evidence(this.suspectPhi),
      failure: evidence(this.failurePhi),
    };
  }
}
