// Failure-detector QoS benchmark: `deno run -A bench/detector-qos.ts`. Simulates the
// heartbeat link for each fixed detector setting, and for each configured one: a link profile is
// measured as the gateway measures it, the configurator derives η and α from QoS targets, and the
// derived detector is simulated. Prints markdown tables of the Chen et al. metrics and writes
// them, with how they were produced, to docs/detector-qos.md.
import { ChenDetector } from "../src/detector/chen.ts";
import { PhiDetector } from "../src/detector/phi.ts";
import {
  type DelayModel,
  type DetectorFactory,
  type Link,
  measureQos,
  mulberry32,
  type QosConfig,
  type QosResult,
  simulatedEstimate,
} from "../src/detector/qos.ts";
import { configure, meets, type PredictedQos, type QosTargets } from "../src/detector/configurator.ts";

const eta = 100;
const chenWindow = 100;
const phiWindow = 1000;
const config: QosConfig = {
  seed: 20240601,
  link: { etaMs: eta, delay: { kind: "exponential", meanMs: 10 }, lossProbability: 0.01 },
  aliveMs: 24 * 3_600_000,
  crashTrials: 1000,
  warmupMs: 60_000,
};

const detectors: Record<string, DetectorFactory> = {};
for (const alpha of [50, 100, 200, 400]) {
  detectors[`Chen η=${eta} α=${alpha}`] = (startMs) =>
    new ChenDetector({ etaMs: eta, alphaMs: alpha, window: chenWindow, startMs });
}
for (const [suspectPhi, failurePhi] of [[3, 8], [5, 12], [8, 16]]) {
  detectors[`φ η=${eta} φs=${suspectPhi} φf=${failurePhi}`] = (startMs) =>
    new PhiDetector({ etaMs: eta, startMs, window: phiWindow, suspectPhi, failurePhi });
}

function describe(link: Link): string {
  const d = link.delay;
  const delay = d.kind === "exponential"
    ? `exponentially distributed delays (mean ${d.meanMs} ms)`
    : `delays uniform in [${d.minMs}, ${d.maxMs}] ms`;
  return `heartbeats every η = ${link.etaMs} ms with ${delay} and independent loss with probability ${link.lossProbability}`;
}

const ms = (x: number | null) => x === null ? "—" : `${x.toFixed(0)} ms`;
const secs = (x: number | null) => x === null ? "—" : `${(x / 1000).toFixed(1)} s`;

function table(results: Record<string, QosResult>): string {
  const rows = [
    "| setting | T_D median | T_D max | mistakes | T_MR | T_M | P_A | false FAILUREs |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const [name, r] of Object.entries(results)) {
    rows.push(
      `| ${name} | ${ms(r.detectionMedianMs)} | ${ms(r.detectionMaxMs)} | ${r.mistakes} | ` +
        `${secs(r.mistakeRecurrenceMs)} | ${ms(r.mistakeDurationMs)} | ${r.queryAccuracy.toFixed(6)} | ` +
        `${r.falseFailures} |`,
    );
  }
  return rows.join("\n");
}

// ---------------------------------------------------------------------- configured mode

const profiles: { name: string; delay: DelayModel; loss: number }[] = [
  { name: "LAN: exp. 0.5 ms, 0.1 % loss", delay: { kind: "exponential", meanMs: 0.5 }, loss: 0.001 },
  { name: "exp. 10 ms, 1 % loss", delay: { kind: "exponential", meanMs: 10 }, loss: 0.01 },
  { name: "jittery: uniform 5–95 ms, 2 % loss", delay: { kind: "uniform", minMs: 5, maxMs: 95 }, loss: 0.02 },
  { name: "lossy: exp. 30 ms, 10 % loss", delay: { kind: "exponential", meanMs: 30 }, loss: 0.1 },
];
const targetSets: QosTargets[] = [
  { detectionMs: 1000, mistakeRecurrenceMs: 3_600_000, mistakeDurationMs: 1000 },
  { detectionMs: 500, mistakeRecurrenceMs: 86_400_000, mistakeDurationMs: 200 },
  { detectionMs: 150, mistakeRecurrenceMs: 86_400_000, mistakeDurationMs: 200 },
];
const configuredAliveMs = 24 * 3_600_000;
const configuredTrials = 500;

/** A duration in the unit that reads best: d, h, min, s, ms. */
function dur(x: number | null): string {
  if (x === null) return "—";
  x = Math.round(x);
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["min", 60_000], ["s", 1000]] as const) {
    if (x >= size) return `${(x / size).toFixed(x >= 10 * size ? 0 : 1)} ${unit}`;
  }
  return `${x.toFixed(0)} ms`;
}

