// Quality-of-service simulation for failure detectors, with the metrics of Chen,
// Toueg and Aguilera: the sender emits heartbeat i at i·η, each crosses a link with a
// random delay or is lost, and the same arrival trace is replayed through every
// detector under test. Pure and deterministic for a seed.
//
// - Accuracy comes from failure-free runs: every non-TRUST period is a mistake.
//   T_MR (mistake recurrence) is the mean time between the starts of consecutive
//   mistakes, T_M (mistake duration) their mean length, and a mistake that reached
//   FAILURE is a false failover.
// - Detection comes from crash runs: T_D is the time from the crash to the detector's
//   final transition into FAILURE (0 if it was already there and never left).
import type { Detector, Transition } from "./types.ts";
import { type LinkEstimate, LinkEstimator } from "./link-estimator.ts";

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type DelayModel =
  | { kind: "exponential"; meanMs: number }
  | { kind: "uniform"; minMs: number; maxMs: number };

export interface Link {
  etaMs: number;
  delay: DelayModel;
  /** Independent per heartbeat. */
  lossProbability: number;
}

export interface Arrival {
  seq: number;
  sentMs: number;
  arrivalMs: number;
}

function drawDelay(rng: () => number, d: DelayModel): number {
  if (d.kind === "exponential") return -d.meanMs * Math.log(1 - rng());
  return d.minMs + (d.maxMs - d.minMs) * rng();
}

/**
 * The gateway's measurement of `link`, simulated: `untilMs` of its heartbeats through a
 * LinkEstimator, and `probes` round trips (one delay each way, drawn from the same model).
 */
export function simulatedEstimate(
  rng: () => number,
  link: Link,
  untilMs: number,
  probes = 30,
): LinkEstimate | undefined {
  const est = new LinkEstimator({ windowMs: untilMs, minSamples: 50, rttSamples: probes });
  for (const a of heartbeatTrace(rng, link, untilMs)) est.heartbeat(a.seq, a.arrivalMs, link.etaMs);
  for (let i = 0; i < probes; i++) est.roundTrip(drawDelay(rng, link.delay) + drawDelay(rng, link.delay));
  return est.estimate();
}

/** Heartbeats 0, 1, … sent at seq·η while seq·η < untilMs, in arrival order. */
export function heartbeatTrace(rng: () => number, link: Link, untilMs: number): Arrival[] {
  const out: Arrival[] = [];
  for (let seq = 0; seq * link.etaMs < untilMs; seq++) {
    const sentMs = seq * link.etaMs;
    const lost = rng() < link.lossProbability;
    const delay = drawDelay(rng, link.delay); // drawn either way, so loss does not shift later delays
    if (!lost) out.push({ seq, sentMs, arrivalMs: sentMs + delay });
  }
  return out.sort((a, b) => a.arrivalMs - b.arrivalMs);
}

/** Feeds `trace` to `detector` and returns its transitions up to `endMs`. */
export function replay(detector: Detector, trace: Arrival[], endMs: number): Transition[] {
  const out: Transition[] = [];
  for (const a of trace) {
    if (a.arrivalMs > endMs) break;
    detector.heartbeat(a.seq, a.arrivalMs);
    out.push(...detector.poll(a.arrivalMs));
  }
  out.push(...detector.poll(endMs));
  return out;
}

export interface Mistake {
  startMs: number;
  endMs: number;
  /** The mistake went as far as FAILURE: a failover of a live server. */
  failure: boolean;
}

/**
 * Non-TRUST periods starting before `untilMs`; one still open is cut at `untilMs`. With `from`
 * FAILURE, only the periods in FAILURE (false detections, on a live sender).
 */
export function mistakes(
  transitions: Transition[],
  untilMs: number,
  from: "SUSPECT" | "FAILURE" = "SUSPECT",
): Mistake[] {
  const out: Mistake[] = [];
  let open: Mistake | undefined;
  for (const t of transitions) {
    if (t.at >= untilMs) break;
    if (from === "SUSPECT" ? t.from === "TRUST" : t.to === "FAILURE") {
      open = { startMs: t.at, endMs: untilMs, failure: false };
    }
    if (open && t.to === "FAILURE") open.failure = true;
    if (open && t.to === "TRUST") {
      open.endMs = t.at;
      out.push(open);
      open = undefined;
    }
  }
  if (open) out.push(open);
  return out;
}

