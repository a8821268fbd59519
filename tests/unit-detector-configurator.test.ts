// The QoS configurator against the formulas of Chen, Toueg and Aguilera ("On the Quality of
// Service of Failure Detectors", IEEE ToC 51(5), 2002) and their worked example; the online link
// estimator; the observed-QoS tracker; and the Chen detector's reconfiguration.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  configure,
  configureNfdS,
  DEFAULT_LIMITS,
  delayTail,
  keepPeriod,
  type LinkStats,
  logRecurrence,
  meets,
  predictQos,
  type QosTargets,
} from "../src/detector/configurator.ts";
import { LinkEstimator } from "../src/detector/link-estimator.ts";
import { QosObserver } from "../src/detector/observed.ts";
import { ChenDetector } from "../src/detector/chen.ts";
import type { Transition } from "../src/detector/types.ts";

const near = (actual: number, expected: number, eps: number, what = "") =>
  assert.ok(Math.abs(actual - expected) <= eps, `${what} ${actual} ≠ ${expected} ± ${eps}`);

const DAY = 86_400_000;
const t = suite("configurator");

t("the paper's worked example (NFD-S, exponential delays): η = 9.97 s, δ = 20.03 s", () => {
  // p_L = 0.01, E(D) = 0.02 s exponential; T_D^U = 30 s, T_MR^L = 30 days, T_M^U = 60 s (seconds)
  const r = configureNfdS(
    { detectionMs: 30, mistakeRecurrenceMs: 30 * 86_400, mistakeDurationMs: 60 },
    0.01,
    (x) => x <= 0 ? 1 : Math.exp(-x / 0.02),
  );
  assert.ok(r);
  near(r.eta, 9.97, 0.01, "η");
  near(r.delta, 20.03, 0.01, "δ");
  // by hand: with η just under 10 the third factor p_L + (1 − p_L)e^{−(30 − 3η)/0.02} must be at
  // most η/(T_MR^L·p_L²) — the boundary is where both sides meet
  const third = 0.01 + 0.99 * Math.exp(-(30 - 3 * r.eta) / 0.02);
  near(r.eta / (0.01 * 0.01 * third), 30 * 86_400, 30 * 86_400 * 1e-3, "f(η) at the boundary");
});

t("Cantelli's bound and f(η) by hand", () => {
  assert.is(delayTail(100, 0), 1);
  assert.is(delayTail(100, -5), 1);
  near(delayTail(100, 10), 0.5, 1e-12);
  assert.is(delayTail(0, 3), 0, "no variance: never later than the mean");
  // room 300, η 100: factors at x = 200 and 100; V = 100, p = 0.01
  const miss = (x: number) => 0.01 + 0.99 * 100 / (100 + x * x);
  const byHand = 100 / (miss(200) * miss(100));
  near(Math.exp(logRecurrence(miss, 300, 100)), byHand, byHand * 1e-12);
  // ⌈T_u/η⌉ − 1 factors: room 301 gives a third, at x = 1
  near(Math.exp(logRecurrence(miss, 301, 100)), 100 / (miss(201) * miss(101) * miss(1)), 1e-6);
});

const lan: LinkStats = { lossProbability: 0.001, meanDelayMs: 0.5, delayVarianceMs2: 0.25 };
const wan: LinkStats = { lossProbability: 0.01, meanDelayMs: 10, delayVarianceMs2: 100 };

t("predicted QoS: T_D = E(D) + α + 2η (+ reaction and the estimate's error), T_M = η/γ, T_MR = f", () => {
  const s = { etaMs: 100, alphaMs: 200 };
  const p = predictQos(wan, s);
  const overhead = DEFAULT_LIMITS.reactionMs + 3 * Math.sqrt(100 / DEFAULT_LIMITS.window);
  near(p.detectionMs, 10 + 200 + 200 + overhead, 1e-9, "T_D");
  const room = 400; // margin of FAILURE (α + η) plus η
  const gamma = 0.99 * (room * room) / (100 + room * room);
  near(p.mistakeDurationMs, 100 / gamma, 1e-9, "T_M");
  const miss = (x: number) => 0.01 + 0.99 * 100 / (100 + x * x);
  near(p.mistakeRecurrenceMs, 100 / (miss(300) * miss(200) * miss(100)), 1e-3, "T_MR");
});

