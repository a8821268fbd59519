// The detector's QoS configuration at the local gateway, per agent link. Each heartbeat feeds the
// link's measurement (src/detector/link-estimator.ts; a probe a second gives the round trip); every
// few seconds the agent's targets (its tasks' and --service's, the strictest of each) and the
// link's upper-bound statistics go through the configurator. A derived period within a fifth of
// the running one is not taken while the running one still meets the targets on the link as
// measured now, with a slack of 5 % on its loss and delay variance (keepPeriod in
// src/detector/configurator.ts): the running period stays and only the margin is fitted to the
// link (a new period means measuring the link anew); a new period is taken when none runs yet,
// when the link drifted further, or when the targets became (un)meetable. The margin the gateway's
// reaction needs includes how late its timers fired over the last minute. The agent is told its
// period over its control link (again every 2 s until its heartbeats report it); its heartbeats
// are judged with the margin derived for the period they report. When no setting meets the
// targets the best achievable one runs, the state says `unmet` with the reason, and an alarm is
// raised. Fixed η/α (no targets) and φ mode stay as they were, measured and observed all the same.
import { logger } from "../log.ts";
import type { Audit } from "../audit/audit.ts";
import {
  configure,
  DEFAULT_HYSTERESIS,
  DEFAULT_LIMITS,
  type DetectorSetting,
  keepPeriod,
  type Limits,
  type PredictedQos,
  predictQos,
  type QosTargets,
  stillMeets,
} from "../detector/configurator.ts";
import {
  DEFAULT_ESTIMATOR,
  type EstimatorOptions,
  type LinkEstimate,
  LinkEstimator,
} from "../detector/link-estimator.ts";
import { type ObservedQos, QosObserver } from "../detector/observed.ts";
import type { Transition } from "../detector/types.ts";
import type { HeartbeatMeta } from "../heartbeat/channel.ts";
import type { RaiseAlarm } from "../alarms/alarm.ts";

const log = logger("detector-qos");

/** An agent's targets and where they come from (`task db`, `service web`). */
export interface TargetSource {
  targets: QosTargets;
  from: string[];
}

/** The strictest of two sets of targets: each bound at its tightest. */
export function strictest(a: TargetSource | undefined, b: TargetSource): TargetSource {
  if (!a) return b;
  return {
    targets: {
      detectionMs: Math.min(a.targets.detectionMs, b.targets.detectionMs),
      mistakeRecurrenceMs: Math.max(a.targets.mistakeRecurrenceMs, b.targets.mistakeRecurrenceMs),
      mistakeDurationMs: Math.min(a.targets.mistakeDurationMs, b.targets.mistakeDurationMs),
    },
    from: [...a.from, ...b.from],
  };
}

export type QosState = "fixed" | "measuring" | "met" | "unmet" | "unsupported";

export interface DetectorQosOptions {
  mode: "chen" | "phi";
  /** The flags' η and α: heartbeats that do not report their period, and agents without targets. */
  fixed: DetectorSetting;
  /** Targets per agent, read at every derivation. */
  targets: () => Promise<Map<string, TargetSource>>;
  /** Tells an agent its heartbeat period over its control link; false when it is not connected. */
  order: (agent: string, etaMs: number) => boolean;
  /** Sends a probe to a heartbeat's source address. */
  probe: (peer: string, nonce: bigint) => void;
  audit?: Audit;
  alarm?: RaiseAlarm;
  limits?: Partial<Limits>;
  estimator?: EstimatorOptions;
  /** How often the settings are derived again, and the link probed. */
  deriveEveryMs?: number;
  probeEveryMs?: number;
  clock?: () => number;
}

interface Link {
  agent: string;
  estimator: LinkEstimator;
  observed: QosObserver;
  peer?: string;
  /** The period the agent's heartbeats report (or the flag's when they do not). */
  reportedEta?: number;
  targets?: TargetSource;
  state: QosState;
  reason: string | null;
  /** The setting the configurator chose last, what it predicted then and the link it saw. */
  derived?: { setting: DetectorSetting; predicted: PredictedQos; link: LinkEstimate; at: number };
  best: { setting: DetectorSetting; predicted: PredictedQos } | null;
  /** α for heartbeats sent at each derived period. */
  alphaFor: Map<number, number>;
  /** The period the agent is to send at; undefined: whatever it sends (no order given). */
  wantedEta?: number;
  lastOrder: number;
  probes: Map<bigint, number>;
  lastProbe: number;
}

/** One link as the status, /metrics and the UI show it. */
export interface LinkQos {
  agent: string;
  mode: "chen" | "phi";
  state: QosState;
  reason: string | null;
  targets: QosTargets | null;
  targetsFrom: string[];
  /** The setting judging the agent's heartbeats now. */
  running: DetectorSetting;
  /** The derived one (it runs once the agent's heartbeats come at its period), and what it promised then. */
  derived: (DetectorSetting & { at: number; predicted: PredictedQos }) | null;
  /** What the running setting guarantees on the link as measured now (upper bounds of its statistics). */
  predicted: PredictedQos | null;
  /** When the targets cannot be met: the best setting's guarantees. */
  best: { setting: DetectorSetting; predicted: PredictedQos } | null;
  link: (LinkEstimate & { delayStdDevMs: number }) | null;
  observed: ObservedQos;
}

