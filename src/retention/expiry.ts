// Which of a retention log's sealed segments expire (pure). Points expire oldest first, a whole
// segment at a time: by age once its newest record is older than the window, by space while
// the log is over its bound. Space wins over time, so a full retention area never stops the
// stream: it gives up its oldest points (and says so, for an alarm).

export interface Segment {
  /** Log offsets of its first byte and past its last. */
  start: number;
  end: number;
  /** Agent time of its newest record. */
  newestTime: number;
}

export interface RetentionPolicy {
  /** Points are kept this long (ms). */
  windowMs: number;
  /** The log's bytes are kept under this. */
  maxBytes: number;
}

export interface ExpiryPlan {
  /** Fold the segments that end at or before this offset (none when it is the log's start). */
  upTo: number;
  /** How many segments. */
  segments: number;
  /** Space made points expire that the window would still keep. */
  forced: boolean;
}

/** `sealed`: the sealed segments oldest first; `total`: the log's bytes, the open segment included. */
export function planExpiry(
  sealed: readonly Segment[],
  total: number,
  policy: RetentionPolicy,
  now: number,
): ExpiryPlan {
  let upTo = sealed.length ? sealed[0].start : 0;
  let n = 0;
  let forced = false;
  let bytes = total;
  for (const s of sealed) {
    const old = s.newestTime < now - policy.windowMs;
    const over = bytes > policy.maxBytes;
    if (!old && !over) break;
    if (!old) forced = true;
    upTo = s.end;
    bytes -= s.end - s.start;
    n++;
  }
  return { upTo, segments: n, forced };
}
