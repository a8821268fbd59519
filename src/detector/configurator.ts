// The Chen–Toueg–Aguilera configuration procedure (IEEE ToC 51(5), 2002, §5–6): from QoS
// targets — detection within T_D^U, a false detection no more often than every T_MR^L, lasting at
// most T_M^U — and a link's measured loss p_L, mean delay E(D) and variance V(D), it derives the
// heartbeat period η and the safety margin of the freshness points. Only the mean and variance of
// the delay are known, so every probability is bounded by the one-sided Chebyshev (Cantelli)
// inequality Pr(D − E(D) > x) ≤ V/(V + x²), x > 0, as in the paper's NFD-U procedure:
//
//   T_u = T_D^U − E(D)                         the room left for η + margin
//   γ'  = (1 − p_L)·T_u² / (V + T_u²)           ≤ the probability a heartbeat arrives in time
//   η_max = min(γ'·T_M^U, T_u)                  so that E(T_M) ≤ η/γ' ≤ T_M^U
//   f(η) = η·Π_{j=1}^{⌈T_u/η⌉−1} (V + (T_u − jη)²) / (V + p_L·(T_u − jη)²)   ≤ E(T_MR)
//   η    = the largest η ≤ η_max with f(η) ≥ T_MR^L;  margin = T_u − η
//
// Here the paper's output S ("suspect") is Continuum's FAILURE, the verdict that acts (fails the
// service over): it comes at the expected arrival plus margin m, and SUSPECT, the early warning,
// one period before it. So the detector's α (the SUSPECT margin, as --detector-alpha) is m − η,
// which must not be negative: η ≤ T_u/2. T_u also leaves out what the paper's model does not see:
// the gateway's reaction (its polling period) and the standard error of the expected arrival,
// estimated from the last n arrivals. And η is at least twice the delay's standard deviation:
// heartbeats closer than that would often overtake each other, and the detector ignores an
// overtaken one, so the loss measured at a longer period would no longer hold. Pure: no I/O.

/** What an operator promises for a link. */
export interface QosTargets {
  /** T_D^U: a crash is detected (FAILURE) within this. */
  detectionMs: number;
  /** T_MR^L: false detections (FAILURE of a live server) are on average at least this far apart. */
  mistakeRecurrenceMs: number;
  /** T_M^U: a false detection lasts on average at most this. */
  mistakeDurationMs: number;
}

/** A link as measured from its heartbeats. */
export interface LinkStats {
  /** p_L in [0, 1). */
  lossProbability: number;
  /** E(D), one way. */
  meanDelayMs: number;
  /** V(D). */
  delayVarianceMs2: number;
}

/** A Chen detector setting: heartbeat period and the SUSPECT margin (FAILURE is one η later). */
export interface DetectorSetting {
  etaMs: number;
  alphaMs: number;
}

/** The QoS a setting guarantees on a link (bounds: T_D at most, T_MR at least, T_M at most). */
export interface PredictedQos {
  detectionMs: number;
  mistakeRecurrenceMs: number;
  mistakeDurationMs: number;
}

export interface Limits {
  /** The shortest heartbeat period the agents are asked for. */
  minEtaMs: number;
  /** The longest (a longer one would make the link's measurement slow to follow changes). */
  maxEtaMs: number;
  /** How late the gateway may notice a passed deadline (its polling period). */
  reactionMs: number;
  /** n: arrivals the detector averages for the expected arrival. */
  window: number;
}

export const DEFAULT_LIMITS: Limits = { minEtaMs: 10, maxEtaMs: 1000, reactionMs: 10, window: 100 };

export type Configuration =
  | { ok: true; setting: DetectorSetting; predicted: PredictedQos }
  | {
    ok: false;
    /** Why the targets cannot be met on this link. */
    reason: string;
    /**
     * The setting that keeps T_MR^L with the shortest detection time (and T_M^U, or the shortest
     * mistake duration the fastest heartbeats allow), with what it guarantees; null
     * when no setting keeps T_MR^L on this link.
     */
    best: { setting: DetectorSetting; predicted: PredictedQos } | null;
  };

/** Cantelli's bound on Pr(D − E(D) > x): V/(V + x²) for x > 0, else 1. */
export function delayTail(varianceMs2: number, xMs: number): number {
  if (xMs <= 0) return 1;
  if (varianceMs2 <= 0) return 0;
  return varianceMs2 / (varianceMs2 + xMs * xMs);
}

/** Pr(a heartbeat is lost, or later than its threshold by x): p_L + (1 − p_L)·tail(x). */
export type MissProbability = (xMs: number) => number;

