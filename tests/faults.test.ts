// The CI fault profile (`deno task faults`) as part of the ordinary test run: at
// least 20 seeded scenarios covering every injectable fault kind, on real processes,
// tmpfs and network namespaces. Fails when the runner reports a broken invariant
// (acknowledged writes lost, a copy that is not a prefix, a copy that did not
// converge, a false failover, a stale or missing DNAT rule, a role that died).
// The clock steps need libfaketime (tests/faults-clock.test.ts checks it works here).
// FAULTS_SEED=N replays another seed.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import type { Totals } from "./faults/plan.ts";

const t = suite("fault injection: CI profile");
const root = new URL("../", import.meta.url).pathname;

t("the CI profile runs, covers every fault kind, and every invariant holds", async () => {
  if (
    !need("fault injection", {
      root: true,
      tools: ["ip", "iptables", "iptables-save", "mount", "fallocate", "faketime"],
    })
  ) {
    return;
  }
  const json = await Deno.makeTempFile({ prefix: "faults-", suffix: ".json" });
  const seed = Deno.env.get("FAULTS_SEED");
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${root}tests/faults/run.ts`,
      "--profile",
      "ci",
      "--json",
      json,
      ...(seed ? ["--seed", seed] : []),
    ],
    cwd: root,
    stdout: "inherit",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 9 * 60_000);
  const status = await child.status;
  clearTimeout(timer);
  const secs = (performance.now() - started) / 1000;
  const report = JSON.parse(await Deno.readTextFile(json).catch(() => "{}")) as {
    totals?: Totals;
    fatal?: string;
    rows?: { broken: string[] }[];
  };
  await Deno.remove(json).catch(() => {});
  console.log(`\n  fault runner: exit ${status.code} after ${secs.toFixed(0)} s`);
  assert.ok(report.totals, "the runner wrote its figures");
  const tot = report.totals!;
  assert.is(report.fatal, undefined, "no phase failed to run");
  assert.ok(tot.scenarios >= 20, `at least 20 scenarios (${tot.scenarios})`);
  for (
    const k of [
      "kill-agent",
      "kill-local-gateway",
      "kill-remote-gateway",
      "kill-standby",
      "cut",
      "lab-cut",
      "delay",
      "loss",
      "hb-impair",
      "journal-full",
      "replica-full",
      "corrupt-site-frame",
      "corrupt-agent-frame",
      "clock-jump-agent",
      "clock-jump-local-gateway",
      "clock-jump-remote-gateway",
      "host-failure",
    ]
  ) assert.ok(tot.kinds.includes(k), `fault kind ${k} was injected`);
  assert.ok(tot.durable > 10_000, `the workload made progress (${tot.durable} durable writes)`);
  assert.is(tot.lost, 0, "acknowledged (FLUSH/FUA) writes lost");
  assert.is(tot.notPrefix, 0, "copies not a prefix of the write sequence");
  assert.ok(tot.prefixChecks >= tot.copies, "every copy was checked against the sequence");
  assert.is(tot.converged, tot.copies, "copies converged after healing");
  assert.is(tot.falseFailovers, 0, "false failovers");
  assert.ok(tot.failovers >= 1, "the real host failure failed the service over");
  assert.is(tot.dnatBad, 0, "stale or missing DNAT rules");
  assert.is(tot.crashes, 0, "roles that died by themselves");
  assert.is(tot.failed, 0, "scenarios with a broken invariant");
  assert.is(status.code, 0, "the runner's exit code");
});

t.run();
