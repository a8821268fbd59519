import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ChenDetector } from "../src/detector/chen.ts";
import { PhiDetector } from "../src/detector/phi.ts";
import {
  type Arrival,
  detectionTime,
  heartbeatTrace,
  type Link,
  measureQos,
  mistakes,
  mulberry32,
  replay,
} from "../src/detector/qos.ts";
import type { ChenEvidence, Transition } from "../src/detector/types.ts";

const near = (actual: number | undefined, expected: number, eps = 1e-9) =>
  assert.ok(actual !== undefined && Math.abs(actual - expected) <= eps, `${actual} ≠ ${expected}`);

const chenOf = (t: Transition) => t.evidence as ChenEvidence;

const chen = suite("chen");

// η=100, α=30, n=3. Hand-computed: samples A−η·s are 5, 10, 0, then 20 (window keeps
// 10, 0, 20), so after seq 4: EA_5 = 10 + 5·100 = 510, τ = 540, FAILURE at 640.
function scripted(): ChenDetector {
  const d = new ChenDetector({ etaMs: 100, alphaMs: 30, window: 3, startMs: 0 });
  for (const [seq, at] of [[1, 105], [2, 210], [3, 300], [4, 420]]) assert.ok(d.heartbeat(seq, at));
  return d;
}

chen("before any heartbeat the first is expected at start + η", () => {
  const d = new ChenDetector({ etaMs: 100, alphaMs: 30, window: 3, startMs: 1000 });
  assert.is(d.nextDeadline(1000), 1130);
  assert.is(d.state(1129.9), "TRUST");
  assert.is(d.state(1130), "SUSPECT");
  assert.is(d.nextDeadline(1130), 1230);
  assert.is(d.state(1230), "FAILURE");
});

chen("one sample: EA = A + η", () => {
  const d = new ChenDetector({ etaMs: 100, alphaMs: 30, window: 3, startMs: 0 });
  d.heartbeat(7, 50);
  assert.is(d.nextDeadline(50), 50 + 100 + 30);
});

chen("TRUST → SUSPECT → FAILURE exactly at the freshness points", () => {
  const d = scripted();
  assert.is(d.nextDeadline(420), 540);
  assert.is(d.state(539.999), "TRUST");
  assert.equal(d.poll(539.999), []);
  assert.is(d.state(540), "SUSPECT");
  assert.is(d.nextDeadline(540), 640);
  assert.is(d.state(639.999), "SUSPECT");
  assert.is(d.state(640), "FAILURE");
  assert.is(d.nextDeadline(640), undefined);
  const ts = d.poll(700);
  assert.equal(ts.map((t) => [t.from, t.to, t.at, t.lastSeq, t.lastArrivalMs]), [
    ["TRUST", "SUSPECT", 540, 4, 420],
    ["SUSPECT", "FAILURE", 640, 4, 420],
  ]);
  assert.equal(chenOf(ts[0]), {
    kind: "chen",
    expectedSeq: 5,
    expectedArrivalMs: 510,
    freshnessPointMs: 540,
  });
  assert.equal(chenOf(ts[1]), {
    kind: "chen",
    expectedSeq: 6,
    expectedArrivalMs: 610,
    freshnessPointMs: 640,
  });
  assert.equal(d.poll(800), [], "poll drains");
});

chen("a late poll still stamps transitions at the deadlines", () => {
  const d = scripted();
  assert.equal(d.poll(10_000).map((t) => t.at), [540, 640]);
});

chen("a late heartbeat while SUSPECT returns to TRUST", () => {
  const d = scripted();
  assert.is(d.state(550), "SUSPECT");
  assert.ok(d.heartbeat(5, 560));
  assert.is(d.state(560), "TRUST");
  const ts = d.poll(560);
  assert.equal(ts.map((t) => [t.from, t.to, t.at, t.lastSeq]), [["TRUST", "SUSPECT", 540, 4], [
    "SUSPECT",
    "TRUST",
    560,
    5,
  ]]);
  // window now 0, 20, 60: EA_6 = 80/3 + 600
  near(d.nextDeadline(560), 80 / 3 + 600 + 30);
});