const DRIFT = DEFAULT_HYSTERESIS.drift;
const TICK_MS = 250;

export class DetectorQos {
  private readonly links = new Map<string, Link>();
  private readonly clock: () => number;
  private readonly limits: Limits;
  private timer: ReturnType<typeof setInterval> | undefined;
  private deriving = false;
  private lastDerive = -Infinity;
  /** How late this process's timers fired over the last minute: the detector's polls are as late. */
  private lags: number[] = [];
  private lastTick: number | undefined;

  constructor(private readonly o: DetectorQosOptions) {
    this.clock = o.clock ?? (() => performance.now());
    this.limits = { ...DEFAULT_LIMITS, ...o.limits };
  }

  start(): void {
    this.timer = setInterval(() => this.tick(), TICK_MS);
  }

  close(): void {
    clearInterval(this.timer);
  }

  /**
   * A heartbeat arrived (before the detector sees it): measures the link and answers the setting
   * its detector must judge it with.
   */
  heartbeat(agent: string, seq: number, now: number, meta: HeartbeatMeta): DetectorSetting {
    let l = this.links.get(agent);
    if (!l) {
      l = {
        agent,
        estimator: new LinkEstimator(this.o.estimator ?? DEFAULT_ESTIMATOR),
        observed: new QosObserver(now),
        state: "measuring",
        reason: null,
        best: null,
        alphaFor: new Map(),
        lastOrder: -Infinity,
        probes: new Map(),
        lastProbe: -Infinity,
      };
      this.links.set(agent, l);
    } else if (meta.newBoot) {
      // a restarted agent sends at its own flag again: measure anew, tell it its period again
      l.estimator.reset();
      l.observed.restarted();
      l.lastOrder = -Infinity;
    }
    l.peer = meta.peer;
    const eta = meta.intervalMs ?? this.o.fixed.etaMs;
    l.reportedEta = eta;
    l.estimator.heartbeat(seq, now, eta);
    if (meta.echo) {
      const sent = l.probes.get(meta.echo.nonce);
      if (sent !== undefined) {
        l.probes.delete(meta.echo.nonce);
        l.estimator.roundTrip(now - sent - meta.echo.holdMs);
      }
    }
    return this.settingFor(l, eta);
  }

  /** A detector transition of an agent (for the observed QoS). */
  transition(agent: string, t: Transition): void {
    const l = this.links.get(agent);
    l?.observed.transition(t, l.estimator.estimate()?.meanDelayMs ?? 0);
  }

  status(): LinkQos[] {
    const now = this.clock();
    return [...this.links.values()].map((l) => {
      const est = l.estimator.estimate();
      const running = this.settingFor(l, l.reportedEta ?? this.o.fixed.etaMs);
      return {
        agent: l.agent,
        mode: this.o.mode,
        state: l.state,
        reason: l.reason,
        targets: l.targets?.targets ?? null,
        targetsFrom: l.targets?.from ?? [],
        running,
        derived: l.derived
          ? { ...l.derived.setting, at: l.derived.at, predicted: l.derived.predicted }
          : null,
        predicted: est && this.o.mode === "chen"
          ? predictQos(est.upper, running, this.currentLimits())
          : null,
        best: l.best,
        link: est ? { ...est, delayStdDevMs: Math.sqrt(est.delayVarianceMs2) } : null,
        observed: l.observed.view(now),
      };
    });
  }

  private settingFor(l: Link, eta: number): DetectorSetting {
    const alpha = l.alphaFor.get(eta);
    return { etaMs: eta, alphaMs: alpha ?? this.o.fixed.alphaMs };
  }

  /** The limits, the reaction including the timers' lateness seen lately. */
  private currentLimits(): Limits {
    const lag = Math.min(TICK_MS, Math.max(0, ...this.lags));
    return { ...this.limits, reactionMs: this.limits.reactionMs + lag };
  }

  private tick(): void {
    const now = this.clock();
    if (this.lastTick !== undefined) {
      this.lags.push(Math.max(0, now - this.lastTick - TICK_MS));
      if (this.lags.length > 60_000 / TICK_MS) this.lags.shift();
    }
    this.lastTick = now;
    const every = this.o.probeEveryMs ?? 1000;
    for (const l of this.links.values()) {
      if (l.peer && now - l.lastProbe >= every) {
        l.lastProbe = now;
        for (const [n, at] of l.probes) if (now - at > 10_000) l.probes.delete(n);
        const nonce = crypto.getRandomValues(new BigUint64Array(1))[0] || 1n;
        l.probes.set(nonce, now);
        this.o.probe(l.peer, nonce);
      }
      if (l.wantedEta !== undefined && l.reportedEta !== l.wantedEta && now - l.lastOrder >= 2000) {
        l.lastOrder = now;
        this.o.order(l.agent, l.wantedEta);
      }
    }
    if (!this.deriving && now - this.lastDerive >= (this.o.deriveEveryMs ?? 5000)) {
      this.deriving = true;
      this.lastDerive = now;
      this.deriveAll().catch((e) => log.warn("cannot derive the detector settings", { error: e }))
        .finally(() => this.deriving = false);
    }
  }

