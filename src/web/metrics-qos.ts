// The /metrics families of the QoS work: per agent link the detector's targets, running setting,
// predicted and observed QoS and the link's measurement; per task its RTO/RPO targets, the lag of
// each of its sites and its last drill; the alarms on and the webhooks' deliveries. The alert
// rules in deploy/prometheus/ are written against these.
import type { Exposition } from "./metrics.ts";
import type { LinkQos, QosState } from "../failover/detector-qos.ts";
import type { PredictedQos } from "../detector/configurator.ts";
import type { AlarmsStatus } from "../alarms/alarms.ts";
import { ALARM_KINDS } from "../alarms/alarm.ts";

export const QOS_STATES: readonly QosState[] = ["fixed", "measuring", "met", "unmet", "unsupported"];

/** What the status adds for these families (read defensively, like the rest of /metrics). */
export interface QosStatusLike {
  detectorQos?: LinkQos[];
  alarms?: AlarmsStatus;
  /** Each task's targets (its own, else its service's) and sites. */
  taskTargets?: { task: string; rtoMs?: number; rpoMs?: number; sites: string[] }[];
  /** Each task's last finished drill. */
  drills?: {
    task: string;
    passed: boolean;
    rtoMs: number | null;
    rpoMs: number | null;
    finishedAt: number;
  }[];
  sites?: { site: string; lagSeconds?: number }[];
}

const s = (ms: number) => ms / 1000;

export function renderQosMetrics(x: Exposition, st: QosStatusLike): void {
  const g = (name: string, help: string) => x.family(name, "gauge", help);
  const state = g(
    "continuum_detector_qos_state",
    "QoS configuration of an agent link's detector: 1 for the current state (fixed, measuring, met, unmet, unsupported)",
  );
  const eta = g(
    "continuum_detector_eta_seconds",
    "Heartbeat period η the agent's heartbeats are judged with",
  );
  const alpha = g("continuum_detector_alpha_seconds", "Margin α after the expected arrival before SUSPECT");
  // the three QoS measures, as targets and as what the running setting guarantees
  const measures = (kind: "target" | "predicted", what: string) => {
    const f = (name: string, help: string) =>
      g(`continuum_detector_${kind}_${name}_seconds`, `${what}: ${help}`);
    const td = f("detection", "detection time (T_D), at most");
    const tmr = f("mistake_recurrence", "mean time between false detections (T_MR), at least");
    const tm = f("mistake_duration", "mean length of a false detection (T_M), at most");
    return (q: PredictedQos | null, a: Record<string, string>) => {
      if (!q) return;
      td(s(q.detectionMs), a);
      tmr(s(q.mistakeRecurrenceMs), a);
      tm(s(q.mistakeDurationMs), a);
    };
  };
  const targets = measures("target", "Target");
  const predicted = measures("predicted", "What the running setting guarantees on the measured link");
  const loss = g("continuum_detector_link_loss_ratio", "Heartbeats lost on the agent's link (estimate)");
  const delay = g("continuum_detector_link_delay_seconds", "Mean one-way heartbeat delay (estimate)");
  const dev = g("continuum_detector_link_delay_stddev_seconds", "Standard deviation of the heartbeat delay");
  const watched = g("continuum_detector_observed_seconds", "How long the link has been watched");
  const mistakes = x.family(
    "continuum_detector_false_detections_total",
    "counter",
    "False detections (FAILURE of a live agent) observed",
  );
  const mistakeLen = g(
    "continuum_detector_false_detection_duration_seconds",
    "Mean length of the observed false detections",
  );
  const detected = g(
    "continuum_detector_last_detection_seconds",
    "Detection time of the latest real failure (from its last heartbeat's sending)",
  );
  for (const l of st.detectorQos ?? []) {
    const a = { agent: l.agent };
    for (const q of QOS_STATES) state(l.state === q ? 1 : 0, { ...a, state: q });
    eta(s(l.running.etaMs), a);
    alpha(s(l.running.alphaMs), a);
    targets(l.targets, a);
    predicted(l.predicted, a);
    if (l.link) {
      loss(l.link.lossProbability, a);
      delay(s(l.link.meanDelayMs), a);
      dev(s(l.link.delayStdDevMs), a);
    }
    watched(s(l.observed.watchedMs), a);
    mistakes(l.observed.mistakes, a);
    if (l.observed.mistakeDurationMs !== null) mistakeLen(s(l.observed.mistakeDurationMs), a);
    const last = l.observed.detections.at(-1);
    if (last) detected(s(last.ms), a);
  }

  const rto = g("continuum_task_rto_target_seconds", "A task's RTO target (drills are graded against it)");
  const rpo = g("continuum_task_rpo_target_seconds", "A task's RPO target (drills, and the lag alarm)");
  const lag = g(
    "continuum_task_lag_seconds",
    "Age of the oldest record a task's remote site has not acknowledged",
  );
  const lagOf = new Map((st.sites ?? []).map((x) => [x.site, x.lagSeconds ?? 0]));
  for (const t of st.taskTargets ?? []) {
    if (t.rtoMs !== undefined) rto(s(t.rtoMs), { task: t.task });
    if (t.rpoMs !== undefined) rpo(s(t.rpoMs), { task: t.task });
    for (const site of t.sites) {
      const v = lagOf.get(site);
      if (v !== undefined) lag(v, { task: t.task, site });
    }
  }

  const passed = g(
    "continuum_drill_last_passed",
    "1 if the task's last failover drill passed its grade, 0 if it failed",
  );
  const dRto = g("continuum_drill_last_rto_seconds", "RTO measured by the task's last drill");
  const dRpo = g("continuum_drill_last_rpo_seconds", "RPO measured by the task's last drill");
  const when = g("continuum_drill_last_timestamp_seconds", "When the task's last drill finished (Unix time)");
  for (const d of st.drills ?? []) {
    const a = { task: d.task };
    passed(d.passed ? 1 : 0, a);
    if (d.rtoMs !== null) dRto(s(d.rtoMs), a);
    if (d.rpoMs !== null) dRpo(s(d.rpoMs), a);
    when(s(d.finishedAt), a);
  }

  const on = g("continuum_alarms_active", "Alarms raised and not resolved, by kind");
  for (const k of ALARM_KINDS) on((st.alarms?.active ?? []).filter((a) => a.kind === k).length, { kind: k });
  const delivered = x.family(
    "continuum_alarm_webhook_delivered_total",
    "counter",
    "Alarms delivered to a webhook",
  );
  const failed = x.family(
    "continuum_alarm_webhook_failures_total",
    "counter",
    "Failed attempts to deliver an alarm",
  );
  const pending = g("continuum_alarm_webhook_pending", "Alarms waiting for delivery to a webhook");
  for (const w of st.alarms?.webhooks ?? []) {
    const a = { url: w.url };
    delivered(w.delivered, a);
    failed(w.failed, a);
    pending(w.pending, a);
  }
}
