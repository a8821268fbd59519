// `deno task bench capture`: fio's nbd engine against a protected volume and its peers on
// identical fresh files, targets and jobs interleaved, several rounds, medians and ratios:
// - Continuum: the agent and its local gateway alone (journal, mirror; no remote site);
// - Continuum, 2 sites: the demo's topology (two remote gateways, each with its standby agent),
//   sampling every site's replication lag while fio runs;
// - qemu active mirror: qemu-storage-daemon exporting a file with an active blockdev-mirror
//   (copy-mode=write-blocking) to an nbdkit file target, what a user would pick instead;
// - nbdkit file: a plain NBD server on a file, the ceiling.
// The write + flush job also runs the pair with its gateway's ring on tmpfs, a diagnostic: it
// says what the ring's own fdatasync costs on this machine, where every copy shares one disk.
// For every Continuum run it also reads each process's CPU time per thread from /proc (the
// data plane's threads are named cn-*), which says what bounds a job.
import { fill, fio, type FioResult, machine, median, percentile, table, writeSection } from "./lib.ts";
import { tempDir } from "../tests/lib/cluster.ts";
import { daemon, qemuActiveMirror, sparse, waitSocket } from "./peers.ts";
import { pairOnly, type Running, sampleLag, twoSites } from "./targets.ts";
import { cpuDelta, cpuSample } from "./cpu.ts";
import { CAPTURE_JOBS, WRITE_FLUSH } from "./jobs.ts";

const seconds = Number(Deno.env.get("BENCH_SECONDS") ?? 8);
const rounds = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
// BENCH_TARGETS / BENCH_JOBS (names separated by ';') run a part only, without updating the docs
const only = Deno.env.get("BENCH_TARGETS")?.split(";");
const onlyJobs = Deno.env.get("BENCH_JOBS")?.split(";");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const jobs = Object.fromEntries(
  Object.entries(CAPTURE_JOBS).filter(([j]) => !onlyJobs || onlyJobs.includes(j)),
);

interface Target {
  name: string;
  /** The jobs it runs, when not all. */
  jobs?: string[];
  start(dir: string): Promise<Running>;
}

const LAG_BOUND_MS = 500;
const LAG_BOUND_TARGET = `Continuum, 2 sites, --max-lag ${LAG_BOUND_MS}ms`;

const TCP_TARGET = "Continuum, TCP link";
const TMPFS_TARGET = "Continuum, ring on tmpfs";

const targets = ([
  { name: "Continuum", start: () => pairOnly("unix") },
  { name: TCP_TARGET, start: () => pairOnly("tcp") },
  // not durable: the ring on /dev/shm takes its fdatasync off the shared disk
  {
    name: TMPFS_TARGET,
    jobs: [WRITE_FLUSH],
    start: () => pairOnly("unix", `/dev/shm/continuum-bench-${Date.now()}.ring`),
  },
  { name: "Continuum, 2 sites", start: () => twoSites([]) },
  { name: LAG_BOUND_TARGET, start: () => twoSites(["--max-lag", `${LAG_BOUND_MS}ms`]) },
  { name: "qemu active mirror", start: qemuActiveMirror },
  {
    name: "nbdkit file",
    async start(dir: string) {
      const file = await sparse(`${dir}/nbdkit.img`);
      const sock = `${dir}/nbdkit.sock`;
      await Deno.remove(sock).catch(() => {});
      const p = daemon("nbdkit", ["-f", "-U", sock, "file", file]);
      await waitSocket(sock);
      return { uri: `nbd+unix:///?socket=${sock}`, pids: [], stop: () => p.stop() };
    },
  },
] satisfies Target[]).filter((t) => !only || only.includes(t.name));

// ---- the runs ----

interface Run {
  fio: FioResult;
  cpu?: Map<string, number>;
  lags?: number[];
  targetFlushes?: number;
}

