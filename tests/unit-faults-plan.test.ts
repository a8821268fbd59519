// Unit tests of the fault runner's pure logic (tests/faults/plan.ts): the seeded PRNG
// and scenario plans, the prefix and lost-write checks over what the writer recorded,
// and the verdict. No processes.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  broken,
  checkPrefix,
  CLUSTER_FAULTS,
  coverage,
  LAB_FAULTS,
  lostDurable,
  newWriteLog,
  planScenarios,
  PROFILES,
  Rng,
  type ScenarioFigures,
  stampsOf,
  summaryTable,
  totals,
  type WriteLog,
} from "./faults/plan.ts";

const t = suite("fault runner: plan and invariants");

t("the PRNG is deterministic per seed and uniform enough", () => {
  const a = new Rng(42), b = new Rng(42), c = new Rng(43);
  const xs = Array.from({ length: 1000 }, () => a.next());
  assert.equal(xs, Array.from({ length: 1000 }, () => b.next()));
  assert.not.equal(xs.slice(0, 10), Array.from({ length: 10 }, () => c.next()));
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
  const r = new Rng(7);
  for (let i = 0; i < 1000; i++) {
    const v = r.int(3, 5);
    assert.ok(v >= 3 && v <= 5 && Number.isInteger(v));
  }
});

t("the CI plan: at least 20 scenarios, every fault kind, same seed same plan", () => {
  const p = planScenarios(PROFILES.ci, 1);
  assert.ok(p.length >= 20, `${p.length} scenarios`);
  assert.equal(coverage(p).missing, []);
  assert.equal(p, planScenarios(PROFILES.ci, 1));
  assert.not.equal(p, planScenarios(PROFILES.ci, 2));
  // ids are 1..n, every fault within its scenario's time line, the real failure is last
  p.forEach((s, i) => assert.is(s.id, i + 1));
  for (const s of p) {
    let prev = 0;
    for (const f of s.faults) {
      assert.ok(f.atMs >= prev && f.holdMs >= 0, JSON.stringify(s));
      prev = f.atMs + f.holdMs;
    }
  }
  assert.is(p[p.length - 1].faults[0].kind, "host-failure");
  assert.is(p.filter((s) => s.faults.some((f) => f.kind === "host-failure")).length, 1);
  const long = planScenarios(PROFILES.long, 1);
  assert.ok(long.length > 3 * p.length);
  assert.equal(coverage(long).missing, []);
  assert.is(CLUSTER_FAULTS.length + LAB_FAULTS.length, coverage(long).covered.length);
});

t("clock steps: one per role in CI, forward and back by 30 s to 15 min, held, then undone", () => {
  const jumps = (p: ReturnType<typeof planScenarios>) =>
    p.flatMap((s) => s.faults).filter((f) => f.kind.startsWith("clock-jump-"));
  const ci = jumps(planScenarios(PROFILES.ci, 20261124));
  assert.equal(ci.map((f) => f.kind).sort(), [
    "clock-jump-agent",
    "clock-jump-local-gateway",
    "clock-jump-remote-gateway",
  ]);
  const long = jumps(planScenarios(PROFILES.long, 7));
  assert.is(long.length, 12);
  for (const f of [...ci, ...long]) {
    const s = Math.abs(f.params.offsetS);
    assert.ok(Number.isInteger(f.params.offsetS) && s >= 30 && s <= 900, JSON.stringify(f));
    assert.ok(f.holdMs >= 2000, "held long enough for the step to take (libfaketime re-reads every second)");
  }
  assert.ok(long.some((f) => f.params.offsetS > 0) && long.some((f) => f.params.offsetS < 0));
  assert.ok(
    long.some((f) => Math.abs(f.params.offsetS) > 300),
    "some beyond the heartbeat boot check's 5 min",
  );
});

/** A log of writes to blocks, all acknowledged unless listed in `unacked`. */
function log(blocks: number[], unacked: number[] = [], durable?: number[]): WriteLog {
  const l = newWriteLog();
  blocks.forEach((b, i) => {
    l.blocks.push(b);
    if (!unacked.includes(i + 1)) l.acked.add(i + 1);
    else l.failed.add(i + 1);
  });
  for (const i of durable ?? [...l.acked]) l.durable.add(i);
  return l;
}