t("the derived setting meets the targets, and a longer period with the same detection time does not", () => {
  for (const link of [lan, wan, { lossProbability: 0.05, meanDelayMs: 20, delayVarianceMs2: 400 }]) {
    const targets: QosTargets = { detectionMs: 1000, mistakeRecurrenceMs: 30 * DAY, mistakeDurationMs: 1000 };
    const c = configure(targets, link);
    assert.ok(c.ok, JSON.stringify(c));
    assert.ok(meets(c.predicted, targets), JSON.stringify(c.predicted));
    near(c.predicted.detectionMs, targets.detectionMs, 0.1, "the whole detection budget is used");
    assert.ok(c.setting.alphaMs >= 0, "FAILURE one period after SUSPECT");
    // the procedure's η is the largest: 0.2 ms more, its margin filling the same room, misses a target
    const room = c.setting.alphaMs + 2 * c.setting.etaMs;
    const longer = { etaMs: c.setting.etaMs + 0.2, alphaMs: room - 2 * (c.setting.etaMs + 0.2) };
    assert.not.ok(meets(predictQos(link, longer), targets), `η ${c.setting.etaMs} is not the largest`);
  }
});

t("a short mistake duration binds η: η ≈ γ'·T_M^U", () => {
  const targets = { detectionMs: 2000, mistakeRecurrenceMs: 60_000, mistakeDurationMs: 50 };
  const c = configure(targets, wan);
  assert.ok(c.ok);
  const room = c.setting.alphaMs + 2 * c.setting.etaMs;
  const gamma = 0.99 * room * room / (100 + room * room);
  assert.ok(c.setting.etaMs <= gamma * 50 + 1e-9 && c.setting.etaMs > gamma * 50 - 0.1, `${c.setting.etaMs}`);
  near(c.predicted.mistakeDurationMs, 50, 0.15);
});

t("unmeetable targets are said so, with the best achievable QoS", () => {
  const lossy: LinkStats = { lossProbability: 0.5, meanDelayMs: 100, delayVarianceMs2: 10_000 };
  const targets = { detectionMs: 1000, mistakeRecurrenceMs: 30 * DAY, mistakeDurationMs: 500 };
  const c = configure(targets, lossy);
  assert.not.ok(c.ok);
  if (c.ok) return;
  assert.match(
    c.reason,
    /false detections at most every 2592000\.0 s: on this link \(loss 50\.00 %, delay 100\.0 ms ± 100\.0 ms\) detection within 1000\.0 ms allows at best every 1528\.7 ms/,
  );
  assert.ok(c.best, "a setting keeps T_MR^L with a longer detection time");
  assert.ok(c.best.predicted.mistakeRecurrenceMs >= targets.mistakeRecurrenceMs);
  assert.ok(c.best.predicted.detectionMs > targets.detectionMs);
  // and nothing much faster would do: 5 % less detection time fails
  const tighter = configure({ ...targets, detectionMs: c.best.predicted.detectionMs * 0.95 }, lossy);
  assert.not.ok(tighter.ok);

  const slow = configure({ ...targets, detectionMs: 30 }, wan);
  assert.not.ok(slow.ok);
  if (!slow.ok) {
    assert.match(slow.reason, /leaves no room for heartbeats every 20\.0 ms: .*mean delay is 10\.0 ms/);
  }

  const instant = configure({ ...targets, mistakeDurationMs: 5 }, wan);
  assert.not.ok(instant.ok);
  if (!instant.ok) {
    assert.match(instant.reason, /lasting at most 5\.0 ms needs heartbeats every .* or faster/);
    assert.ok(instant.best, "the best keeps T_MR with the fastest heartbeats");
    assert.is(instant.best.setting.etaMs, 20, "twice the delay's deviation: heartbeats rarely overtake");
  }
});

t("bad inputs are refused with the field named", () => {
  const ok = { detectionMs: 1000, mistakeRecurrenceMs: 1000, mistakeDurationMs: 100 };
  assert.throws(() => configure({ ...ok, detectionMs: -1 }, wan), /detectionMs must be positive/);
  assert.throws(() => configure(ok, { ...wan, lossProbability: 1 }), /loss probability must be in \[0, 1\)/);
  assert.throws(() => configure(ok, { ...wan, delayVarianceMs2: -1 }), /must not be negative/);
});