/** T_D, or undefined when the detector does not end in FAILURE. */
export function detectionTime(transitions: Transition[], crashMs: number): number | undefined {
  const last = transitions.at(-1);
  if (!last || last.to !== "FAILURE") return undefined;
  return Math.max(0, last.at - crashMs);
}

/** Makes a fresh detector whose monitoring starts at `startMs`. */
export type DetectorFactory = (startMs: number) => Detector;

export interface QosConfig {
  seed: number;
  link: Link;
  /** Length of the failure-free run the accuracy metrics come from. */
  aliveMs: number;
  crashTrials: number;
  /** Each crash trial runs this long, plus a uniform [0, η) phase, before the crash. */
  warmupMs: number;
}

export interface QosResult {
  aliveMs: number;
  mistakes: number;
  /** Mistakes that reached FAILURE. */
  falseFailures: number;
  /** T_MR; null with fewer than two mistakes. */
  mistakeRecurrenceMs: number | null;
  /** T_M; null without mistakes. */
  mistakeDurationMs: number | null;
  /** Mean time between the starts of false FAILUREs; null with fewer than two. */
  falseFailureRecurrenceMs: number | null;
  /** Mean length of a false FAILURE; null without one. */
  falseFailureDurationMs: number | null;
  /** P_A: fraction of the failure-free run spent in TRUST. */
  queryAccuracy: number;
  /** T_D of each crash trial, ascending. */
  detectionMs: number[];
  detectionMedianMs: number;
  detectionMaxMs: number;
}

/** Runs the failure-free run and the crash trials through every detector. */
export function measureQos(
  config: QosConfig,
  detectors: Record<string, DetectorFactory>,
): Record<string, QosResult> {
  const rng = mulberry32(config.seed);
  const names = Object.keys(detectors);

  const alive = heartbeatTrace(rng, config.link, config.aliveMs);
  const accuracy = new Map(names.map((name) => {
    const ts = replay(detectors[name](0), alive, config.aliveMs);
    return [name, { all: mistakes(ts, config.aliveMs), failures: mistakes(ts, config.aliveMs, "FAILURE") }];
  }));

  const detection = new Map<string, number[]>(names.map((n) => [n, []]));
  for (let trial = 0; trial < config.crashTrials; trial++) {
    const crashMs = config.warmupMs + rng() * config.link.etaMs;
    const trace = heartbeatTrace(rng, config.link, crashMs);
    for (const name of names) {
      const d = detectors[name](0);
      // heartbeats still in flight at the crash arrive after it; then run to the last deadline
      const endMs = Math.max(crashMs, trace.at(-1)?.arrivalMs ?? 0);
      const transitions = replay(d, trace, endMs);
      for (let at = d.nextDeadline(endMs); at !== undefined; at = d.nextDeadline(at)) {
        transitions.push(...d.poll(at));
      }
      const td = detectionTime(transitions, crashMs);
      if (td === undefined) throw new Error(`${name}: no FAILURE after the crash`);
      detection.get(name)!.push(td);
    }
  }

  const out: Record<string, QosResult> = {};
  for (const name of names) {
    const { all: ms, failures } = accuracy.get(name)!;
    const td = detection.get(name)!.sort((a, b) => a - b);
    const wrongMs = ms.reduce((s, m) => s + (m.endMs - m.startMs), 0);
    out[name] = {
      aliveMs: config.aliveMs,
      mistakes: ms.length,
      falseFailures: ms.filter((m) => m.failure).length,
      mistakeRecurrenceMs: ms.length >= 2
        ? (ms[ms.length - 1].startMs - ms[0].startMs) / (ms.length - 1)
        : null,
      mistakeDurationMs: ms.length ? wrongMs / ms.length : null,
      falseFailureRecurrenceMs: failures.length >= 2
        ? (failures[failures.length - 1].startMs - failures[0].startMs) / (failures.length - 1)
        : null,
      falseFailureDurationMs: failures.length
        ? failures.reduce((s, m) => s + (m.endMs - m.startMs), 0) / failures.length
        : null,
      queryAccuracy: 1 - wrongMs / config.aliveMs,
      detectionMs: td,
      detectionMedianMs: median(td),
      detectionMaxMs: td.length ? td[td.length - 1] : NaN,
    };
  }
  return out;
}

function median(sorted: number[]): number {
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