  private async deriveAll(): Promise<void> {
    const targets = await this.o.targets();
    for (const l of this.links.values()) this.derive(l, targets.get(l.agent));
  }

  private derive(l: Link, targets: TargetSource | undefined): void {
    l.targets = targets;
    if (!targets || this.o.mode !== "chen") {
      const wasConfigured = l.wantedEta !== undefined;
      this.setState(
        l,
        targets ? "unsupported" : "fixed",
        targets
          ? "the φ accrual detector has no QoS configuration: targets apply with --detector chen"
          : null,
      );
      if (wasConfigured) {
        // targets removed: back to the flags' period and margin
        l.alphaFor.clear();
        l.derived = undefined;
        l.best = null;
        l.wantedEta = this.o.fixed.etaMs;
      }
      return;
    }
    const est = l.estimator.estimate();
    if (!est) {
      if (l.state !== "met" && l.state !== "unmet") {
        this.setState(l, "measuring", "measuring the link: waiting for heartbeats and a probe's echo");
      }
      return;
    }
    const limits = this.currentLimits();
    const c = configure(targets.targets, est.upper, limits);
    l.best = c.ok ? null : c.best;
    const state: QosState = c.ok ? "met" : "unmet";
    const reason = c.ok ? null : c.reason;
    let chosen = c.ok ? c : c.best;
    if (!chosen) {
      this.setState(l, state, `${reason}; no setting keeps false detections that rare on this link`);
      return;
    }
    const cur = l.derived?.setting;
    // hysteresis: a period within a fifth of the running one stays while the running one still
    // meets the targets on the link as measured, with a slack of 5 % on its loss and delay variance:
    // only the margin follows the link, which is not measured anew (that starts over with every new
    // period); see keepPeriod
    const near = cur !== undefined && Math.abs(chosen.setting.etaMs - cur.etaMs) <= DRIFT * cur.etaMs;
    const kept = cur && c.ok
      ? keepPeriod(targets.targets, est.upper, cur.etaMs, chosen.setting.etaMs, limits)
      : undefined;
    if (kept) chosen = kept;
    const margin = (x: DetectorSetting) => x.alphaMs + x.etaMs;
    const adopt = !cur || state !== l.state ||
      (kept
        ? !stillMeets(targets.targets, est.upper, cur, limits) ||
          Math.abs(margin(kept.setting) - margin(cur)) > 0.05 * margin(cur)
        : c.ok || !near || Math.abs(margin(chosen.setting) - margin(cur)) > DRIFT * margin(cur));
    if (adopt) {
      l.derived = { setting: chosen.setting, predicted: chosen.predicted, link: est, at: Date.now() };
      l.alphaFor.set(chosen.setting.etaMs, chosen.setting.alphaMs);
      l.wantedEta = chosen.setting.etaMs;
      l.lastOrder = -Infinity;
      const what = `η ${chosen.setting.etaMs} ms, α ${chosen.setting.alphaMs} ms`;
      this.o.audit?.record({
        subject: `agent:${l.agent}`,
        kind: "detector-qos",
        to: state,
        cause: !c.ok
          ? `the targets cannot be met (${reason}): running the best setting, ${what}`
          : cur && chosen.setting.etaMs === cur.etaMs
          ? `detector margin fitted to the link: ${what}`
          : `detector settings derived from the targets: ${what}`,
        detail: {
          targets: targets.targets,
          from: targets.from,
          setting: chosen.setting,
          predicted: chosen.predicted,
          link: est,
          reactionMs: limits.reactionMs,
        },
      });
    }
    this.setState(l, state, reason);
  }

  private setState(l: Link, state: QosState, reason: string | null): void {
    const was = l.state;
    l.state = state;
    l.reason = reason;
    if (state === "unmet" && was !== "unmet") {
      this.o.alarm?.({
        kind: "detector-targets-unmet",
        severity: "warning",
        subject: `agent:${l.agent}`,
        summary: `the detector targets of agent ${l.agent} cannot be met on its link: ${reason}`,
        detail: { agent: l.agent, targets: l.targets?.targets, best: l.best },
      });
    } else if (was === "unmet" && state !== "unmet") {
      this.o.alarm?.({
        kind: "detector-targets-unmet",
        severity: "warning",
        subject: `agent:${l.agent}`,
        summary: `the detector targets of agent ${l.agent} are met again`,
        detail: { agent: l.agent, state },
        resolved: true,
      });
    }
  }
}
