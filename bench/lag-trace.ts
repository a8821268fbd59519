// `deno task bench lag-trace`: where the replication lag of the capture benchmark's two-site jobs
// comes from, over the time of a run. It starts the demo's topology as that benchmark does (no lag
// bound), fills fio's region, then runs a job while sampling every 100 ms: the highest lag of any
// site, what the local gateway has not sent yet and what it sent that is not acknowledged (the
// larger of the two sites'), the standby feeds' lag at the remote gateways, and the machine's disks
// (share of the time busy, write requests, bytes). Prints the samples in half-second rows and a
// summary per run: the p99 lag of the whole run and of the run after its first 2 s, and the medians
// after 2 s. Jobs: the two whose lag misses 1 s in the capture benchmark (BENCH_JOBS picks others by
// name). TEST_OUTPUT_DIR on a tmpfs puts every copy there: what the lag is with the disk taken away.
// No section in the docs (docs/benchmarks.md quotes it).
import { diskCounters, fill, fio, median, percentile, table } from "./lib.ts";
import { CAPTURE_JOBS } from "./jobs.ts";
import { twoSites } from "./targets.ts";

const seconds = Number(Deno.env.get("BENCH_SECONDS") ?? 8);
const rounds = Number(Deno.env.get("BENCH_ROUNDS") ?? 2);
const names = Deno.env.get("BENCH_JOBS")?.split(";") ?? ["4 KiB randwrite qd16", "1 MiB seq write qd4"];
const EVERY_MS = 100, STEADY_S = 2;
const MB = 1e6;
const MEASURES = [
  "unsent (MB)",
  "in flight (MB)",
  "standby lag (s)",
  "disk busy",
  "disk writes/s",
  "disk MB/s",
];

interface Sample {
  at: number;
  lag: number;
  unsent: number;
  inFlight: number;
  standbyLag: number;
  disk: { writes: number; bytes: number; busyMs: number };
}

const summary: string[][] = [];
for (let round = 1; round <= rounds; round++) {
  for (const job of names) {
    const args = CAPTURE_JOBS[job];
    if (!args) throw new Error(`unknown job "${job}" (one of ${Object.keys(CAPTURE_JOBS).join("; ")})`);
    const s = await twoSites([]);
    try {
      await fill(s.uri);
      await s.settled!();
      const t = s.topology;
      const samples: Sample[] = [];
      let running = true;
      const t0 = performance.now();
      const sampler = (async () => {
        while (running) {
          const [sites, remotes, disk] = await Promise.all([
            t.sites(),
            Promise.all(Object.values(t.remotes).map((r) => r.status())),
            diskCounters(),
          ]);
          samples.push({
            at: (performance.now() - t0) / 1000,
            lag: Math.max(0, ...sites.map((x) => x.lagSeconds)),
            unsent: Math.max(0, ...sites.map((x) => x.lagBytes - x.inFlightBytes)),
            inFlight: Math.max(0, ...sites.map((x) => x.inFlightBytes)),
            standbyLag: Math.max(0, ...remotes.flatMap((r) => r.standby.map((f) => f.lagSeconds))),
            disk,
          });
          await new Promise((r) => setTimeout(r, EVERY_MS));
        }
      })();
      const r = await fio(s.uri, args, seconds);
      running = false;
      await sampler;
      console.log(`\nround ${round}, ${job}: ${r.iops.toFixed(0)} IOPS, ${r.mbps.toFixed(1)} MB/s`);
      const rows = halfSeconds(samples);
      console.log(table(
        ["s", "lag (s)", ...MEASURES],
        rows.map((w) => [w.at.toFixed(1), w.lag.toFixed(2), ...measures(w)]),
      ));
      const steady = rows.filter((w) => w.at >= STEADY_S);
      const p99 = (xs: number[]) => xs.length ? percentile(xs, 99).toFixed(2) : "–";
      const med = (f: (w: Window) => number) => steady.length ? median(steady.map(f)) : NaN;
      summary.push([
        String(round),
        job,
        args.includes("--bs=1M") ? `${r.mbps.toFixed(0)} MB/s` : `${r.iops.toFixed(0)} IOPS`,
        p99(samples.map((x) => x.lag)),
        p99(samples.filter((x) => x.at >= STEADY_S).map((x) => x.lag)),
        ...measures({
          unsent: med((w) => w.unsent),
          inFlight: med((w) => w.inFlight),
          standbyLag: med((w) => w.standbyLag),
          busy: med((w) => w.busy),
          writes: med((w) => w.writes),
          bytes: med((w) => w.bytes),
        }),
      ]);
    } finally {
      await s.stop();
    }
  }
}
console.log(`\nsummary (medians over the run after its first ${STEADY_S} s)`);
console.log(
  table(["round", "job", "rate", "p99 lag (s)", `p99 lag after ${STEADY_S} s`, ...MEASURES], summary),
);

interface Window {
  at: number;
  lag: number;
  unsent: number;
  inFlight: number;
  standbyLag: number;
  busy: number;
  writes: number;
  bytes: number;
}

/** The cells of MEASURES, in their order. */
function measures(w: Omit<Window, "at" | "lag">): string[] {
  return [
    (w.unsent / MB).toFixed(0),
    (w.inFlight / MB).toFixed(0),
    w.standbyLag.toFixed(2),
    `${(w.busy * 100).toFixed(0)} %`,
    w.writes.toFixed(0),
    (w.bytes / MB).toFixed(0),
  ];
}

/** The samples by half second: the largest lag and backlogs, the disks' rates over it. */
function halfSeconds(samples: Sample[]): Window[] {
  const out: Window[] = [];
  let first = 0;
  for (let i = 1; i < samples.length; i++) {
    const end = i === samples.length - 1 ||
      Math.floor(samples[i + 1].at * 2) > Math.floor(samples[first].at * 2);
    if (!end) continue;
    const part = samples.slice(first + 1, i + 1);
    const a = samples[first], b = samples[i], dt = b.at - a.at;
    out.push({
      at: b.at,
      lag: Math.max(...part.map((x) => x.lag)),
      unsent: Math.max(...part.map((x) => x.unsent)),
      inFlight: Math.max(...part.map((x) => x.inFlight)),
      standbyLag: Math.max(...part.map((x) => x.standbyLag)),
      busy: (b.disk.busyMs - a.disk.busyMs) / 1000 / dt,
      writes: (b.disk.writes - a.disk.writes) / dt,
      bytes: (b.disk.bytes - a.disk.bytes) / dt,
    });
    first = i;
  }
  return out;
}
