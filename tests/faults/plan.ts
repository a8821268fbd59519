// The fault-injection runner's pure logic (no processes, no I/O): a seeded PRNG,
// the fault kinds, the scenario list of each profile, and the invariant checks over
// what the verifying writer recorded and what an image holds. Unit-tested in
// tests/unit-faults-plan.test.ts; the runner (tests/faults/run.ts) only executes it.

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)];
  }
  /** A derived generator (for one scenario), independent of how many numbers the parent drew later. */
  fork(salt: number): Rng {
    return new Rng((this.s ^ Math.imul(salt + 1, 0x9e3779b1)) >>> 0);
  }
}

/** Faults injected on the replication topology (real processes on loopback, tmpfs, a TCP proxy). */
export const CLUSTER_FAULTS = [
  "kill-agent",
  "kill-local-gateway",
  "kill-remote-gateway",
  "kill-standby",
  "cut",
  "delay",
  "loss",
  "journal-full",
  "replica-full",
  "corrupt-site-frame",
  "corrupt-agent-frame",
] as const;

/**
 * Faults injected in the failover lab (network namespaces, iptables, a UDP impairment relay, and
 * libfaketime under the agent and both gateways for the clock steps of one of them).
 */
export const LAB_FAULTS = [
  "hb-impair",
  "lab-cut",
  "lab-kill-remote-gateway",
  "lab-kill-local-gateway",
  "clock-jump-agent",
  "clock-jump-local-gateway",
  "clock-jump-remote-gateway",
  "host-failure",
] as const;

export type ClusterFault = typeof CLUSTER_FAULTS[number];
export type LabFault = typeof LAB_FAULTS[number];
export type FaultKind = ClusterFault | LabFault;

/** Fault kinds of the issue that cannot be injected here, with the reason (printed in the summary). */
export const NOT_INJECTABLE: Record<string, string> = {
  "netem": "the kernel has no sch_netem (`tc qdisc add ... netem` fails: unknown qdisc): delay, loss and " +
    "reordering are made by the runner's TCP proxy (site link) and UDP relay (heartbeats) instead",
};

/** Lab faults whose nature is to be above the detector's margin: a failover is expected there. */
export const EXPECTS_FAILOVER: ReadonlySet<FaultKind> = new Set<FaultKind>(["host-failure"]);

export interface FaultAt {
  kind: FaultKind;
  /** ms after the workload started. */
  atMs: number;
  /** how long the fault is held before it is healed (ms); 0 for instantaneous faults. */
  holdMs: number;
  /** kind-specific seeded parameters. */
  params: Record<string, number>;
}

export interface Scenario {
  id: number;
  phase: "cluster" | "lab";
  faults: FaultAt[];
  /** ms of workload before the first fault. */
  warmupMs: number;
  /** ms of workload after the last heal. */
  tailMs: number;
  seed: number;
}

export interface Profile {
  name: string;
  /** Scenarios with one fault: each cluster kind this many times. */
  singlesPerKind: number;
  /** Additional scenarios combining two or three cluster faults. */
  combos: number;
  /** Lab scenarios: each lab kind this many times (host-failure once, last). */
  labPerKind: number;
  /** Scale of hold times (1 = CI). */
  holdScale: number;
  /**
   * Writes per second of the lab's writer (0: full speed). At full speed on a loaded 2-core machine the
   * agent's heartbeats can arrive later than the detector's margin (the open finding in
   * docs/reliability.md); the CI profile paces the lab's writer, the long profile does not.
   */
  labWriteRate: number;
}

export const PROFILES: Record<string, Profile> = {
  ci: { name: "ci", singlesPerKind: 2, combos: 2, labPerKind: 1, holdScale: 1, labWriteRate: 1000 },
  long: { name: "long", singlesPerKind: 6, combos: 20, labPerKind: 4, holdScale: 3, labWriteRate: 0 },
};