chen("a heartbeat after FAILURE returns to TRUST", () => {
  const d = scripted();
  assert.is(d.state(700), "FAILURE");
  assert.ok(d.heartbeat(7, 715));
  assert.is(d.state(715), "TRUST");
  assert.equal(d.poll(715).map((t) => t.to), ["SUSPECT", "FAILURE", "TRUST"]);
  // samples 0, 20, 15: EA_8 = 35/3 + 800
  near(d.nextDeadline(715), 35 / 3 + 800 + 30);
});

chen("a sender whose schedule moved is re-estimated from its new heartbeat", () => {
  const d = scripted();
  // seq 5 ten seconds late: the old window would put EA_6 in the past
  assert.ok(d.heartbeat(5, 10_500));
  assert.is(d.state(10_500), "TRUST");
  assert.is(d.nextDeadline(10_500), 10_500 + 100 + 30);
});

chen("lost heartbeats do not bias the estimate", () => {
  // α > η: one missing heartbeat is no mistake, and the next expectation stays on schedule
  const d = new ChenDetector({ etaMs: 100, alphaMs: 120, window: 10, startMs: 0 });
  d.heartbeat(1, 105);
  d.heartbeat(3, 305); // seq 2 lost
  d.heartbeat(5, 505); // seq 4 lost
  assert.equal(d.poll(505), []);
  assert.is(d.nextDeadline(505), 605 + 120);
});

chen("a lost heartbeat with α < η: SUSPECT then TRUST, no FAILURE", () => {
  const d = new ChenDetector({ etaMs: 100, alphaMs: 30, window: 10, startMs: 0 });
  d.heartbeat(1, 105);
  d.heartbeat(3, 305);
  assert.equal(d.poll(305).map((t) => [t.to, t.at]), [["SUSPECT", 235], ["TRUST", 305]]);
  assert.is(d.nextDeadline(305), 405 + 30);
});

chen("duplicate, old and replayed numbers are ignored", () => {
  const d = scripted();
  assert.not.ok(d.heartbeat(4, 430));
  assert.not.ok(d.heartbeat(2, 440));
  assert.is(d.nextDeadline(440), 540, "estimate unchanged");
  assert.is(d.state(600), "SUSPECT");
  assert.not.ok(d.heartbeat(3, 600), "a replay does not restore trust");
  assert.is(d.state(600), "SUSPECT");
  assert.not.ok(d.heartbeat(-1, 600));
  assert.not.ok(d.heartbeat(5.5, 600));
});

chen("restart: numbering starts over", () => {
  const d = scripted();
  assert.not.ok(d.heartbeat(1, 500));
  d.restart(500);
  assert.ok(d.heartbeat(1, 500));
  assert.is(d.nextDeadline(500), 630);
});

chen("a stall of the watcher: deadlines in it wait for the queued heartbeats, once per heartbeat", () => {
  // scripted: τ = 540, FAILURE at 640; the watcher stalled from 500 to 700
  const d = scripted();
  assert.ok(d.watcherPaused(500, 700, 720));
  assert.is(d.state(719), "TRUST");
  assert.is(d.nextDeadline(719), 720);
  // the heartbeat that waited in the socket is read at 705: no verdict was passed on the silence
  assert.ok(d.heartbeat(5, 705));
  assert.equal(d.poll(705), []);
  // nothing queued: both verdicts at the end of the grace, not before
  const e = scripted();
  assert.ok(e.watcherPaused(500, 700, 720));
  assert.not.ok(e.watcherPaused(700, 719, 740), "a second stall before a heartbeat moves nothing");
  assert.equal(e.poll(730).map((t) => [t.to, t.at]), [["SUSPECT", 720], ["FAILURE", 720]]);
  // a deadline before the stall stands; one after it too
  const f = scripted();
  assert.not.ok(f.watcherPaused(541, 600, 620), "SUSPECT at 540 was seen before the stall");
  assert.ok(f.watcherPaused(541, 660, 680), "FAILURE at 640 fell in the stall");
  assert.equal(f.poll(700).map((t) => [t.to, t.at]), [["SUSPECT", 540], ["FAILURE", 680]]);
  assert.not.ok(scripted().watcherPaused(400, 530, 550), "no deadline in (400, 530]");
});

chen.run();

const phi = suite("phi");

