// What an alarm is: a condition people must hear about (a failover, a failed drill, a site down, a
// lag above a task's RPO target, a journal near full, detector targets a link cannot meet, a
// site's retention full), raised
// when it begins and again, `resolved`, when it ends.

export const ALARM_KINDS = [
  "failover",
  "drill-failed",
  "site-down",
  "rpo-exceeded",
  "journal-near-full",
  "detector-targets-unmet",
  "retention-full",
] as const;
export type AlarmKind = typeof ALARM_KINDS[number];

export interface AlarmInput {
  kind: AlarmKind;
  severity: "critical" | "warning";
  /** What it is about: `site:dr1`, `service:web`, `task:db`, `agent:app1`, `journal`. */
  subject: string;
  /** One sentence for a person. */
  summary: string;
  detail?: Record<string, unknown>;
  /** The condition ended. */
  resolved?: boolean;
}

/** An alarm as delivered (webhook body, log, status). */
export interface AlarmEvent extends AlarmInput {
  /** Unique per event: a receiver drops a retried delivery it already has by it. */
  id: string;
  /** The gateway's site (--id). */
  site: string;
  /** Wall clock, ms since the epoch. */
  at: number;
  resolved: boolean;
}

/** Where alarms are raised. */
export type RaiseAlarm = (a: AlarmInput) => void;