const results = new Map<string, Run[]>();
const dir = await tempDir("bench-capture");
for (let round = 1; round <= rounds; round++) {
  for (const [job, args] of Object.entries(jobs)) {
    for (const t of targets) {
      if (t.jobs && !t.jobs.includes(job)) continue;
      const s: Running = await t.start(dir);
      try {
        // Measured on a volume that holds data, as a user's does: the region is written once first,
        // so every copy's pages exist (this machine backs memory on its first touch: docs/benchmarks.md).
        await fill(s.uri);
        await s.settled?.();
        const lag = sampleLag(s);
        // both CPU samples are taken while fio runs: a connection's threads (the NBD reader and
        // its reply thread) end with it, and their time with them
        const running = fio(s.uri, args, seconds);
        await sleep(500);
        const before = cpuSample(s.pids), t0 = performance.now();
        await sleep(Math.max(seconds - 1, 0.5) * 1000);
        const cpu = s.pids.length
          ? cpuDelta(before, cpuSample(s.pids), (performance.now() - t0) / 1000)
          : undefined;
        const r = await running;
        const run: Run = { fio: r, cpu, lags: await lag.done() };
        const key = `${t.name}|${job}`;
        results.set(key, [...(results.get(key) ?? []), run]);
        const lagText = run.lags?.length ? `  p99 lag ${percentile(run.lags, 99).toFixed(3)} s` : "";
        console.log(
          `round ${round} ${t.name.padEnd(20)} ${job.padEnd(36)} ${r.iops.toFixed(0).padStart(7)} IOPS ${
            r.mbps.toFixed(1).padStart(8)
          } MB/s${lagText}`,
        );
      } finally {
        await s.stop();
      }
      const runs = results.get(`${t.name}|${job}`);
      if (s.targetFlushes && runs) runs[runs.length - 1].targetFlushes = await s.targetFlushes();
    }
  }
}

const metricOf = (job: string): "iops" | "mbps" => job.startsWith("1 MiB") ? "mbps" : "iops";
const med = (t: string, j: string): number | undefined => {
  const rs = results.get(`${t}|${j}`);
  return rs ? median(rs.map((r) => r.fio[metricOf(j)])) : undefined;
};
const fmt = (j: string, x: number | undefined) =>
  x === undefined ? "–" : metricOf(j) === "mbps" ? `${x.toFixed(0)} MB/s` : `${x.toFixed(0)} IOPS`;
const ratio = (a: number | undefined, b: number | undefined) =>
  a === undefined || b === undefined ? "–" : (a / b).toFixed(2);

const rows = Object.keys(jobs).map((j) => {
  const c = med("Continuum", j), tcp = med(TCP_TARGET, j);
  const s = med("Continuum, 2 sites", j), b = med(LAG_BOUND_TARGET, j);
  const q = med("qemu active mirror", j), k = med("nbdkit file", j);
  const p99 = (target: string) => {
    const lags = (results.get(`${target}|${j}`) ?? []).flatMap((r) => r.lags ?? []);
    return lags.length ? percentile(lags, 99).toFixed(2) : "–";
  };
  return [
    j,
    fmt(j, c),
    fmt(j, tcp),
    fmt(j, s),
    fmt(j, b),
    fmt(j, q),
    fmt(j, k),
    ratio(c, q),
    ratio(c, k),
    ratio(tcp, q),
    ratio(s, q),
    p99("Continuum, 2 sites"),
    ratio(b, q),
    p99(LAG_BOUND_TARGET),
  ];
});
const out = table([
  "fio job (nbd engine, 512 MiB region)",
  "Continuum",
  "TCP link",
  "Continuum, 2 sites",
  "2 sites, lag bound",
  "qemu active mirror",
  "nbdkit file",
  "÷ qemu",
  "÷ nbdkit",
  "TCP ÷ qemu",
  "2 sites ÷ qemu",
  "2 sites p99 lag (s)",
  "bound ÷ qemu",
  "bound p99 lag (s)",
], rows);
console.log("\n" + out);

/**
 * What a flush makes durable: the flushes that reached qemu's mirror target against those fio
 * sent, and the pair's write + flush with its ring's fdatasync off the shared disk.
 */