function faultParams(
  kind: FaultKind,
  r: Rng,
  scale: number,
): { holdMs: number; params: Record<string, number> } {
  switch (kind) {
    case "kill-agent":
    case "kill-local-gateway":
    case "kill-remote-gateway":
    case "kill-standby":
    case "lab-kill-remote-gateway":
    case "lab-kill-local-gateway":
      // down time before the restart
      return { holdMs: r.int(100, 1200) * scale, params: {} };
    case "cut":
    case "lab-cut":
      return { holdMs: r.int(500, 2500) * scale, params: {} };
    case "delay":
      return {
        holdMs: r.int(1000, 2500) * scale,
        params: { delayMs: r.int(20, 120), jitterMs: r.int(0, 60) },
      };
    case "loss":
      // TCP turns loss into retransmission stalls: short, seeded stalls of the site link
      return {
        holdMs: r.int(1000, 2500) * scale,
        params: { stallMs: r.int(50, 400), everyMs: r.int(200, 600) },
      };
    case "journal-full":
    case "replica-full":
      return { holdMs: r.int(800, 2000) * scale, params: {} };
    case "corrupt-site-frame":
    case "corrupt-agent-frame":
      return { holdMs: 0, params: { count: r.int(1, 3) } };
    case "hb-impair":
      // below the margin (η 100 ms, α 200 ms): delay ± jitter (reorders), loss of at most one in a row
      return {
        holdMs: r.int(2000, 4000) * scale,
        params: { delayMs: r.int(5, 40), jitterMs: r.int(10, 60), lossPct: r.int(5, 25) },
      };
    case "clock-jump-agent":
    case "clock-jump-local-gateway":
    case "clock-jump-remote-gateway":
      // the process's wall clock steps by offsetS (30 s to 15 min, forward or back: beyond the heartbeat
      // boot check's 5 min for some), stays there for the hold, then steps back (the opposite jump)
      return {
        holdMs: r.int(2000, 4000) * scale,
        params: { offsetS: (r.next() < 0.5 ? -1 : 1) * r.int(30, 900) },
      };
    case "host-failure":
      return { holdMs: 0, params: {} };
  }
}

/** The scenario list of a profile for a seed: the same seed gives the same list. */
export function planScenarios(profile: Profile, seed: number): Scenario[] {
  const root = new Rng(seed);
  const out: Scenario[] = [];
  const kinds: ClusterFault[] = [];
  for (let i = 0; i < profile.singlesPerKind; i++) kinds.push(...CLUSTER_FAULTS);
  // seeded order (Fisher–Yates)
  for (let i = kinds.length - 1; i > 0; i--) {
    const j = Math.floor(root.next() * (i + 1));
    [kinds[i], kinds[j]] = [kinds[j], kinds[i]];
  }
  const mk = (phase: "cluster" | "lab", ks: FaultKind[]): Scenario => {
    const id = out.length + 1;
    const r = root.fork(id);
    const warmupMs = r.int(300, 1200);
    let at = warmupMs;
    const faults: FaultAt[] = [];
    for (const kind of ks) {
      const { holdMs, params } = faultParams(kind, r, profile.holdScale);
      faults.push({ kind, atMs: at, holdMs, params });
      at += holdMs + r.int(200, 800);
    }
    return { id, phase, faults, warmupMs, tailMs: r.int(300, 1000), seed: r.int(1, 2 ** 31 - 1) };
  };
  for (const k of kinds) out.push(mk("cluster", [k]));
  for (let i = 0; i < profile.combos; i++) {
    const n = root.int(2, 3);
    const ks = new Set<ClusterFault>();
    while (ks.size < n) ks.add(root.pick(CLUSTER_FAULTS));
    out.push(mk("cluster", [...ks]));
  }
  const lab: LabFault[] = [];
  for (let i = 0; i < profile.labPerKind; i++) lab.push(...LAB_FAULTS.filter((k) => k !== "host-failure"));
  for (let i = lab.length - 1; i > 0; i--) {
    const j = Math.floor(root.next() * (i + 1));
    [lab[i], lab[j]] = [lab[j], lab[i]];
  }
  for (const k of lab) out.push(mk("lab", [k]));
  // a real failure last: the detector must switch, and the DNAT rule must be exactly the recorded one
  out.push(mk("lab", ["host-failure"]));
  return out;
}

// ---------------------------------------------------------------------------------------------
// What the verifying writer records, and the checks over it

/**
 * The writer's log of one scenario. Write i (1-based) went to block blocks[i] (relative to the
 * scenario's region) and stamps i into its block. A write is `acked` when the server answered it
 * without error; `durable` when a FLUSH sent after its acknowledgement completed, or it was a
 * FUA write that completed. Writes never answered or answered with an error are indeterminate:
 * they may or may not be in the agent's sequence.
 */
export interface WriteLog {
  blocks: number[];
  acked: Set<number>;
  durable: Set<number>;
  failed: Set<number>;
}

export function newWriteLog(): WriteLog {
  return { blocks: [0], acked: new Set(), durable: new Set(), failed: new Set() };
}