// Q⁻¹(1e-3) and Q⁻¹(1e-8) of the standard normal.
const Z3 = 3.090232306167813;
const Z8 = 5.612001244174789;

function regular(): PhiDetector {
  const d = new PhiDetector({ etaMs: 100, startMs: 0, window: 10 });
  for (let seq = 0; seq <= 5; seq++) d.heartbeat(seq, seq * 100);
  return d;
}

phi("thresholds cross where the normal quantiles say (σ floored at η/10)", () => {
  const d = regular();
  const suspectAt = 500 + 100 + 10 * Z3;
  const failAt = 500 + 100 + 10 * Z8;
  near(d.nextDeadline(500), suspectAt, 1e-6);
  assert.ok(d.phi(suspectAt - 0.01) < 3 && d.phi(suspectAt + 0.01) > 3);
  assert.ok(d.phi(failAt - 0.01) < 8 && d.phi(failAt + 0.01) > 8);
  assert.is(d.state(suspectAt - 0.01), "TRUST");
  assert.is(d.state(suspectAt + 0.01), "SUSPECT");
  near(d.nextDeadline(suspectAt + 0.01), failAt, 1e-6);
  assert.is(d.state(failAt - 0.01), "SUSPECT");
  assert.is(d.state(failAt + 0.01), "FAILURE");
  const ts = d.poll(failAt + 1);
  assert.equal(ts.map((t) => t.to), ["SUSPECT", "FAILURE"]);
  assert.equal(ts.map((t) => t.evidence.kind === "phi" && t.evidence.phi), [3, 8]);
});

phi("φ values at known points", () => {
  const d = regular();
  near(d.phi(600), Math.log10(2), 1e-9); // at the mean: 1 − F = 1/2
  near(d.phi(600 + 10 * 5), -Math.log10(2.866515718791939e-7), 1e-6);
});

phi("custom thresholds and a heartbeat returning from FAILURE", () => {
  const d = new PhiDetector({ etaMs: 100, startMs: 0, window: 10, suspectPhi: 1, failurePhi: 2 });
  for (let seq = 0; seq <= 5; seq++) d.heartbeat(seq, seq * 100);
  assert.is(d.state(700), "FAILURE");
  d.heartbeat(6, 800);
  assert.equal(d.poll(800).map((t) => t.to), ["SUSPECT", "FAILURE", "TRUST"]);
});

phi("replayed numbers are ignored", () => {
  const d = regular();
  const before = d.nextDeadline(550);
  assert.not.ok(d.heartbeat(5, 550));
  assert.not.ok(d.heartbeat(3, 560));
  assert.is(d.nextDeadline(560), before);
});

phi("rejects thresholds out of order", () => {
  assert.throws(() => new PhiDetector({ etaMs: 100, startMs: 0, suspectPhi: 8, failurePhi: 3 }));
});

phi.run();

const qos = suite("qos");

const lossy: Link = { etaMs: 100, delay: { kind: "exponential", meanMs: 10 }, lossProbability: 0.01 };
const small = (seed: number) => ({ seed, link: lossy, aliveMs: 600_000, crashTrials: 50, warmupMs: 20_000 });
const both = {
  chen: (s: number) => new ChenDetector({ etaMs: 100, alphaMs: 50, window: 100, startMs: s }),
  phi: (s: number) => new PhiDetector({ etaMs: 100, startMs: s }),
};

qos("deterministic for a seed", () => {
  const a = measureQos(small(7), both);
  assert.equal(measureQos(small(7), both), a);
  assert.not.equal(measureQos(small(8), both), a);
  assert.ok(a.chen.mistakes > 0 && a.phi.mistakes > 0, "the lossy link produces mistakes to compare");
  assert.is(a.chen.detectionMs.length, 50);
});