/** Predictions of T_MR stop here (about 300 years): beyond it the number means nothing more. */
export const RECURRENCE_CAP_MS = 1e13;

/**
 * ln f(η) for room T_u: ln η − Σ_{j=1}^{⌈T_u/η⌉−1} ln miss(T_u − jη), in logs as the product
 * overflows. Every term adds, so the sum stops once it reaches `stop`.
 */
export function logRecurrence(
  miss: MissProbability,
  roomMs: number,
  etaMs: number,
  stop = Math.log(RECURRENCE_CAP_MS),
): number {
  let sum = Math.log(etaMs);
  for (let x = roomMs - etaMs; x > 0 && sum < stop; x -= etaMs) {
    const m = miss(x);
    if (m <= 0) return Infinity; // neither loss nor delay can make it miss
    sum -= Math.log(m);
  }
  return sum;
}

/**
 * Steps 1–2 of the procedure: the largest η in [minEta, η_max] with f(η) ≥ T_MR^L, where
 * η_max = min(γ'·T_M^U, the cap); `arrive` is γ'. Undefined when there is none. f is not
 * monotone: a fine geometric grid is scanned down from η_max, then the crossing is bisected.
 */
export function largestPeriod(
  miss: MissProbability,
  roomMs: number,
  arrive: number,
  t: { mistakeRecurrenceMs: number; mistakeDurationMs: number },
  range: { minEtaMs: number; maxEtaMs: number },
): number | undefined {
  const etaMax = Math.min(arrive * t.mistakeDurationMs, range.maxEtaMs);
  if (etaMax < range.minEtaMs) return undefined;
  const goal = Math.log(t.mistakeRecurrenceMs);
  const ok = (eta: number) => logRecurrence(miss, roomMs, eta, goal) >= goal;
  if (ok(etaMax)) return etaMax;
  let hi = etaMax;
  const steps = 2000, ratio = Math.pow(range.minEtaMs / etaMax, 1 / steps);
  for (let i = 1; i <= steps; i++) {
    const eta = Math.max(range.minEtaMs, etaMax * Math.pow(ratio, i));
    if (ok(eta)) {
      let lo = eta;
      for (let k = 0; k < 60 && hi - lo > 1e-6 * hi; k++) {
        const mid = (lo + hi) / 2;
        if (ok(mid)) lo = mid;
        else hi = mid;
      }
      return lo;
    }
    hi = eta;
  }
  return undefined;
}

/**
 * The paper's procedure for NFD-S (synchronized clocks, known delay distribution), as published:
 * q₀' = (1 − p_L)·Pr(D < T_D^U), η_max = min(q₀'·T_M^U, T_D^U), the largest η ≤ η_max with
 * η / Π_{j=1}^{⌈T_D^U/η⌉−1} (p_L + (1 − p_L)·Pr(D > T_D^U − jη)) ≥ T_MR^L, and δ = T_D^U − η.
 * Any unit of time, as long as it is one. Kept to check the machinery against the paper's example.
 */
export function configureNfdS(
  t: QosTargets,
  lossProbability: number,
  delayExceeds: (x: number) => number,
  minEta = 1e-6,
): { eta: number; delta: number } | undefined {
  const miss = (x: number) => lossProbability + (1 - lossProbability) * delayExceeds(x);
  const arrive = (1 - lossProbability) * (1 - delayExceeds(t.detectionMs));
  const eta = largestPeriod(miss, t.detectionMs, arrive, t, { minEtaMs: minEta, maxEtaMs: t.detectionMs });
  return eta === undefined ? undefined : { eta, delta: t.detectionMs - eta };
}

/** Pr(lost, or later than E(D) + x) with Cantelli's bound on the delay. */
function missOf(link: LinkStats): MissProbability {
  const p = link.lossProbability;
  return (x) => p + (1 - p) * delayTail(link.delayVarianceMs2, x);
}

/** The margin after the expected arrival before FAILURE: α + η. */
const failMargin = (s: DetectorSetting) => s.alphaMs + s.etaMs;

/** The detection time the estimate of the expected arrival and the polling add to the paper's bound. */
function overheadMs(link: LinkStats, limits: Limits): number {
  return limits.reactionMs + 3 * Math.sqrt(Math.max(0, link.delayVarianceMs2) / limits.window);
}

