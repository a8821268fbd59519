// The /metrics families of the QoS work, from a status: an agent link's state, setting, targets,
// prediction, measurement and observations; a task's targets, lags and last drill; the alarms.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Exposition } from "../src/web/metrics.ts";
import { renderQosMetrics } from "../src/web/metrics-qos.ts";
import type { LinkQos } from "../src/failover/detector-qos.ts";

const t = suite("qos metrics");

function samples(text: string): Map<string, number> {
  return new Map(
    text.split("\n").filter((l) => l && !l.startsWith("#")).map((l) => {
      const i = l.lastIndexOf(" ");
      return [l.slice(0, i), Number(l.slice(i + 1))];
    }),
  );
}

t("every family from a status", () => {
  const link: LinkQos = {
    agent: "a1",
    mode: "chen",
    state: "met",
    reason: null,
    targets: { detectionMs: 1500, mistakeRecurrenceMs: 600_000, mistakeDurationMs: 1000 },
    targetsFrom: ["task db"],
    running: { etaMs: 300, alphaMs: 800 },
    derived: null,
    predicted: { detectionMs: 1450, mistakeRecurrenceMs: 700_000, mistakeDurationMs: 320 },
    best: null,
    link: {
      lossProbability: 0.01,
      meanDelayMs: 20,
      delayVarianceMs2: 100,
      delayStdDevMs: 10,
      upper: { lossProbability: 0.02, meanDelayMs: 21, delayVarianceMs2: 120 },
      samples: 100,
      expected: 101,
      rttMinMs: 30,
    },
    observed: {
      watchedMs: 60_000,
      mistakes: 1,
      mistakeRecurrenceMs: 60_000,
      mistakeDurationMs: 400,
      longestMistakeMs: 400,
      suspicions: 3,
      detections: [{ at: 1, ms: 1200 }],
      ongoing: null,
    },
  };
  const x = new Exposition();
  renderQosMetrics(x, {
    detectorQos: [link],
    sites: [{ site: "dr1", lagSeconds: 7 }],
    taskTargets: [{ task: "db", rtoMs: 60_000, rpoMs: 5000, sites: ["dr1"] }],
    drills: [{ task: "db", passed: false, rtoMs: 2000, rpoMs: null, finishedAt: 1_700_000_000_000 }],
    alarms: {
      active: [{
        kind: "drill-failed",
        severity: "critical",
        subject: "task:db",
        summary: "x",
        id: "1",
        site: "prod",
        at: 0,
        resolved: false,
      }],
      recent: [],
      webhooks: [{ url: "https://h/hook", delivered: 4, failed: 1, pending: 0, lastError: null }],
    },
  });
  const m = samples(x.text());
  const a = '{agent="a1"}';
  assert.is(m.get('continuum_detector_qos_state{agent="a1",state="met"}'), 1);
  assert.is(m.get('continuum_detector_qos_state{agent="a1",state="unmet"}'), 0);
  assert.is(m.get(`continuum_detector_eta_seconds${a}`), 0.3);
  assert.is(m.get(`continuum_detector_alpha_seconds${a}`), 0.8);
  assert.is(m.get(`continuum_detector_target_detection_seconds${a}`), 1.5);
  assert.is(m.get(`continuum_detector_target_mistake_recurrence_seconds${a}`), 600);
  assert.is(m.get(`continuum_detector_predicted_mistake_duration_seconds${a}`), 0.32);
  assert.is(m.get(`continuum_detector_link_loss_ratio${a}`), 0.01);
  assert.is(m.get(`continuum_detector_link_delay_stddev_seconds${a}`), 0.01);
  assert.is(m.get(`continuum_detector_false_detections_total${a}`), 1);
  assert.is(m.get(`continuum_detector_last_detection_seconds${a}`), 1.2);
  assert.is(m.get('continuum_task_rpo_target_seconds{task="db"}'), 5);
  assert.is(m.get('continuum_task_lag_seconds{task="db",site="dr1"}'), 7);
  assert.is(m.get('continuum_drill_last_passed{task="db"}'), 0);
  assert.is(m.get('continuum_drill_last_rpo_seconds{task="db"}'), undefined, "not measured: no sample");
  assert.is(m.get('continuum_alarms_active{kind="drill-failed"}'), 1);
  assert.is(m.get('continuum_alarms_active{kind="site-down"}'), 0);
  assert.is(m.get('continuum_alarm_webhook_failures_total{url="https://h/hook"}'), 1);
});

t.run();
