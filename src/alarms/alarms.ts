// The local gateway's alarms: raised by the failover drills and the detector's QoS configuration,
// and found every second in the status (conditions.ts). Each is logged, written to the audit log
// and sent to the webhooks; the ones still on (not resolved) are kept for the status and /metrics.
import { logger } from "../log.ts";
import type { Audit } from "../audit/audit.ts";
import type { AlarmEvent, AlarmInput } from "./alarm.ts";
import {
  type ConditionOptions,
  type ConditionSnapshot,
  type ConditionState,
  evaluateConditions,
} from "./conditions.ts";
import type { Webhooks, WebhookStatus } from "./webhooks.ts";

const log = logger("alarms");
const RECENT = 50;

export interface AlarmsOptions {
  /** This gateway's site (--id), in every event. */
  site: string;
  webhooks?: Webhooks;
  audit?: Audit;
  intervalMs?: number;
  conditions?: ConditionOptions;
}

export interface AlarmsStatus {
  active: AlarmEvent[];
  recent: AlarmEvent[];
  webhooks: WebhookStatus[];
}

export class Alarms {
  private readonly recentEvents: AlarmEvent[] = [];
  private readonly on = new Map<string, AlarmEvent>();
  private state: ConditionState | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  private busy = false;

  constructor(private readonly o: AlarmsOptions) {}

  raise(a: AlarmInput): AlarmEvent {
    const e: AlarmEvent = {
      ...a,
      resolved: a.resolved === true,
      id: crypto.randomUUID(),
      site: this.o.site,
      at: Date.now(),
    };
    const fields = { alarm: e.kind, subject: e.subject, id: e.id, ...e.detail };
    if (e.resolved) log.info(`alarm resolved: ${e.summary}`, fields);
    else if (e.severity === "critical") log.error(`alarm: ${e.summary}`, fields);
    else log.warn(`alarm: ${e.summary}`, fields);
    const key = `${e.kind} ${e.subject}`;
    if (e.resolved) this.on.delete(key);
    else this.on.set(key, e);
    this.recentEvents.push(e);
    if (this.recentEvents.length > RECENT) this.recentEvents.shift();
    this.o.audit?.record({
      subject: e.subject,
      kind: "alarm",
      to: e.resolved ? "resolved" : e.severity,
      cause: e.summary,
      detail: { alarm: e.kind, id: e.id, ...e.detail },
    });
    this.o.webhooks?.deliver(e);
    return e;
  }

  /** Reads the conditions from `snapshot` every interval. */
  watch(snapshot: () => Promise<ConditionSnapshot>): void {
    this.timer = setInterval(() => {
      if (this.busy) return;
      this.busy = true;
      this.check(snapshot).catch((e) => log.warn("cannot read the alarm conditions", { error: e }))
        .finally(() => this.busy = false);
    }, this.o.intervalMs ?? 1000);
  }

  private async check(snapshot: () => Promise<ConditionSnapshot>): Promise<void> {
    const snap = await snapshot();
    const r = evaluateConditions(this.state, snap, performance.now(), this.o.conditions);
    this.state = r.state;
    for (const a of r.alarms) this.raise(a);
  }

  status(): AlarmsStatus {
    return {
      active: [...this.on.values()],
      recent: [...this.recentEvents],
      webhooks: this.o.webhooks?.status() ?? [],
    };
  }

  close(): void {
    clearInterval(this.timer);
    this.o.webhooks?.close();
  }
}