/** Which write index each block of an image region holds (0: zero block; -1: foreign content). */
export type BlockStamps = number[];

/** The result of checking a copy against the sequence: the prefix length K, or why there is none. */
export type PrefixResult = { k: number } | { error: string };

/**
 * Is the region a prefix of the write sequence? Some K explains every block: each holds the
 * last write to it among 1..K, where writes that were never acknowledged (indeterminate) count
 * only when visible (they may have been sequenced or not; one that was sequenced and
 * overwritten leaves the same state as one that was not).
 */
export function checkPrefix(stamps: BlockStamps, log: WriteLog): PrefixResult {
  const n = log.blocks.length - 1;
  for (let b = 0; b < stamps.length; b++) {
    const s = stamps[b];
    if (s < 0 || s > n || (s > 0 && log.blocks[s] !== b)) {
      return {
        error: `block ${b} holds ${s < 0 ? "foreign content" : `write ${s}`}, which never went there`,
      };
    }
  }
  const k = Math.max(0, ...stamps);
  const last = new Array<number>(stamps.length).fill(0);
  for (let i = 1; i <= k; i++) {
    const b = log.blocks[i];
    const optional = !log.acked.has(i);
    if (optional && stamps[b] !== i) continue; // not sequenced, or overwritten: either way invisible
    last[b] = i;
  }
  for (let b = 0; b < stamps.length; b++) {
    if (last[b] !== stamps[b]) {
      return { error: `block ${b} holds write ${stamps[b]} but writes up to ${k} end with ${last[b]} there` };
    }
  }
  return { k };
}

/**
 * Durable writes lost: blocks whose content is older than the last durable write to them (or is
 * not a write to that block at all). Returns the count of such blocks.
 */
export function lostDurable(stamps: BlockStamps, log: WriteLog): number {
  const lastDurable = new Array<number>(stamps.length).fill(0);
  for (const i of log.durable) {
    const b = log.blocks[i];
    if (i > lastDurable[b]) lastDurable[b] = i;
  }
  let lost = 0;
  for (let b = 0; b < stamps.length; b++) {
    if (lastDurable[b] === 0) continue;
    const s = stamps[b];
    if (s < lastDurable[b] || log.blocks[s] !== b) lost++;
  }
  return lost;
}

