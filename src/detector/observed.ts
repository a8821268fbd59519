// The QoS a detector actually delivered on a link, from its transitions, in the terms of the
// targets: a false detection (mistake) is a FAILURE of a sender that then heartbeats on in the
// same boot; its duration runs to that heartbeat. A FAILURE followed by a restarted sender (a new
// boot) was a real failure: its detection time is measured from the last heartbeat's sending
// (its arrival less the mean delay), which bounds it from above since the sender stopped later.
// SUSPECT periods are counted too, as the early warnings they are. Pure.
import type { Transition } from "./types.ts";

export interface ObservedQos {
  /** How long the link has been watched. */
  watchedMs: number;
  /** False detections, their mean recurrence (watched time per mistake) and durations. */
  mistakes: number;
  mistakeRecurrenceMs: number | null;
  mistakeDurationMs: number | null;
  longestMistakeMs: number | null;
  /** Periods out of TRUST that returned to it (SUSPECT alone, or a mistake). */
  suspicions: number;
  /** Detection times of real failures (the sender restarted after them), newest last. */
  detections: { at: number; ms: number }[];
  /** A FAILURE still going on (not yet known to be real or a mistake), with its detection time so far. */
  ongoing: { since: number; detectionMs: number } | null;
}

const KEEP_DETECTIONS = 20;

export class QosObserver {
  private readonly since: number;
  private mistakes = 0;
  private mistakeTotalMs = 0;
  private longest = 0;
  private suspicions = 0;
  private detections: { at: number; ms: number }[] = [];
  /** The current FAILURE: when it began and the detection time it stands for. */
  private failure: { at: number; detectionMs: number } | undefined;
  private outOfTrust = false;

  constructor(now: number) {
    this.since = now;
  }

  /** A detector transition; `meanDelayMs`: the link's E(D) now (0 if unknown). */
  transition(t: Transition, meanDelayMs: number): void {
    if (t.from === "TRUST") this.outOfTrust = true;
    if (t.to === "FAILURE") {
      const sent = t.lastArrivalMs === null ? undefined : t.lastArrivalMs - meanDelayMs;
      this.failure = { at: t.at, detectionMs: sent === undefined ? NaN : t.at - sent };
    }
    if (t.to === "TRUST") {
      if (this.outOfTrust) this.suspicions++;
      this.outOfTrust = false;
      if (this.failure) {
        const ms = t.at - this.failure.at;
        this.mistakes++;
        this.mistakeTotalMs += ms;
        this.longest = Math.max(this.longest, ms);
        this.failure = undefined;
      }
    }
  }

  /** The sender restarted: a FAILURE it ends was a real failure, detected as measured then. */
  restarted(): void {
    if (this.failure && Number.isFinite(this.failure.detectionMs)) {
      this.detections.push({ at: this.failure.at, ms: this.failure.detectionMs });
      if (this.detections.length > KEEP_DETECTIONS) this.detections.shift();
    }
    this.failure = undefined;
    this.outOfTrust = false;
  }

  view(now: number): ObservedQos {
    const watchedMs = now - this.since;
    return {
      watchedMs,
      mistakes: this.mistakes,
      mistakeRecurrenceMs: this.mistakes ? watchedMs / this.mistakes : null,
      mistakeDurationMs: this.mistakes ? this.mistakeTotalMs / this.mistakes : null,
      longestMistakeMs: this.mistakes ? this.longest : null,
      suspicions: this.suspicions,
      detections: [...this.detections],
      ongoing: this.failure ? { since: this.failure.at, detectionMs: this.failure.detectionMs } : null,
    };
  }
}