/** What `setting` guarantees on `link`: T_D ≤ E(D) + margin + η (+ overhead), E(T_MR) ≥ f, E(T_M) ≤ η/γ. */
export function predictQos(link: LinkStats, setting: DetectorSetting, limits = DEFAULT_LIMITS): PredictedQos {
  const m = failMargin(setting);
  const room = m + setting.etaMs;
  const arrive = (1 - link.lossProbability) * (1 - delayTail(link.delayVarianceMs2, room));
  return {
    detectionMs: link.meanDelayMs + room + overheadMs(link, limits),
    mistakeRecurrenceMs: Math.min(
      RECURRENCE_CAP_MS,
      Math.exp(logRecurrence(missOf(link), room, setting.etaMs)),
    ),
    mistakeDurationMs: arrive > 0 ? setting.etaMs / arrive : Infinity,
  };
}

/** Whether predicted QoS meets the targets. */
export function meets(p: PredictedQos, t: QosTargets, slack = 1e-9): boolean {
  return p.detectionMs <= t.detectionMs * (1 + slack) &&
    p.mistakeRecurrenceMs >= t.mistakeRecurrenceMs * (1 - slack) &&
    p.mistakeDurationMs <= t.mistakeDurationMs * (1 + slack);
}

/** Checks targets and a link; a message naming what is wrong, or undefined. */
export function checkInputs(t: QosTargets, link: LinkStats): string | undefined {
  for (const [k, v] of Object.entries(t)) if (!(v > 0 && Number.isFinite(v))) return `${k} must be positive`;
  if (!(link.lossProbability >= 0 && link.lossProbability < 1)) {
    return "the loss probability must be in [0, 1)";
  }
  if (!(link.meanDelayMs >= 0) || !(link.delayVarianceMs2 >= 0)) {
    return "delay statistics must not be negative";
  }
  return undefined;
}

/**
 * The paper's procedure for the FAILURE verdict: the largest η (fewest heartbeats) that meets the
 * targets, or why none does with the best achievable setting. η is kept to 0.1 ms.
 */
export function configure(t: QosTargets, link: LinkStats, limits = DEFAULT_LIMITS): Configuration {
  const bad = checkInputs(t, link);
  if (bad) throw new RangeError(bad);
  const found = search(t, link, limits);
  if (found.ok) return found;
  return { ok: false, reason: found.reason, best: bestAchievable(t, link, limits) };
}

type Found = { ok: true; setting: DetectorSetting; predicted: PredictedQos } | { ok: false; reason: string };

function search(t: QosTargets, link: LinkStats, limits: Limits): Found {
  const fmt = (ms: number) => ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(1)} ms`;
  const room = t.detectionMs - link.meanDelayMs - overheadMs(link, limits);
  // heartbeats closer than twice the delay's deviation would often overtake each other, and the
  // detector drops an overtaken one: what was measured as loss would no longer hold
  const minEtaMs = Math.max(limits.minEtaMs, 2 * Math.sqrt(link.delayVarianceMs2));
  if (room <= 2 * minEtaMs) {
    return {
      ok: false,
      reason: `detection within ${fmt(t.detectionMs)} leaves no room for heartbeats every ${
        fmt(minEtaMs)
      }: the link's mean delay is ${fmt(link.meanDelayMs)}`,
    };
  }
  const arrive = (1 - link.lossProbability) * (1 - delayTail(link.delayVarianceMs2, room));
  // FAILURE comes one period after SUSPECT, whose margin α = room − 2η must not be negative
  const range = { minEtaMs, maxEtaMs: Math.min(room / 2, limits.maxEtaMs) };
  if (arrive * t.mistakeDurationMs < minEtaMs) {
    return {
      ok: false,
      reason: `a false detection lasting at most ${fmt(t.mistakeDurationMs)} needs heartbeats every ${
        fmt(arrive * t.mistakeDurationMs)
      } or faster (the link loses ${(link.lossProbability * 100).toFixed(2)} %); the fastest is every ${
        fmt(minEtaMs)
      }`,
    };
  }
  const miss = missOf(link);
  const found = largestPeriod(miss, room, arrive, t, range);
  if (found === undefined) {
    const etaMax = Math.min(arrive * t.mistakeDurationMs, range.maxEtaMs);
    let bestLog = -Infinity;
    for (let i = 0; i <= 200; i++) {
      const eta = minEtaMs + (etaMax - minEtaMs) * i / 200;
      bestLog = Math.max(bestLog, logRecurrence(miss, room, eta));
    }
    return {
      ok: false,
      reason: `false detections at most every ${fmt(t.mistakeRecurrenceMs)}: on this link (loss ${
        (link.lossProbability * 100).toFixed(2)
      } %, delay ${fmt(link.meanDelayMs)} ± ${fmt(Math.sqrt(link.delayVarianceMs2))}) detection within ${
        fmt(t.detectionMs)
      } allows at best every ${fmt(Math.exp(bestLog))}`,
    };
  }
  // a period and margin of whole tenths of a millisecond, the margin filling the room again
  for (let eta = Math.floor(found * 10) / 10; eta >= minEtaMs; eta = Math.round(eta * 10 - 1) / 10) {
    const setting = { etaMs: eta, alphaMs: Math.floor((room - 2 * eta) * 10) / 10 };
    const predicted = predictQos(link, setting, limits);
    if (meets(predicted, t)) return { ok: true, setting, predicted };
  }
  return { ok: false, reason: "no period of whole tenths of a millisecond meets the targets" };
}