/** Reads the stamps of a region from image bytes: the u32 at the start of each 4 KiB block. */
export function stampsOf(region: Uint8Array, tag: number): BlockStamps {
  const n = region.length / 4096;
  const out: BlockStamps = new Array(n);
  const v = new DataView(region.buffer, region.byteOffset, region.byteLength);
  for (let b = 0; b < n; b++) {
    const at = b * 4096;
    let zero = true;
    for (let i = 0; i < 4096; i += 8) {
      if (v.getUint32(at + i, true) !== 0 || v.getUint32(at + i + 4, true) !== 0) {
        zero = false;
        break;
      }
    }
    if (zero) out[b] = 0;
    else if (v.getUint32(at + 4, true) !== tag || v.getUint32(at, true) === 0) out[b] = -1;
    else out[b] = v.getUint32(at, true);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Figures and the verdict

export interface ScenarioFigures {
  id: number;
  phase: "cluster" | "lab";
  faults: string;
  writes: number;
  durable: number;
  /** durable (FLUSH/FUA-acknowledged) writes lost, summed over every copy checked */
  lost: number;
  /** checks of a copy against the sequence (during the fault and after convergence) */
  prefixChecks: number;
  /** of which not a prefix */
  notPrefix: number;
  /** copies that must converge, and how many did */
  copies: number;
  converged: number;
  convergeMs: number;
  /** failovers the detector started although the fault was below its margin */
  falseFailovers: number;
  /** with host-failure: 1 when the service did fail over (expected) */
  failovers: number;
  /** DNAT rules present that the recorded state does not call for, plus recorded rules missing */
  dnatBad: number;
  /** role processes that died by themselves (not killed by the runner) */
  crashes: number;
  notes: string[];
  error?: string;
}

/** The invariants a scenario breaks (empty when all hold). */
/** The figures of a scenario before it runs: all zero. */
export function newFigures(s: Scenario, phase: ScenarioFigures["phase"]): ScenarioFigures {
  return {
    id: s.id,
    phase,
    faults: s.faults.map((x) => x.kind).join("+"),
    writes: 0,
    durable: 0,
    lost: 0,
    prefixChecks: 0,
    notPrefix: 0,
    copies: 0,
    converged: 0,
    convergeMs: 0,
    falseFailovers: 0,
    failovers: 0,
    dnatBad: 0,
    crashes: 0,
    notes: [],
  };
}

export function broken(f: ScenarioFigures, expectsFailover: boolean): string[] {
  const out: string[] = [];
  if (f.error) out.push(`error: ${f.error}`);
  if (f.lost > 0) out.push(`${f.lost} acknowledged (FLUSH/FUA) writes lost`);
  if (f.notPrefix > 0) out.push(`${f.notPrefix} copies not a prefix of the write sequence`);
  if (f.converged < f.copies) out.push(`${f.copies - f.converged} copies did not converge`);
  if (f.falseFailovers > 0) out.push(`${f.falseFailovers} false failovers`);
  if (expectsFailover && f.failovers < 1) out.push("the real failure did not fail the service over");
  if (f.dnatBad > 0) out.push(`${f.dnatBad} stale or missing DNAT rules`);
  // not in the issue's list, but a role that dies of a fault is a bug (the runner restarts it, as systemd would)
  if (f.crashes > 0) out.push(`${f.crashes} roles died by themselves`);
  return out;
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + " ".repeat(n - s.length);
}

/** The summary table, one row per scenario, then the totals. */
export function summaryTable(rows: { f: ScenarioFigures; broken: string[] }[]): string {
  const head = [
    "#",
    "faults",
    "writes",
    "durable",
    "lost",
    "prefix",
    "converged",
    "conv ms",
    "false fo",
    "dnat",
    "ok",
  ];
  const w = [3, 44, 7, 8, 5, 9, 10, 8, 9, 5, 4];
  const line = (cells: string[]) => cells.map((c, i) => pad(c, w[i])).join(" ").trimEnd();
  const out = [line(head)];
  for (const { f, broken } of rows) {
    out.push(line([
      String(f.id),
      f.faults.length > 44 ? f.faults.slice(0, 43) + "…" : f.faults,
      String(f.writes),
      String(f.durable),
      String(f.lost),
      `${f.prefixChecks - f.notPrefix}/${f.prefixChecks}`,
      `${f.converged}/${f.copies}`,
      String(f.convergeMs),
      String(f.falseFailovers),
      String(f.dnatBad),
      broken.length ? "FAIL" : "ok",
    ]));
  }
  return out.join("\n");
}

export interface Totals {
  scenarios: number;
  failed: number;
  writes: number;
  durable: number;
  lost: number;
  prefixChecks: number;
  notPrefix: number;
  copies: number;
  converged: number;
  convergeMsMax: number;
  convergeMsMedian: number;
  falseFailovers: number;
  failovers: number;
  dnatBad: number;
  crashes: number;
  kinds: string[];
}

export function totals(rows: { f: ScenarioFigures; broken: string[] }[]): Totals {
  const sum = (k: keyof ScenarioFigures) => rows.reduce((a, r) => a + (r.f[k] as number), 0);
  const conv = rows.filter((r) => r.f.copies > 0).map((r) => r.f.convergeMs).sort((a, b) => a - b);
  const kinds = new Set<string>();
  for (const r of rows) for (const k of r.f.faults.split("+")) kinds.add(k);
  return {
    scenarios: rows.length,
    failed: rows.filter((r) => r.broken.length).length,
    writes: sum("writes"),
    durable: sum("durable"),
    lost: sum("lost"),
    prefixChecks: sum("prefixChecks"),
    notPrefix: sum("notPrefix"),
    copies: sum("copies"),
    converged: sum("converged"),
    convergeMsMax: conv.length ? conv[conv.length - 1] : 0,
    convergeMsMedian: conv.length ? conv[Math.floor(conv.length / 2)] : 0,
    falseFailovers: sum("falseFailovers"),
    failovers: sum("failovers"),
    dnatBad: sum("dnatBad"),
    crashes: sum("crashes"),
    kinds: [...kinds].sort(),
  };
}

/** Fault kinds a plan covers, and those of the issue's list it misses (must be empty). */
export function coverage(plan: Scenario[]): { covered: FaultKind[]; missing: FaultKind[] } {
  const seen = new Set<FaultKind>();
  for (const s of plan) for (const f of s.faults) seen.add(f.kind);
  const all: FaultKind[] = [...CLUSTER_FAULTS, ...LAB_FAULTS];
  return { covered: all.filter((k) => seen.has(k)), missing: all.filter((k) => !seen.has(k)) };
}
