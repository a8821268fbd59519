// `deno task faults [--profile ci|long] [--seed N] [--only cluster|lab|KIND] [--json FILE]`:
// the seeded fault-injection runner. It plans the profile's scenarios from the seed
// (tests/faults/plan.ts), runs the replication ones on a topology of real processes
// (cluster-phase.ts) and the detector ones in the failover lab (lab-phase.ts), prints
// each scenario's figures and a summary table, and exits 1 when any invariant broke.
// Needs root (tmpfs mounts, network namespaces, iptables). FAULTS_KEEP_LOGS=1 keeps the roles'
// logs of a passing run too (a failed run always keeps them).
import { parseArgs } from "node:util";
import { ensureSetup } from "../lib/setup.ts";
import { exec, mustExec } from "../lib/netns.ts";
import { ClusterPhase } from "./cluster-phase.ts";
import { LabPhase } from "./lab-phase.ts";
import {
  broken,
  coverage,
  EXPECTS_FAILOVER,
  NOT_INJECTABLE,
  planScenarios,
  PROFILES,
  type Scenario,
  type ScenarioFigures,
  summaryTable,
  totals,
} from "./plan.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    profile: { type: "string", default: "ci" },
    seed: { type: "string" },
    only: { type: "string" },
    json: { type: "string" },
  },
});
const profile = PROFILES[values.profile!];
if (!profile) {
  console.error(`unknown profile ${values.profile} (${Object.keys(PROFILES).join(", ")})`);
  Deno.exit(2);
}
const seed = values.seed !== undefined ? Number(values.seed) : 20261124;
if (!Number.isInteger(seed)) {
  console.error(`--seed must be an integer`);
  Deno.exit(2);
}
if (Deno.uid() !== 0) {
  console.error("the fault runner needs root (tmpfs mounts, network namespaces, iptables)");
  Deno.exit(2);
}

const say = (s: string) => console.log(s);
const planned = planScenarios(profile, seed).length;
// --only: a phase, or the scenarios with a fault kind whose name starts with it (e.g. clock-jump)
const only = values.only;
const plan = planScenarios(profile, seed).filter((s) =>
  !only || s.phase === only || s.faults.some((f) => f.kind.startsWith(only))
);
const cov = coverage(plan);
say(`fault runner: profile ${profile.name}, seed ${seed}, ${plan.length} scenarios`);
say(`fault kinds: ${cov.covered.join(", ")}`);
for (const [k, why] of Object.entries(NOT_INJECTABLE)) say(`not injected: ${k}: ${why}`);

await ensureSetup();
// The roles' directories (rings, images, databases, logs) go on a tmpfs of the runner's own:
// the run does not depend on (or add to) how full the machine's disk is, and leaves nothing.
const work = `/tmp/continuum-faults-${Deno.pid}`;
await Deno.mkdir(work, { recursive: true });
await mustExec(["mount", "-t", "tmpfs", "-o", "size=3G,mode=0755", "continuum-faults", work]);
Deno.env.set("TEST_OUTPUT_DIR", work);
const started = performance.now();
const rows: { f: ScenarioFigures; broken: string[] }[] = [];

function report(s: Scenario, f: ScenarioFigures): void {
  const exp = s.faults.some((x) => EXPECTS_FAILOVER.has(x.kind));
  const b = broken(f, exp);
  rows.push({ f, broken: b });
  const faults = s.faults.map((x) =>
    `${x.kind}@${x.atMs}ms${x.holdMs ? `/${x.holdMs}ms` : ""}${
      Object.keys(x.params).length ? JSON.stringify(x.params) : ""
    }`
  ).join(" ");
  say(
    `[${s.id}/${planned}] ${s.phase} ${faults}: writes ${f.writes}, durable ${f.durable}, lost ${f.lost}, ` +
      `prefix ${f.prefixChecks - f.notPrefix}/${f.prefixChecks}, converged ${f.converged}/${f.copies} in ` +
      `${f.convergeMs} ms, false failovers ${f.falseFailovers}, failovers ${f.failovers}, DNAT bad ${f.dnatBad}, ` +
      `crashes ${f.crashes} ${b.length ? "FAIL: " + b.join("; ") : "ok"}`,
  );
  for (const n of f.notes) say(`    ${n}`);
}

