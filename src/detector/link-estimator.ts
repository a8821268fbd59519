// A heartbeat link's loss and delay, measured online at the receiver from the heartbeats it
// gets anyway (the configurator's input). Pure: times are the `now` of the receiver's
// monotonic clock passed in.
//
// - Loss: the sequence numbers of the window's heartbeats against those received, as the
//   Jeffreys estimate (lost + ½)/(expected + 1): a short clean window never claims no loss.
// - Delay variance: heartbeat s is sent at s·η on the sender's clock, so x_s = A_s − s·η is the
//   delay plus a constant (the clocks' offset): its variance is the delay's.
// - Mean delay: the offset hides it, so it is the smallest delay, half the smallest round trip of
//   the receiver's probes (echoed in later heartbeats, on the same path), plus how far the
//   window's mean x lies above its smallest.
// A new heartbeat period (or a restarted sender) starts a new schedule: the window starts over.
// Besides these estimates it gives one-sided 95 % upper bounds (the score bound of the lost count,
// the sample variance's own spread, the mean's standard error): the configurator works from those,
// since a setting derived from an estimate that happened to come out low would promise too much.
import type { LinkStats } from "./configurator.ts";

/** One-sided 95 %. */
const Z = 1.645;

export interface LinkEstimate extends LinkStats {
  /** Upper bounds of loss, mean delay and variance, the configurator's input. */
  upper: LinkStats;
  /** Heartbeats in the window. */
  samples: number;
  /** The window's span of sequence numbers. */
  expected: number;
  /** The smallest round trip of the recent probes. */
  rttMinMs: number;
}

export interface EstimatorOptions {
  /** Heartbeats older than this leave the window, unless fewer than minSamples would be left. */
  windowMs: number;
  /** Fewer heartbeats than this (or no round trip yet) give no estimate. */
  minSamples: number;
  /** Round trips kept. */
  rttSamples: number;
}

// half a minute: a link that changed is followed within about that long
export const DEFAULT_ESTIMATOR: EstimatorOptions = { windowMs: 30_000, minSamples: 50, rttSamples: 30 };

export class LinkEstimator {
  private seqs: number[] = [];
  private arrivals: number[] = [];
  /** x_s relative to the first of the window's schedule, for precision with epoch-sized clocks. */
  private xs: number[] = [];
  private head = 0;
  private etaMs: number | undefined;
  private origin = 0;
  private highest = -1;
  private rtts: number[] = [];

  constructor(private readonly o: EstimatorOptions = DEFAULT_ESTIMATOR) {}

  /** The period the window's heartbeats were sent at (undefined before the first). */
  get period(): number | undefined {
    return this.etaMs;
  }

  /** Heartbeat `seq` arrived at `now`, sent on a schedule of period `etaMs`. */
  heartbeat(seq: number, now: number, etaMs: number): void {
    if (etaMs !== this.etaMs) {
      this.reset();
      this.etaMs = etaMs;
    }
    if (seq <= this.highest) return; // late or repeated: the detector ignores it, it counts as lost
    if (this.size() === 0) this.origin = now - seq * etaMs;
    this.highest = seq;
    this.seqs.push(seq);
    this.arrivals.push(now);
    this.xs.push(now - seq * etaMs - this.origin);
    // the last windowMs, or the last minSamples heartbeats when that is longer (a long period)
    while (this.size() > this.o.minSamples && now - this.arrivals[this.head] > this.o.windowMs) this.head++;
    if (this.head > 4096 && this.head * 2 > this.seqs.length) this.compact();
  }

  /** A round trip of a probe (echo hold excluded). */
  roundTrip(ms: number): void {
    if (!(ms >= 0) || !Number.isFinite(ms)) return;
    this.rtts.push(ms);
    if (this.rtts.length > this.o.rttSamples) this.rtts.shift();
  }

  /** The sender restarted: its numbering and schedule start over. */
  reset(): void {
    this.seqs = [];
    this.arrivals = [];
    this.xs = [];
    this.head = 0;
    this.highest = -1;
    this.etaMs = undefined;
  }

  estimate(): LinkEstimate | undefined {
    const n = this.size();
    if (n < this.o.minSamples || this.rtts.length === 0) return undefined;
    const expected = this.seqs[this.seqs.length - 1] - this.seqs[this.head] + 1;
    let sum = 0, min = Infinity;
    for (let i = this.head; i < this.xs.length; i++) {
      sum += this.xs[i];
      min = Math.min(min, this.xs[i]);
    }
    const mean = sum / n;
    let m2 = 0, m4 = 0;
    for (let i = this.head; i < this.xs.length; i++) {
      const d2 = (this.xs[i] - mean) ** 2;
      m2 += d2;
      m4 += d2 * d2;
    }
    m2 /= n;
    m4 /= n;
    const rttMinMs = Math.min(...this.rtts);
    const lost = expected - n;
    const meanDelayMs = rttMinMs / 2 + (mean - min);
    return {
      lossProbability: (lost + 0.5) / (expected + 1),
      meanDelayMs,
      delayVarianceMs2: m2,
      upper: {
        lossProbability: Math.min(0.999, (lost + Z * Z / 2 + Z * Math.sqrt(lost + Z * Z / 4)) / expected),
        meanDelayMs: meanDelayMs + Z * Math.sqrt(m2 / n),
        delayVarianceMs2: m2 + Z * Math.sqrt(Math.max(0, m4 - m2 * m2) / n),
      },
      samples: n,
      expected,
      rttMinMs,
    };
  }

  private size(): number {
    return this.seqs.length - this.head;
  }

  private compact(): void {
    this.seqs = this.seqs.slice(this.head);
    this.arrivals = this.arrivals.slice(this.head);
    this.xs = this.xs.slice(this.head);
    this.head = 0;
  }
}