t("checkPrefix: exact prefixes pass, holes and foreign content fail", () => {
  // writes 1..5 to blocks 0,1,0,2,1
  const l = log([0, 1, 0, 2, 1]);
  assert.equal(checkPrefix([0, 0, 0], l), { k: 0 });
  assert.equal(checkPrefix([1, 0, 0], l), { k: 1 });
  assert.equal(checkPrefix([3, 2, 0], l), { k: 3 });
  assert.equal(checkPrefix([3, 5, 4], l), { k: 5 });
  // write 4 applied, write 3 (block 0) not: a hole
  assert.ok("error" in checkPrefix([1, 2, 4], l));
  // block 2 holds write 1, which went to block 0
  assert.ok("error" in checkPrefix([0, 0, 1], l));
  assert.ok("error" in checkPrefix([-1, 0, 0], l), "foreign content");
  assert.ok("error" in checkPrefix([9, 0, 0], l), "a write that was never made");
});

t("checkPrefix: writes never acknowledged count only when visible", () => {
  // write 3 (block 0) failed (the agent died with it in flight): it may be missing...
  const l = log([0, 1, 0, 2, 1], [3]);
  assert.equal(checkPrefix([1, 5, 4], l), { k: 5 });
  // ...or present
  assert.equal(checkPrefix([3, 5, 4], l), { k: 5 });
  // but an acknowledged write may not be missing
  const m = log([0, 1, 0, 2, 1], [5]);
  assert.ok("error" in checkPrefix([1, 2, 4], m), "write 3 was acknowledged");
  assert.equal(checkPrefix([3, 2, 4], m), { k: 4 });
});

t("lostDurable counts blocks older than their last durable write", () => {
  const l = log([0, 1, 0, 2, 1], [], [1, 2, 3]); // 4 and 5 acknowledged but not flushed
  assert.is(lostDurable([3, 2, 0], l), 0);
  assert.is(lostDurable([3, 5, 4], l), 0);
  assert.is(lostDurable([1, 2, 0], l), 1, "write 3 was flushed, block 0 holds 1");
  assert.is(lostDurable([0, 0, 0], l), 2);
  assert.is(lostDurable([3, 1, 0], l), 1, "block 1 holds write 1, which went to block 0");
});

t("stampsOf reads index and tag, zero blocks and foreign blocks", () => {
  const region = new Uint8Array(4 * 4096);
  const v = new DataView(region.buffer);
  v.setUint32(4096, 7, true);
  v.setUint32(4096 + 4, 0xfa000001, true);
  region[4096 + 100] = 9;
  v.setUint32(2 * 4096, 7, true);
  v.setUint32(2 * 4096 + 4, 0xfa000002, true); // another scenario's tag
  region[3 * 4096 + 4000] = 1; // not a stamp at all
  assert.equal(stampsOf(region, 0xfa000001), [0, 7, -1, -1]);
});

function figures(o: Partial<ScenarioFigures> = {}): ScenarioFigures {
  return {
    id: 1,
    phase: "cluster",
    faults: "cut",
    writes: 10,
    durable: 10,
    lost: 0,
    prefixChecks: 4,
    notPrefix: 0,
    copies: 3,
    converged: 3,
    convergeMs: 100,
    falseFailovers: 0,
    failovers: 0,
    dnatBad: 0,
    crashes: 0,
    notes: [],
    ...o,
  };
}

t("the verdict: each invariant breaks the scenario on its own", () => {
  assert.equal(broken(figures(), false), []);
  assert.is(broken(figures({ lost: 1 }), false).length, 1);
  assert.is(broken(figures({ notPrefix: 1 }), false).length, 1);
  assert.is(broken(figures({ converged: 2 }), false).length, 1);
  assert.is(broken(figures({ falseFailovers: 1 }), false).length, 1);
  assert.is(broken(figures({ dnatBad: 1 }), false).length, 1);
  assert.is(broken(figures({ crashes: 1 }), false).length, 1);
  assert.is(broken(figures({ error: "x" }), false).length, 1);
  assert.is(broken(figures({ phase: "lab", failovers: 0 }), true).length, 1, "the real failure must switch");
  assert.equal(broken(figures({ phase: "lab", failovers: 1 }), true), []);
  const rows = [
    { f: figures(), broken: [] },
    { f: figures({ id: 2, lost: 2, convergeMs: 300 }), broken: ["x"] },
  ];
  const tot = totals(rows);
  assert.is(tot.failed, 1);
  assert.is(tot.lost, 2);
  assert.is(tot.convergeMsMax, 300);
  assert.match(summaryTable(rows), /FAIL/);
});

t.run();
