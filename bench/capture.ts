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
import { startPair, startTopology, tempDir, waitMirrorCaughtUp } from "../tests/lib/cluster.ts";

const seconds = Number(Deno.env.get("BENCH_SECONDS") ?? 8);
const rounds = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
// BENCH_TARGETS / BENCH_JOBS (names separated by ';') run a part only, without updating the docs
const only = Deno.env.get("BENCH_TARGETS")?.split(";");
const onlyJobs = Deno.env.get("BENCH_JOBS")?.split(";");
const GiB = 1024 ** 3;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const WRITE_FLUSH = "4 KiB write + flush, one at a time";
const allJobs: Record<string, string[]> = {
  "4 KiB randwrite qd1": ["--rw=randwrite", "--bs=4k", "--iodepth=1"],
  "4 KiB randwrite qd16": ["--rw=randwrite", "--bs=4k", "--iodepth=16"],
  "1 MiB seq write qd4": ["--rw=write", "--bs=1M", "--iodepth=4"],
  "4 KiB randwrite qd16, fsync=32": ["--rw=randwrite", "--bs=4k", "--iodepth=16", "--fsync=32"],
  [WRITE_FLUSH]: ["--rw=randwrite", "--bs=4k", "--iodepth=1", "--fsync=1"],
};

const jobs = Object.fromEntries(Object.entries(allJobs).filter(([j]) => !onlyJobs || onlyJobs.includes(j)));

interface Running {
  uri: string;
  /** Processes whose CPU is accounted (empty for the peers). */
  pids: number[];
  /** The highest replication lag of any site now, in seconds (Continuum with sites only). */
  lag?: () => Promise<number>;
  /** Waits until every copy holds what was written (Continuum only: the peers' copies are synchronous). */
  settled?: () => Promise<void>;
  /** The flushes the second copy received, once stopped (the qemu mirror's target). */
  targetFlushes?: () => Promise<number>;
  stop(): Promise<void>;
}

interface Target {
  name: string;
  /** The jobs it runs, when not all. */
  jobs?: string[];
  start(dir: string): Promise<Running>;
}

async function sparse(path: string): Promise<string> {
  const f = await Deno.open(path, { create: true, write: true, truncate: true });
  await f.truncate(GiB);
  f.close();
  return path;
}

function daemon(cmd: string, args: string[]): { stop(): Promise<void> } {
  const p = new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).spawn();
  return {
    async stop() {
      try {
        p.kill("SIGTERM");
      } catch { /* exited */ }
      await p.status;
    },
  };
}

async function waitSocket(path: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ transport: "unix", path })).close();
      return;
    } catch {
      await sleep(50);
    }
  }
  throw new Error(`${path} never came up`);
}

/** A minimal QMP client: one command at a time, events skipped. */
class Qmp {
  private buf = "";
  private constructor(private readonly conn: Deno.Conn) {}

  static async connect(path: string): Promise<Qmp> {
    const q = new Qmp(await Deno.connect({ transport: "unix", path }));
    await q.line(); // the greeting
    await q.run("qmp_capabilities");
    return q;
  }

  private async line(): Promise<Record<string, unknown>> {
    const dec = new TextDecoder();
    while (true) {
      const nl = this.buf.indexOf("\n");
      if (nl >= 0) {
        const l = this.buf.slice(0, nl);
        this.buf = this.buf.slice(nl + 1);
        if (l.trim()) return JSON.parse(l);
        continue;
      }
      const b = new Uint8Array(65536);
      const n = await this.conn.read(b);
      if (n === null) throw new Error("QMP closed");
      this.buf += dec.decode(b.subarray(0, n));
    }
  }

  async run(execute: string, args?: unknown): Promise<unknown> {
    await this.conn.write(new TextEncoder().encode(JSON.stringify({ execute, arguments: args }) + "\n"));
    while (true) {
      const r = await this.line();
      if ("event" in r) continue;
      if ("error" in r) throw new Error(`QMP ${execute}: ${JSON.stringify(r.error)}`);
      return r.return;
    }
  }

  close(): void {
    this.conn.close();
  }
}

/** qemu-storage-daemon exporting `src` over NBD with an active mirror to an nbdkit file target. */
async function qemuActiveMirror(dir: string): Promise<Running> {
  const src = await sparse(`${dir}/qsd-src.img`);
  const tgt = await sparse(`${dir}/qsd-tgt.img`);
  const tsock = `${dir}/qsd-tgt.sock`, qsock = `${dir}/qsd.sock`, qmp = `${dir}/qsd-qmp.sock`;
  const stats = `${dir}/qsd-tgt.stats`;
  for (const s of [tsock, qsock, qmp, stats]) await Deno.remove(s).catch(() => {});
  // the stats filter counts the flushes that reach the mirror's target (written when nbdkit exits)
  const target = daemon("nbdkit", ["-f", "-U", tsock, "--filter=stats", "file", tgt, `statsfile=${stats}`]);
  await waitSocket(tsock);
  const qsd = daemon("qemu-storage-daemon", [
    "--blockdev",
    `driver=file,node-name=srcf,filename=${src}`,
    "--blockdev",
    "driver=raw,node-name=src,file=srcf",
    "--blockdev",
    `driver=nbd,node-name=tgt,server.type=unix,server.path=${tsock}`,
    "--nbd-server",
    `addr.type=unix,addr.path=${qsock}`,
    "--export",
    "type=nbd,id=e0,node-name=src,name=vol0,writable=on",
    "--chardev",
    `socket,id=qmp,path=${qmp},server=on,wait=off`,
    "--monitor",
    "chardev=qmp",
  ]);
  const stop = async () => {
    await qsd.stop();
    await target.stop();
  };
  try {
    await waitSocket(qmp);
    const q = await Qmp.connect(qmp);
    try {
      await q.run("blockdev-mirror", {
        "job-id": "m0",
        device: "src",
        target: "tgt",
        sync: "full",
        "copy-mode": "write-blocking",
      });
      const until = Date.now() + 60_000;
      while (true) {
        const jobs = await q.run("query-block-jobs") as { device: string; ready: boolean }[];
        if (jobs.find((j) => j.device === "m0")?.ready) break;
        if (Date.now() > until) throw new Error("the qemu mirror never became ready");
        await sleep(100);
      }
    } finally {
      q.close();
    }
    await waitSocket(qsock);
  } catch (e) {
    await stop();
    throw e;
  }
  const targetFlushes = async () =>
    Number(/^flush: (\d+) ops/m.exec(await Deno.readTextFile(stats))?.[1] ?? 0);
  return { uri: `nbd+unix:///vol0?socket=${qsock}`, pids: [], targetFlushes, stop };
}

