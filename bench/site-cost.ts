// `deno task bench site-cost`: what one write costs the machine, at a fixed rate every copy keeps
// pace with: CPU time per write of each process and thread (from /proc, from the start of fio
// until every copy holds what it wrote) and the bytes the disk took per byte written. Targets,
// taking turns: the agent and its local gateway alone, the demo's topology with two remote sites
// (each with its standby), and qemu's active mirror to nbdkit. Machines here share two cores
// between every role, so the two-site rate that keeps its lag low is about the cores over the CPU
// per write; the cost says which process and thread that is. Prints medians; no section of its
// own (docs/benchmarks.md quotes it under the capture benchmark).
import { diskCounters, fill, fio, machine, median, percentile, table } from "./lib.ts";
import { tempDir } from "../tests/lib/cluster.ts";
import { qemuActiveMirror } from "./peers.ts";
import { pairOnly, type Running, sampleLag, twoSites } from "./targets.ts";
import { cpuDelta, cpuSample } from "./cpu.ts";

const seconds = Number(Deno.env.get("BENCH_SECONDS") ?? 12);
const rounds = Number(Deno.env.get("BENCH_ROUNDS") ?? 2);
const iops = Number(Deno.env.get("BENCH_IOPS") ?? 4000);
const mbps = Number(Deno.env.get("BENCH_MBPS") ?? 40);
// BENCH_TARGETS / BENCH_JOBS (names, or their beginnings, separated by ';') run a part only
const only = Deno.env.get("BENCH_TARGETS")?.split(";");
const onlyJobs = Deno.env.get("BENCH_JOBS")?.split(";");
const chosen = (name: string, list: string[] | undefined) => !list || list.some((n) => name.startsWith(n));

const allJobs: Record<string, string[]> = {
  [`4 KiB randwrite qd16 at ${iops} IOPS`]: [
    "--rw=randwrite",
    "--bs=4k",
    "--iodepth=16",
    `--rate_iops=${iops}`,
  ],
  [`1 MiB seq write qd4 at ${mbps} MB/s`]: ["--rw=write", "--bs=1M", "--iodepth=4", `--rate=${mbps}m`],
};

const jobs = Object.fromEntries(Object.entries(allJobs).filter(([name]) => chosen(name, onlyJobs)));
const targets = ([
  { name: "Continuum", start: () => pairOnly("unix") },
  { name: "Continuum, 2 sites", start: () => twoSites([]) },
  { name: "qemu active mirror", start: qemuActiveMirror },
] as { name: string; start(dir: string): Promise<Running> }[]).filter((t) => chosen(t.name, only));

/**
 * Bytes written to the machine's disks so far, after writing back what the page cache holds:
 * qemu's copies, unflushed, would count later.
 */
async function diskBytes(): Promise<number> {
  await new Deno.Command("sync").output();
  return (await diskCounters()).bytes;
}

interface Run {
  /** CPU µs per write, by process (threads that ended included) and by process/thread. */
  processes: Map<string, number>;
  threads: Map<string, number>;
  /** Disk bytes per byte fio wrote. */
  amplification: number;
  p99lag?: number;
  rate: number;
}

const results = new Map<string, Run[]>();
const dir = await tempDir("bench-cost");
for (let round = 1; round <= rounds; round++) {
  for (const [job, args] of Object.entries(jobs)) {
    for (const t of targets) {
      const s = await t.start(dir);
      try {
        await fill(s.uri);
        await s.settled?.();
        const lag = sampleLag(s);
        const before = cpuSample(s.pids), disk0 = await diskBytes();
        const r = await fio(s.uri, args, seconds);
        const lags = await lag.done();
        // what the copies still had to do when fio ended is part of what the writes cost
        await s.settled?.();
        const after = cpuSample(s.pids), disk1 = await diskBytes();
        const writes = job.startsWith("1 MiB") ? r.mbps * 1e6 / 2 ** 20 * seconds : r.iops * seconds;
        const bytes = r.mbps * 1e6 * seconds;
        const run: Run = {
          processes: cpuDelta(before, after, writes / 1e6, "processes"),
          threads: cpuDelta(before, after, writes / 1e6),
          amplification: (disk1 - disk0) / bytes,
          p99lag: lags?.length ? percentile(lags, 99) : undefined,
          rate: job.startsWith("1 MiB") ? r.mbps : r.iops,
        };
        const key = `${t.name}|${job}`;
        results.set(key, [...(results.get(key) ?? []), run]);
        const total = [...run.processes.values()].reduce((a, b) => a + b, 0);
        console.log(
          `round ${round} ${t.name.padEnd(20)} ${job.padEnd(36)} ${run.rate.toFixed(0).padStart(6)} ${
            total.toFixed(0).padStart(7)
          } µs CPU/write  disk ×${run.amplification.toFixed(1)}${
            run.p99lag !== undefined ? `  p99 lag ${run.p99lag.toFixed(2)} s` : ""
          }`,
        );
      } finally {
        await s.stop();
      }
    }
  }
}
await Deno.remove(dir, { recursive: true });

const cores = navigator.hardwareConcurrency;
const med = (runs: Run[], f: (r: Run) => number) => median(runs.map(f));
const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
const rows: string[][] = [];
for (const job of Object.keys(jobs)) {
  for (const t of targets) {
    const runs = results.get(`${t.name}|${job}`) ?? [];
    const total = med(runs, (r) => sum(r.processes));
    const js = med(runs, (r) => sum(new Map([...r.threads].filter(([k]) => k.endsWith("/JS main thread")))));
    rows.push([
      job,
      t.name,
      total.toFixed(0),
      t.name.startsWith("Continuum") ? js.toFixed(0) : "",
      // the writes a second all of the machine's cores could carry at this cost
      (cores * 1e6 / total).toFixed(0),
      med(runs, (r) => r.amplification).toFixed(1),
      runs[0]?.p99lag !== undefined ? med(runs, (r) => r.p99lag!).toFixed(2) : "",
    ]);
  }
}
console.log(`\n${await machine()}. ${rounds} rounds of ${seconds} s, medians.\n`);
console.log(table(
  [
    "job",
    "target",
    "CPU µs per write",
    "of which JS main threads",
    `writes/s ${cores} cores carry`,
    "disk bytes per byte",
    "p99 lag (s)",
  ],
  rows,
));
for (const job of Object.keys(jobs)) {
  const runs = results.get(`Continuum, 2 sites|${job}`) ?? [];
  const per = (of: "processes" | "threads") => {
    const keys = new Set(runs.flatMap((r) => [...r[of].keys()]));
    return [...keys].map((k) => [k, med(runs, (r) => r[of].get(k) ?? 0)] as const)
      .filter(([, v]) => v >= 0.5).sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ");
  };
  console.log(`\nContinuum, 2 sites, ${job}: CPU µs per write by process: ${per("processes")}`);
  console.log(`by thread (those alive at the end): ${per("threads")}`);
}