t("hysteresis: a few % change of the measured link keeps the running period, a large change moves it", () => {
  // a link where T_MR^L binds η (below the longest period asked of an agent): the longest period
  // meeting the targets moves with every measurement
  const limits = { ...DEFAULT_LIMITS, maxEtaMs: 500 };
  const targets: QosTargets = { detectionMs: 1500, mistakeRecurrenceMs: 30 * DAY, mistakeDurationMs: 5000 };
  const base: LinkStats = { lossProbability: 0.01, meanDelayMs: 20, delayVarianceMs2: 400 };
  const worse = (f: number): LinkStats => ({
    lossProbability: base.lossProbability * f,
    meanDelayMs: base.meanDelayMs * f,
    delayVarianceMs2: base.delayVarianceMs2 * f,
  });
  const first = configure(targets, base, limits);
  assert.ok(first.ok);
  const running = first.setting.etaMs;
  assert.ok(running < 500, `T_MR binds the period: ${running}`);
  for (const f of [0.97, 0.99, 1.01, 1.02, 1.03]) {
    const now = configure(targets, worse(f), limits);
    assert.ok(now.ok);
    assert.is.not(now.setting.etaMs, running, `the longest period moved with a ${f}× link`);
    const kept = keepPeriod(targets, worse(f), running, now.setting.etaMs, limits);
    assert.ok(kept, `a ${f}× link keeps η ${running} ms`);
    assert.is(kept.setting.etaMs, running);
    // the margin follows the link: detection within the target on the link as measured
    assert.ok(kept.predicted.detectionMs <= targets.detectionMs * (1 + 1e-9));
    if (f < 1) assert.ok(meets(kept.predicted, targets), "a better link: met outright");
  }
  for (const f of [1.1, 1.5, 4]) {
    const now = configure(targets, worse(f), limits);
    assert.ok(now.ok);
    assert.is(
      keepPeriod(targets, worse(f), running, now.setting.etaMs, limits),
      undefined,
      `a ${f}× link moves η`,
    );
  }
  // a period the configurator would now choose more than a fifth away is not kept, met or not
  assert.is(keepPeriod(targets, base, running, running * 1.25, limits), undefined);
});

const e = suite("link estimator");

e("loss (Jeffreys), delay variance and mean from heartbeats and probe round trips", () => {
  const est = new LinkEstimator({ windowMs: 60_000, minSamples: 10, rttSamples: 5 });
  const delays = [3, 5, 7, 5, 3, 5, 7, 5, 3, 5, 7, 5];
  let seq = 1;
  for (const d of delays) {
    if (seq === 4) seq++; // one lost
    est.heartbeat(seq, 1_000_000 + seq * 100 + d, 100);
    seq++;
  }
  assert.is(est.estimate(), undefined, "no round trip yet: the mean delay is unknown");
  est.roundTrip(8);
  est.roundTrip(6);
  const r = est.estimate()!;
  assert.is(r.samples, 12);
  assert.is(r.expected, 13);
  near(r.lossProbability, 1.5 / 14, 1e-12, "loss");
  const mean = delays.reduce((s, x) => s + x, 0) / delays.length;
  near(r.delayVarianceMs2, delays.reduce((s, x) => s + (x - mean) ** 2, 0) / delays.length, 1e-9, "V(D)");
  near(
    r.meanDelayMs,
    6 / 2 + (mean - 3),
    1e-9,
    "E(D): half the smallest round trip plus the mean above the least",
  );
  // the upper bounds: the score bound of 1 lost of 13, the mean's and the variance's spread
  near(r.upper.lossProbability, (1 + 1.645 ** 2 / 2 + 1.645 * Math.sqrt(1 + 1.645 ** 2 / 4)) / 13, 1e-9);
  near(r.upper.meanDelayMs, r.meanDelayMs + 1.645 * Math.sqrt(r.delayVarianceMs2 / 12), 1e-9);
  const m4 = delays.reduce((s, x) => s + (x - mean) ** 4, 0) / 12;
  near(
    r.upper.delayVarianceMs2,
    r.delayVarianceMs2 + 1.645 * Math.sqrt((m4 - r.delayVarianceMs2 ** 2) / 12),
    1e-9,
  );
});