function configuredTable(): string {
  const rows = [
    "| link | targets T_D, T_MR, T_M | state | η, α | guaranteed T_D, T_MR, T_M | T_D max | false FAILUREs in 24 h | T_MR | T_M |",
    "|---|---|---|---|---|---:|---:|---:|---:|",
  ];
  let seed = 1;
  for (const p of profiles) {
    // the gateway's measurement: a minute of heartbeats every 100 ms and 30 probes
    const stats = simulatedEstimate(mulberry32(seed++), {
      etaMs: 100,
      delay: p.delay,
      lossProbability: p.loss,
    }, 60_000)!;
    for (const t of targetSets) {
      const c = configure(t, stats.upper);
      const run = c.ok ? c : c.best;
      const targets = `${dur(t.detectionMs)}, ${dur(t.mistakeRecurrenceMs)}, ${dur(t.mistakeDurationMs)}`;
      if (!run) {
        rows.push(
          `| ${p.name} | ${targets} | cannot be met, no setting keeps T_MR | — | — | — | — | — | — |`,
        );
        continue;
      }
      const link: Link = { etaMs: run.setting.etaMs, delay: p.delay, lossProbability: p.loss };
      const r = measureQos(
        { seed: seed++, link, aliveMs: configuredAliveMs, crashTrials: configuredTrials, warmupMs: 30_000 },
        {
          configured: (startMs) =>
            new ChenDetector({
              etaMs: run.setting.etaMs,
              alphaMs: run.setting.alphaMs,
              window: chenWindow,
              startMs,
            }),
        },
      ).configured;
      const g: PredictedQos = run.predicted;
      const observed: PredictedQos = {
        detectionMs: r.detectionMaxMs,
        mistakeRecurrenceMs: r.falseFailures ? configuredAliveMs / r.falseFailures : Infinity,
        mistakeDurationMs: r.falseFailureDurationMs ?? 0,
      };
      const state = c.ok ? (meets(observed, t) ? "met" : "met (observed: missed)") : "cannot be met: best";
      rows.push(
        `| ${p.name} | ${targets} | ${state} | ${run.setting.etaMs} ms, ${run.setting.alphaMs} ms | ` +
          `${dur(g.detectionMs)}, ${dur(g.mistakeRecurrenceMs)}, ${dur(g.mistakeDurationMs)} | ` +
          `${ms(r.detectionMaxMs)} | ${r.falseFailures} | ` +
          `${r.falseFailures ? dur(configuredAliveMs / r.falseFailures) : "—"} | ${
            dur(r.falseFailureDurationMs)
          } |`,
      );
    }
  }
  return rows.join("\n");
}

const started = performance.now();
const results = measureQos(config, detectors);
const configured = configuredTable();
const elapsed = (performance.now() - started) / 1000;

const doc = `# Failure detector QoS

Generated by \`deno run -A bench/detector-qos.ts\`; rerun it to regenerate this file.

How it was produced: a simulation (src/detector/qos.ts) of ${describe(config.link)},
seeded PRNG mulberry32 with seed ${config.seed}. The same traces are replayed through every detector.
Accuracy comes from one failure-free run of ${config.aliveMs / 3_600_000} h simulated time per setting:
every non-TRUST period is a mistake, T_MR is the mean time between the starts of consecutive
mistakes, T_M their mean length, P_A the fraction of time spent in TRUST, and a mistake that
reached FAILURE is a false failover. T_D (crash to the final transition into FAILURE) comes from
${config.crashTrials} crash trials, each crashing ${config.warmupMs / 1000} s plus a uniformly random
fraction of η after the sender started. Chen mode averages the last ${chenWindow} arrivals, FAILURE is
one η after SUSPECT; φ mode keeps ${phiWindow} inter-arrival times with a σ floor of η/10.

${table(results)}

## Configured from QoS targets

The local gateway derives η and α per agent link from the targets of the agent's tasks and services
(src/detector/configurator.ts, after Chen, Toueg and Aguilera's configuration procedure, with
Cantelli's bound on the delay): detection (FAILURE) within T_D, false detections on average at
most once every T_MR, lasting at most T_M on average. Here each link profile is first measured as
the gateway measures it (a minute of heartbeats every 100 ms through src/detector/link-estimator.ts
and 30 probe round trips; the configurator takes the estimates' one-sided 95 % upper bounds), then
the derived detector runs ${
  configuredAliveMs / 3_600_000
} h failure-free and ${configuredTrials} crash trials (as above, FAILURE one η
after SUSPECT, Chen window ${chenWindow}). "Guaranteed" is what the configurator promises for the
setting on the measured link; T_D max, the false FAILUREs, their mean recurrence (24 h over their
number) and mean length are what the simulation observed. When the targets cannot be met the
best achievable setting runs: T_MR kept, with the shortest detection time (and mistake duration)
the link allows.

${configured}
`;
const path = new URL("../docs/detector-qos.md", import.meta.url).pathname;
await Deno.writeTextFile(path, doc);
// let deno fmt align the table and wrap the text, so the file passes `deno fmt --check`
const fmt = await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", path] }).output();
if (!fmt.success) throw new Error(`deno fmt ${path}: ${new TextDecoder().decode(fmt.stderr)}`);
const written = await Deno.readTextFile(path);
console.log(written.split("\n").filter((l) => l.startsWith("|")).join("\n"));
console.log(`\n${elapsed.toFixed(1)} s; written to docs/detector-qos.md`);