function flushNote(): string {
  const q = results.get(`qemu active mirror|${WRITE_FLUSH}`) ?? [];
  const tmpfs = med(TMPFS_TARGET, WRITE_FLUSH);
  if (!q.length || tmpfs === undefined) return "";
  const sent = q.reduce((n, r) => n + r.fio.flushes, 0);
  const reached = q.reduce((n, r) => n + (r.targetFlushes ?? 0), 0);
  const qemu = med("qemu active mirror", WRITE_FLUSH), pair = med("Continuum", WRITE_FLUSH);
  return `**Write + flush.** In the ${q.length} run${
    q.length === 1 ? "" : "s"
  } of the job fio sent qemu's export ${sent} flushes and its
mirror's target received ${reached} (filling the region included): qemu's flush makes its source durable, not
the second copy. Continuum's makes both copies durable, the agent's disk and the gateway's ring: two fdatasyncs
on this machine's one disk. With the ring on tmpfs (not durable: a diagnostic that takes its fdatasync off the
disk) the pair made ${fmt(WRITE_FLUSH, tmpfs)}, ${ratio(tmpfs, qemu)} of qemu, against ${
    ratio(pair, qemu)
  } with the ring on the disk.`;
}
const flush = flushNote();
if (flush) console.log("\n" + flush);

/** CPU per process and thread (cores busy, median over rounds), the busiest first. */
function cpuTable(target: string, job: string): string {
  const runs = results.get(`${target}|${job}`) ?? [];
  const keys = new Set(runs.flatMap((r) => [...(r.cpu?.keys() ?? [])]));
  const rows = [...keys].map((k) => [k, median(runs.map((r) => r.cpu?.get(k) ?? 0))] as const)
    .filter(([, v]) => v >= 0.02)
    .sort((a, b) => b[1] - a[1]);
  const total = rows.reduce((n, [, v]) => n + v, 0);
  return `${job}: ${total.toFixed(2)} cores in all; ` +
    rows.slice(0, 8).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ");
}
const cpu = targets.filter((t) => t.name.startsWith("Continuum") && !t.jobs).map((t) =>
  `**${t.name}** (cores busy per process/thread while fio ran, medians; fio itself not counted):\n\n` +
  Object.keys(jobs).map((j) => `- ${cpuTable(t.name, j)}`).join("\n")
).join("\n\n");
console.log("\n" + cpu);

if (!only && !onlyJobs) {
  await writeSection(
    "capture",
    `## Write interception (\`deno task bench capture\`)

${await machine()}. ${rounds} rounds of ${seconds} s per job, jobs and targets interleaved, each run on
fresh 1 GiB sparse files whose 512 MiB region is first written once (sequentially, 4 KiB requests) and held by
every copy, so the volume holds data as a user's does; medians. Every process (fio, the roles, the peers)
shares the machine's cores.

- **Continuum**: the agent and its local gateway: every write goes to the agent's disk and, over a Unix
  socket (in clear after the handshake: docs/decisions.md), to the gateway's journal ring (group commit), then
  to its mirror: three copies by two processes.
- **TCP link**: the same with the agent's link over TCP on 127.0.0.1, sealed (AES-256-GCM) as over a network.
- **Continuum, 2 sites**: the same plus two remote gateways, each with its standby agent (the demo's
  topology): nine copies by six processes. Its lag column is the p99 of every site's replication lag sampled
  every 250 ms while fio ran.
- **2 sites, lag bound**: the same with \`--max-lag ${LAG_BOUND_MS}ms\` on the local gateway: the agent's writes
  slow to the pace of the slowest site, whose lag stays within the bound.
- **qemu active mirror**: qemu-storage-daemon exporting a file with \`blockdev-mirror sync=full
  copy-mode=write-blocking\` to an nbdkit file target (waited until ready): two copies, each write
  synchronous on both.
- **nbdkit file**: one copy, the ceiling.

${out}

${flush}

${cpu}`,
  );
}
await Deno.remove(dir, { recursive: true });