e("a new period or a restart starts the window over; late heartbeats count as lost; old ones leave", () => {
  const est = new LinkEstimator({ windowMs: 1000, minSamples: 3, rttSamples: 5 });
  est.roundTrip(2);
  for (let s = 1; s <= 5; s++) est.heartbeat(s, s * 100, 100);
  est.heartbeat(3, 600, 100);
  assert.is(est.estimate()!.samples, 5);
  est.heartbeat(6, 650, 50);
  assert.is(est.period, 50);
  assert.is(est.estimate(), undefined, "one heartbeat of the new schedule");
  for (let s = 7; s <= 60; s++) est.heartbeat(s, 650 + (s - 6) * 50, 50);
  const r = est.estimate()!;
  assert.ok(r.samples <= 21 && r.samples >= 20, `window of 1 s at η = 50 ms: ${r.samples}`);
  const slow = new LinkEstimator({ windowMs: 1000, minSamples: 5, rttSamples: 5 });
  slow.roundTrip(2);
  for (let s = 1; s <= 20; s++) slow.heartbeat(s, s * 600, 600);
  assert.is(slow.estimate()!.samples, 5, "a long period keeps minSamples heartbeats, however old");
  est.reset();
  assert.is(est.estimate(), undefined);
});

const o = suite("observed QoS");

const tr = (from: Transition["from"], to: Transition["to"], at: number, lastArrivalMs = 0): Transition => ({
  from,
  to,
  at,
  lastSeq: 1,
  lastArrivalMs,
  evidence: { kind: "chen", expectedSeq: 2, expectedArrivalMs: 0, freshnessPointMs: 0 },
});

o("mistakes are FAILUREs the same sender heartbeats out of; a restart makes one a real failure", () => {
  const q = new QosObserver(0);
  q.transition(tr("TRUST", "SUSPECT", 1000), 5);
  q.transition(tr("SUSPECT", "TRUST", 1050), 5);
  q.transition(tr("TRUST", "SUSPECT", 2000), 5);
  q.transition(tr("SUSPECT", "FAILURE", 2100, 1800), 5);
  q.transition(tr("FAILURE", "TRUST", 2400), 5);
  let v = q.view(10_000);
  assert.is(v.mistakes, 1);
  assert.is(v.mistakeDurationMs, 300);
  assert.is(v.mistakeRecurrenceMs, 10_000);
  assert.is(v.suspicions, 2);
  q.transition(tr("TRUST", "SUSPECT", 5000), 5);
  q.transition(tr("SUSPECT", "FAILURE", 5100, 4800), 5);
  v = q.view(6000);
  assert.equal(v.ongoing, { since: 5100, detectionMs: 5100 - (4800 - 5) });
  q.restarted();
  v = q.view(7000);
  assert.is(v.mistakes, 1, "a failure followed by a restart is no mistake");
  assert.equal(v.detections, [{ at: 5100, ms: 305 }]);
  assert.is(v.ongoing, null);
});

const c = suite("chen reconfigure");

c("a new period and margin apply from the next heartbeat, the estimate starting over", () => {
  const d = new ChenDetector({ etaMs: 100, alphaMs: 50, window: 10, startMs: 0 });
  for (let s = 1; s <= 5; s++) d.heartbeat(s, s * 100 + 3);
  assert.is(d.nextDeadline(503), 603 + 50);
  d.reconfigure(40, 20);
  assert.is(d.nextDeadline(503), 653, "deadlines already set stand");
  d.heartbeat(6, 540);
  assert.is(d.nextDeadline(540), 540 + 40 + 20);
  d.heartbeat(7, 581);
  assert.is(d.nextDeadline(581), (540 - 6 * 40 + 581 - 7 * 40) / 2 + 8 * 40 + 20);
  d.reconfigure(40, 30);
  d.heartbeat(8, 621);
  assert.is(
    d.nextDeadline(621),
    (540 - 6 * 40 + 581 - 7 * 40 + 621 - 8 * 40) / 3 + 9 * 40 + 30,
    "a new margin alone keeps the estimate",
  );
  assert.throws(() => d.reconfigure(0, 1), /etaMs must be positive/);
});

t.run();
e.run();
o.run();
c.run();