/** The gateways' journal rings as a user gets them: the test library's only reserve theirs. */
const AS_SHIPPED = ["--buffer-init", "zeroes"];

/** The demo's topology: the agent, the local gateway and two remote sites with their standbys. */
async function twoSites(gatewayExtra: string[]): Promise<Running> {
  const t = await startTopology("bench-sites", {
    size: GiB,
    sites: ["s1", "s2"],
    gatewayExtra: [...AS_SHIPPED, ...gatewayExtra],
    remoteExtra: AS_SHIPPED,
  });
  await t.agent.proc.waitForLog("every chunk that may differ was resent", 120_000);
  await t.caughtUp();
  return {
    uri: t.agent.uri("vol0"),
    pids: [
      t.agent.proc.pid,
      t.gw.proc.pid,
      ...Object.values(t.remotes).map((r) => r.proc.pid),
      ...Object.values(t.standbys).map((s) => s.proc.pid),
    ],
    lag: async () => Math.max(0, ...(await t.sites()).map((s) => s.lagSeconds ?? 0)),
    settled: () => t.caughtUp(),
    stop: async () => {
      await t.stop();
      await Deno.remove(t.dir, { recursive: true });
    },
  };
}

const LAG_BOUND_MS = 500;
const LAG_BOUND_TARGET = `Continuum, 2 sites, --max-lag ${LAG_BOUND_MS}ms`;

/**
 * The agent and its local gateway alone, the agent's link over a Unix socket (in clear) or TCP
 * (sealed); `ring` puts the gateway's journal ring elsewhere than its data directory.
 */
async function pairOnly(link: "unix" | "tcp", ring?: string): Promise<Running> {
  const gatewayExtra = [...AS_SHIPPED, ...(ring ? ["--buffer", ring] : [])];
  const pair = await startPair("bench-capture", { vol0: GiB }, [], undefined, gatewayExtra, link);
  // measured in steady state: after the new volume's first full synchronisation
  await pair.agent.proc.waitForLog("every chunk that may differ was resent", 120_000);
  const settled = () => waitMirrorCaughtUp(pair.gw, "a1", "vol0", 120_000);
  await settled();
  return {
    uri: pair.agent.uri("vol0"),
    pids: [pair.agent.proc.pid, pair.gw.proc.pid],
    settled,
    // each run's files go with it: three rounds of every job would otherwise fill the disk
    stop: async () => {
      await pair.stop();
      await Deno.remove(pair.dir, { recursive: true });
      if (ring) await Deno.remove(ring);
    },
  };
}

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

// ---- CPU per process and thread, from /proc ----

const TICK = 100; // USER_HZ

interface CpuSample {
  /** "process name/thread name" → CPU seconds */
  threads: Map<string, number>;
}

function procName(pid: number): string {
  try {
    const cmd = Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0");
    const role = cmd[cmd.indexOf("--role") + 1] ?? "deno";
    return cmd.includes("--standby") ? "standby agent" : role;
  } catch {
    return String(pid);
  }
}

function cpuSample(pids: number[]): CpuSample {
  const threads = new Map<string, number>();
  for (const pid of pids) {
    const proc = procName(pid);
    let tids: string[] = [];
    try {
      tids = [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => e.name);
    } catch { /* gone */ }
    for (const tid of tids) {
      try {
        const stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
        const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
        const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        const secs = (Number(f[11]) + Number(f[12])) / TICK; // utime, stime
        // Deno's own threads (JS main thread, tokio workers, V8 helpers) are summed by kind
        const kind = comm.startsWith("cn-")
          ? comm
          : tid === String(pid)
          ? "JS main thread"
          : `runtime (${comm.replace(/[-\d]+$/, "")})`;
        const key = `${proc}/${kind}`;
        threads.set(key, (threads.get(key) ?? 0) + secs);
      } catch { /* thread ended */ }
    }
  }
  return { threads };
}

function cpuDelta(a: CpuSample, b: CpuSample, wall: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, v] of b.threads) {
    const d = (v - (a.threads.get(k) ?? 0)) / wall;
    if (d > 0.005) out.set(k, d);
  }
  return out;
}

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
        const lags: number[] = [];
        let sampling = true;
        const sampler = s.lag
          ? (async () => {
            while (sampling) {
              lags.push(await s.lag!().catch(() => NaN));
              await sleep(250);
            }
          })()
          : undefined;
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
        sampling = false;
        await sampler;
        const run: Run = { fio: r, cpu, lags: s.lag ? lags.filter((x) => !Number.isNaN(x)) : undefined };
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
  topology): five copies by six processes. Its lag column is the p99 of every site's replication lag sampled
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
