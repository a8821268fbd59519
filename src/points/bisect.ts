// The search for the last good point (pure: the probe is the caller's). Damage such as
// ransomware or a DROP TABLE is monotonic: once a point fails the check, every later one does.
// The newest is probed first (no damage: one probe), then the points between the known-good
// one and the first failing one are bisected, so the probes are logarithmic in the points.

export interface Probe<P> {
  point: P;
  passed: boolean;
}

export interface SearchResult<P> {
  /** The latest point where the check passes. */
  lastGood: P;
  /** The earliest point where it fails (undefined: the newest passes). */
  firstBad?: P;
  probes: Probe<P>[];
}

export class SearchError extends Error {
  constructor(message: string, readonly probes: Probe<unknown>[]) {
    super(message);
    this.name = "SearchError";
  }
}

/**
 * `points`: oldest first, `points[0]` the known-good one (probed only if no later point passes).
 * `probe` resolves true when the check passes at a point; a rejection ends the search.
 */
export async function searchLastGood<P>(
  points: readonly P[],
  probe: (p: P) => Promise<boolean>,
  describe: (p: P) => string = String,
): Promise<SearchResult<P>> {
  if (points.length === 0) throw new SearchError("no points to search", []);
  const probes: Probe<P>[] = [];
  const test = async (i: number) => {
    const passed = await probe(points[i]);
    probes.push({ point: points[i], passed });
    return passed;
  };
  let hi = points.length - 1;
  if (await test(hi)) return { lastGood: points[hi], probes };
  // invariant: points[lo] passes (assumed for the known-good one), points[hi] fails
  let lo = 0;
  let loProbed = hi === 0;
  while (hi - lo > 1) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (await test(mid)) {
      lo = mid;
      loProbed = true;
    } else hi = mid;
  }
  if (!loProbed && !(await test(lo))) {
    throw new SearchError(
      `no point passes the check: even the known-good point ${describe(points[lo])} fails`,
      probes,
    );
  }
  if (hi === lo) {
    throw new SearchError(`the check fails at the only point searched, ${describe(points[lo])}`, probes);
  }
  return { lastGood: points[lo], firstBad: points[hi], probes };
}
