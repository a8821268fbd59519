// A failover drill's measurements and its grade against the task's targets. Pure.
//
// RTO: from the drill's start to the service check passing on the test copy at the remote center.
// RPO: what the copy lacks of what the local gateway held when the drill began. The copy is the
// prefix of the volume's writes through one sequence number; when that reaches the gateway's
// durable sequence at the start, nothing is missing (0); otherwise the missing writes all came
// after the copy's newest one, so the start minus that write's capture time bounds the loss from
// above (the agent's and the gateway's wall clocks compared: they are assumed synchronised).

export interface DrillMeasurement {
  /** The service check passed on the test copy. */
  serviceUp: boolean;
  /** Why it did not (the hook's or the check's error). */
  error?: string;
  rtoMs: number | null;
  rpoMs: number | null;
}

export interface DrillTargets {
  rtoMs?: number;
  rpoMs?: number;
}

export interface Grade {
  passed: boolean;
  /** Why it failed (empty when it passed). */
  reasons: string[];
  /** What was not graded (no target). */
  notes: string[];
}

/**
 * RPO of a copy through `copySeq`, whose newest write was captured at `copyTime` (0: unknown);
 * null when the copy lacks writes and the time of its newest is unknown.
 */
export function copyLag(
  o: { copySeq: number; copyTime: number; durableSeqAtStart: number; startWall: number },
): number | null {
  if (o.copySeq >= o.durableSeqAtStart) return 0;
  if (!(o.copyTime > 0)) return null;
  return Math.max(0, o.startWall - o.copyTime);
}

const secs = (ms: number) => `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;

export function gradeDrill(m: DrillMeasurement, t: DrillTargets): Grade {
  const reasons: string[] = [], notes: string[] = [];
  if (!m.serviceUp) {
    reasons.push(`the service did not come up on the test copy: ${m.error ?? "no reason given"}`);
  } else if (t.rtoMs === undefined) notes.push("no RTO target: the recovery time is not graded");
  else if (m.rtoMs !== null && m.rtoMs > t.rtoMs) {
    reasons.push(`RTO ${secs(m.rtoMs)} is above the target of ${secs(t.rtoMs)}`);
  }
  if (t.rpoMs === undefined) notes.push("no RPO target: the data loss is not graded");
  else if (m.rpoMs === null) reasons.push("the copy's point is unknown: the RPO cannot be measured");
  else if (m.rpoMs > t.rpoMs) reasons.push(`RPO ${secs(m.rpoMs)} is above the target of ${secs(t.rpoMs)}`);
  return { passed: reasons.length === 0, reasons, notes };
}