qos("mistakes: non-TRUST periods, cut at the end of the run", () => {
  const ev: ChenEvidence = { kind: "chen", expectedSeq: null, expectedArrivalMs: 0, freshnessPointMs: 0 };
  const t = (from: Transition["from"], to: Transition["to"], at: number): Transition => ({
    from,
    to,
    at,
    lastSeq: null,
    lastArrivalMs: null,
    evidence: ev,
  });
  const ts = [
    t("TRUST", "SUSPECT", 10),
    t("SUSPECT", "TRUST", 15),
    t("TRUST", "SUSPECT", 40),
    t("SUSPECT", "FAILURE", 50),
    t("FAILURE", "TRUST", 70),
    t("TRUST", "SUSPECT", 90),
    t("SUSPECT", "TRUST", 120),
  ];
  assert.equal(mistakes(ts, 100), [
    { startMs: 10, endMs: 15, failure: false },
    { startMs: 40, endMs: 70, failure: true },
    { startMs: 90, endMs: 100, failure: false },
  ]);
  assert.is(detectionTime(ts, 0), undefined, "does not end in FAILURE");
  assert.is(detectionTime(ts.slice(0, 4), 45), 5);
});

qos("Chen T_D lies within [η + α + min delay, 2η + α + max delay]", () => {
  const eta = 100, alpha = 50, dmin = 2, dmax = 30;
  const link: Link = { etaMs: eta, delay: { kind: "uniform", minMs: dmin, maxMs: dmax }, lossProbability: 0 };
  const r = measureQos({ seed: 3, link, aliveMs: 60_000, crashTrials: 300, warmupMs: 15_000 }, {
    chen: (s) => new ChenDetector({ etaMs: eta, alphaMs: alpha, window: 50, startMs: s }),
  }).chen;
  assert.ok(r.detectionMs[0] >= eta + alpha + dmin, `min ${r.detectionMs[0]}`);
  assert.ok(r.detectionMaxMs <= 2 * eta + alpha + dmax, `max ${r.detectionMaxMs}`);
  // the crash phase is uniform over η, so T_D spreads over most of that range
  assert.ok(r.detectionMaxMs - r.detectionMs[0] > 0.8 * eta);
});

qos("Chen T_D median ≈ η/2 + E(D) + α + η on an exponential link", () => {
  const r = measureQos({ ...small(11), crashTrials: 400 }, { chen: both.chen }).chen;
  const expected = 50 + 10 + 50 + 100;
  assert.ok(Math.abs(r.detectionMedianMs - expected) < 10, `median ${r.detectionMedianMs}`);
});

// Delays uniform in [dmin, dmin + J] with J < α: the estimate is at least dmin after the
// send, so every heartbeat beats its freshness point (no mistake at all without loss),
// and after one lost heartbeat the next beats the following one (never FAILURE).
qos("jitter below the margin never yields FAILURE (seeded traces)", () => {
  for (let seed = 1; seed <= 200; seed++) {
    const rng = mulberry32(seed);
    const eta = 20 + 180 * rng();
    const alpha = 1 + 2 * eta * rng();
    const dmin = eta * rng(); // below η: the very first heartbeat is due by start + η + α
    const jitter = 0.999 * alpha * rng();
    const link: Link = {
      etaMs: eta,
      delay: { kind: "uniform", minMs: dmin, maxMs: dmin + jitter },
      lossProbability: 0,
    };
    const window = 1 + Math.floor(50 * rng());
    const make = () => new ChenDetector({ etaMs: eta, alphaMs: alpha, window, startMs: 0 });
    // sent beyond the end, so heartbeats due by then are in flight as in a longer run
    const trace = heartbeatTrace(rng, link, 400 * eta);
    const end = 300 * eta;
    assert.equal(replay(make(), trace, end), [], `seed ${seed}: a mistake without loss`);

    const bySeq = [...trace].sort((a, b) => a.seq - b.seq);
    const isolatedLosses: Arrival[] = [];
    let lostPrevious = false;
    for (const a of bySeq) {
      const lose: boolean = !lostPrevious && rng() < 0.3;
      if (!lose) isolatedLosses.push(a);
      lostPrevious = lose;
    }
    isolatedLosses.sort((a, b) => a.arrivalMs - b.arrivalMs);
    const ts = replay(make(), isolatedLosses, end);
    assert.ok(ts.every((t) => t.to !== "FAILURE"), `seed ${seed}: FAILURE with isolated losses`);
    // the check can fail: a lost heartbeat is noticed when even the earliest next one is late
    if (alpha + jitter < eta) assert.ok(ts.length > 0, `seed ${seed}: losses went unnoticed`);
  }
});

qos.run();