/** How a running period is kept (see keepPeriod). */
export interface Hysteresis {
  /** The running period stays while the newly chosen one is within this fraction of it… */
  drift: number;
  /**
   * …and it still meets T_MR^L and T_M^U on the link as measured with its loss and delay variance
   * this fraction lower (the detection target: on the link as measured).
   */
  slack: number;
}

export const DEFAULT_HYSTERESIS: Hysteresis = { drift: 0.2, slack: 0.05 };

/**
 * Hysteresis for the period: each new period measures the link anew (the gateway's estimate starts
 * over, about 25 s), and the measurement moves by a few % between two derivations, which moves the
 * longest period meeting the targets by a fraction of a percent (where T_MR^L bounds it, a link 1 %
 * worse takes 3–4 % off the T_MR a period guarantees). So the running period stays, with its margin
 * fitted to the link as measured now, while the period chosen now is within `drift` of it and it
 * still meets the targets with `slack` (stillMeets); undefined when it must change.
 */
export function keepPeriod(
  t: QosTargets,
  link: LinkStats,
  runningEtaMs: number,
  chosenEtaMs: number,
  limits = DEFAULT_LIMITS,
  h = DEFAULT_HYSTERESIS,
): { setting: DetectorSetting; predicted: PredictedQos } | undefined {
  if (Math.abs(chosenEtaMs - runningEtaMs) > h.drift * runningEtaMs) return undefined;
  const room = t.detectionMs - link.meanDelayMs - overheadMs(link, limits);
  const setting = { etaMs: runningEtaMs, alphaMs: Math.floor((room - 2 * runningEtaMs) * 10) / 10 };
  if (setting.alphaMs < 0 || !stillMeets(t, link, setting, limits, h)) return undefined;
  return { setting, predicted: predictQos(link, setting, limits) };
}

/**
 * Whether a running setting still meets the targets: detection on the link as measured, T_MR^L
 * and T_M^U on it with its loss and delay variance `h.slack` lower.
 */
export function stillMeets(
  t: QosTargets,
  link: LinkStats,
  setting: DetectorSetting,
  limits = DEFAULT_LIMITS,
  h = DEFAULT_HYSTERESIS,
): boolean {
  const eased = {
    ...link,
    lossProbability: link.lossProbability * (1 - h.slack),
    delayVarianceMs2: link.delayVarianceMs2 * (1 - h.slack),
  };
  return predictQos(link, setting, limits).detectionMs <= t.detectionMs * (1 + 1e-9) &&
    meets(predictQos(eased, setting, limits), t);
}

/**
 * When the targets cannot all be met: keep T_MR^L (a false detection fails a live service over,
 * which costs more than a slower detection) with the shortest detection time, found by bisection,
 * and T_M^U, or the shortest mistake duration the fastest heartbeats allow.
 */
function bestAchievable(
  t: QosTargets,
  link: LinkStats,
  limits: Limits,
): { setting: DetectorSetting; predicted: PredictedQos } | null {
  const fastest = Math.max(limits.minEtaMs, 2 * Math.sqrt(link.delayVarianceMs2));
  const shortestTm = fastest / (1 - link.lossProbability) * 1.001;
  const relaxed = { ...t, mistakeDurationMs: Math.max(t.mistakeDurationMs, shortestTm) };
  const cap = Math.max(600_000, 10 * t.detectionMs);
  const at = (td: number) => search({ ...relaxed, detectionMs: td }, link, limits);
  let hi = cap, best = at(cap);
  if (!best.ok) return null;
  let lo = t.detectionMs;
  while (hi - lo > Math.max(1, lo * 0.001)) {
    const mid = (lo + hi) / 2;
    const r = at(mid);
    if (r.ok) {
      hi = mid;
      best = r;
    } else lo = mid;
  }
  return { setting: best.setting, predicted: best.predicted };
}
