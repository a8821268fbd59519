// The configured detector in simulation (src/detector/qos.ts): on generated links of several
// delay and loss profiles, the link is first measured from heartbeats as the gateway does
// (LinkEstimator, probe round trips on the same link), the configurator derives η and α from
// the targets, and the derived detector then meets them: every crash detected within T_D^U, false
// FAILUREs no more often than T_MR^L on average and lasting at most T_M^U on average. Targets no
// setting can meet on a link are reported as such.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { configure, type QosTargets } from "../src/detector/configurator.ts";
import { ChenDetector } from "../src/detector/chen.ts";
import {
  type DelayModel,
  type Link,
  measureQos,
  mulberry32,
  simulatedEstimate,
} from "../src/detector/qos.ts";

const t = suite("configured detector, simulated");

/** The gateway's measurement: a minute of heartbeats every 100 ms and 30 probes. */
function measure(seed: number, delay: DelayModel, lossProbability: number) {
  return simulatedEstimate(mulberry32(seed), { etaMs: 100, delay, lossProbability }, 60_000)!;
}

const HOUR = 3_600_000;
const targets: QosTargets = { detectionMs: 1000, mistakeRecurrenceMs: 10 * 60_000, mistakeDurationMs: 400 };

const profiles: { name: string; delay: DelayModel; loss: number }[] = [
  { name: "LAN: exponential 1 ms, 0.1 % loss", delay: { kind: "exponential", meanMs: 1 }, loss: 0.001 },
  { name: "jittery: uniform 5–95 ms, 2 % loss", delay: { kind: "uniform", minMs: 5, maxMs: 95 }, loss: 0.02 },
  { name: "lossy: exponential 30 ms, 10 % loss", delay: { kind: "exponential", meanMs: 30 }, loss: 0.1 },
];

for (const [i, p] of profiles.entries()) {
  t(`${p.name}: the derived setting meets the targets`, () => {
    const stats = measure(100 + i, p.delay, p.loss);
    const c = configure(targets, stats.upper);
    assert.ok(c.ok, JSON.stringify(c));
    if (!c.ok) return;
    const link: Link = { etaMs: c.setting.etaMs, delay: p.delay, lossProbability: p.loss };
    const r = measureQos(
      { seed: 200 + i, link, aliveMs: 3 * HOUR, crashTrials: 300, warmupMs: 30_000 },
      {
        configured: (startMs) =>
          new ChenDetector({ etaMs: c.setting.etaMs, alphaMs: c.setting.alphaMs, window: 100, startMs }),
      },
    ).configured;
    console.log(
      `  ${p.name}: η ${c.setting.etaMs} ms, α ${c.setting.alphaMs} ms; T_D max ${
        r.detectionMaxMs.toFixed(0)
      } ms, false FAILUREs ${r.falseFailures} in 3 h, suspicions ${r.mistakes}`,
    );
    assert.ok(r.detectionMaxMs <= targets.detectionMs, `T_D ${r.detectionMaxMs} > ${targets.detectionMs}`);
    assert.ok(
      r.falseFailures <= 3 * HOUR / targets.mistakeRecurrenceMs,
      `${r.falseFailures} false FAILUREs in 3 h: more than one per ${targets.mistakeRecurrenceMs} ms`,
    );
    if (r.falseFailureDurationMs !== null) {
      assert.ok(r.falseFailureDurationMs <= targets.mistakeDurationMs, `T_M ${r.falseFailureDurationMs}`);
    }
  });
}

t("targets no setting meets on a link are reported, with the best achievable QoS", () => {
  const delay: DelayModel = { kind: "uniform", minMs: 20, maxMs: 80 };
  const stats = measure(7, delay, 0.4);
  const c = configure({ ...targets, detectionMs: 300 }, stats.upper);
  assert.not.ok(c.ok);
  if (c.ok) return;
  assert.match(c.reason, /detection within 300\.0 ms allows at best every/);
  assert.ok(c.best && c.best.predicted.detectionMs > 300);
  // the best setting holds what it predicts in simulation too
  const link: Link = { etaMs: c.best.setting.etaMs, delay, lossProbability: 0.4 };
  const r = measureQos(
    { seed: 9, link, aliveMs: HOUR, crashTrials: 100, warmupMs: 30_000 },
    {
      best: (startMs) =>
        new ChenDetector({
          etaMs: c.best!.setting.etaMs,
          alphaMs: c.best!.setting.alphaMs,
          window: 100,
          startMs,
        }),
    },
  ).best;
  assert.ok(r.detectionMaxMs <= c.best.predicted.detectionMs, `${r.detectionMaxMs}`);
  assert.ok(r.falseFailures <= HOUR / targets.mistakeRecurrenceMs);
});

t.run();