const cluster = plan.filter((s) => s.phase === "cluster");
const lab = plan.filter((s) => s.phase === "lab");
let fatal: string | undefined;
const dirs: string[] = [];
let final: { copies: number; equal: number } | undefined;
if (cluster.length) {
  const phase = new ClusterPhase(cluster.length, say);
  try {
    const t = performance.now();
    await phase.start();
    dirs.push(phase.topo.dir);
    say(`topology up in ${Math.round(performance.now() - t)} ms: ${phase.topo.dir}`);
    for (const s of cluster) report(s, await phase.run(s));
    final = await phase.finalEquality();
    say(
      `whole images after the cluster phase: ${final.equal}/${final.copies} copies equal to the agent's volume`,
    );
  } catch (e) {
    fatal = `cluster phase: ${(e as Error).stack ?? e}`;
  } finally {
    await phase.stop();
  }
}
if (lab.length && !fatal) {
  let phase = new LabPhase(say, profile.labWriteRate);
  const startLab = async () => {
    const t = performance.now();
    await phase.start();
    dirs.push(phase.lab.dir);
    say(`failover lab up in ${Math.round(performance.now() - t)} ms: ${phase.lab.dir}`);
  };
  try {
    await startLab();
    for (const s of lab) {
      const f = await phase.run(s);
      report(s, f);
      // a scenario that left the service switched (a false failover) would fail every later one
      // for the same reason: the next scenarios get a fresh lab
      if (f.falseFailovers > 0 && s !== lab[lab.length - 1]) {
        say("    the service was switched: a fresh lab for the next scenarios");
        await phase.stop();
        phase = new LabPhase(say, profile.labWriteRate);
        await startLab();
      }
    }
  } catch (e) {
    fatal = `lab phase: ${(e as Error).stack ?? e}`;
  } finally {
    await phase.stop();
  }
}

const tot = totals(rows);
say("\n" + summaryTable(rows));
say(
  `\nfigures (profile ${profile.name}, seed ${seed}, ${tot.scenarios} scenarios, ` +
    `${Math.round((performance.now() - started) / 1000)} s):\n` +
    `  acknowledged (FLUSH/FUA) writes lost:        ${tot.lost} of ${tot.durable}\n` +
    `  copies not a prefix of the write sequence:   ${tot.notPrefix} of ${tot.prefixChecks} checks\n` +
    `  copies converged after healing:              ${tot.converged} of ${tot.copies}` +
    (final ? ` (whole images at the end: ${final.equal} of ${final.copies})` : "") + "\n" +
    `  time to converge (median / max):             ${tot.convergeMsMedian} / ${tot.convergeMsMax} ms\n` +
    `  false failovers (faults below the margin):   ${tot.falseFailovers}\n` +
    `  failovers on a real host failure:            ${tot.failovers}\n` +
    `  stale or missing DNAT rules:                 ${tot.dnatBad}\n` +
    `  role crashes (not killed by the runner):     ${tot.crashes}\n` +
    `  scenarios with a broken invariant:           ${tot.failed}`,
);
if (cov.missing.length && !values.only) say(`fault kinds not covered: ${cov.missing.join(", ")}`);
if (final && final.equal < final.copies) fatal ??= "whole images differ at the end of the cluster phase";
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify({ profile: profile.name, seed, totals: tot, final, fatal, rows }, null, 2),
  );
}
const ok = !fatal && tot.failed === 0 && (values.only || cov.missing.length === 0);
if (fatal) say(`\nFATAL: ${fatal}`);
// the roles' logs are kept (on disk) for a failed run, or any with FAULTS_KEEP_LOGS=1; the tmpfs goes
if ((!ok || Deno.env.get("FAULTS_KEEP_LOGS") === "1") && dirs.length) {
  const keep = `${new URL("../../", import.meta.url).pathname}test-output/faults-logs-${Date.now()}`;
  await mustExec([
    "sh",
    "-c",
    `mkdir -p ${keep} && cd ${work} && find . -name '*.log' -exec cp --parents {} ${keep} \\;`,
  ])
    .then(() => say(`role logs kept in ${keep}`), (e) => say(`role logs not kept: ${(e as Error).message}`));
}
await exec(["umount", "-l", work]);
await Deno.remove(work).catch(() => {});
say(ok ? "\nfault runner: every invariant held" : "\nfault runner: INVARIANT BROKEN");
Deno.exit(ok ? 0 : 1);
