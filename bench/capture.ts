// `deno task bench capture`: fio's nbd engine against the agent (with the local
// gateway journaling on this machine), nbdkit's file plugin and qemu-nbd
// --cache=writeback, on identical fresh files, interleaved, several rounds.
import { fio, type FioResult, machine, median, table, writeSection } from "./lib.ts";
import { startPair, tempDir } from "../tests/lib/cluster.ts";

const seconds = Number(Deno.env.get("BENCH_SECONDS") ?? 8);
const rounds = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const GiB = 1024 ** 3;

const jobs: Record<string, string[]> = {
  "4 KiB random write, iodepth 1": ["--rw=randwrite", "--bs=4k", "--iodepth=1"],
  "4 KiB random write, iodepth 16": ["--rw=randwrite", "--bs=4k", "--iodepth=16"],
  "1 MiB sequential write, iodepth 4": ["--rw=write", "--bs=1M", "--iodepth=4"],
  "4 KiB random write, iodepth 16, fsync=32": ["--rw=randwrite", "--bs=4k", "--iodepth=16", "--fsync=32"],
};

interface Target {
  name: string;
  start(dir: string): Promise<{ uri: string; stop(): Promise<void> }>;
}

async function sparse(path: string): Promise<string> {
  const f = await Deno.open(path, { create: true, write: true, truncate: true });
  await f.truncate(GiB);
  f.close();
  return path;
}

function daemon(cmd: string, args: string[]): { stop(): Promise<void> } {
  const p = new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).spawn();
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
  for (let i = 0; i < 100; i++) {
    try {
      (await Deno.connect({ transport: "unix", path })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`${path} never came up`);
}

const targets: Target[] = [
  {
    name: "Continuum",
    async start() {
      const pair = await startPair("bench-capture", { vol0: GiB });
      return { uri: pair.agent.uri("vol0"), stop: () => pair.stop() };
    },
  },
  {
    name: "nbdkit file",
    async start(dir) {
      const file = await sparse(`${dir}/nbdkit.img`);
      const sock = `${dir}/nbdkit.sock`;
      await Deno.remove(sock).catch(() => {});
      const p = daemon("nbdkit", ["-f", "-U", sock, "file", file]);
      await waitSocket(sock);
      return { uri: `nbd+unix:///?socket=${sock}`, stop: () => p.stop() };
    },
  },
  {
    name: "qemu-nbd writeback",
    async start(dir) {
      const file = await sparse(`${dir}/qemu.img`);
      const sock = `${dir}/qemu.sock`;
      await Deno.remove(sock).catch(() => {});
      // --persistent: qemu-nbd would exit when the first client (waitSocket's probe) leaves
      const p = daemon("qemu-nbd", ["--persistent", "--cache=writeback", "-f", "raw", "-k", sock, file]);
      await waitSocket(sock);
      return { uri: `nbd+unix:///?socket=${sock}`, stop: () => p.stop() };
    },
  },
];

const results = new Map<string, FioResult[]>();
const dir = await tempDir("bench-capture");
for (let round = 1; round <= rounds; round++) {
  for (const t of targets) {
    for (const [job, args] of Object.entries(jobs)) {
      const s = await t.start(dir);
      try {
        const r = await fio(s.uri, args, seconds);
        const key = `${t.name}|${job}`;
        results.set(key, [...(results.get(key) ?? []), r]);
        console.log(
          `round ${round} ${t.name.padEnd(20)} ${job.padEnd(42)} ${r.iops.toFixed(0).padStart(7)} IOPS ${
            r.mbps.toFixed(1).padStart(8)
          } MB/s`,
        );
      } finally {
        await s.stop();
      }
    }
  }
}

const med = (t: string, j: string) => {
  const rs = results.get(`${t}|${j}`)!;
  return { iops: median(rs.map((r) => r.iops)), mbps: median(rs.map((r) => r.mbps)) };
};
const rows = Object.keys(jobs).map((j) => {
  const c = med("Continuum", j), k = med("nbdkit file", j), q = med("qemu-nbd writeback", j);
  const metric = j.startsWith("1 MiB") ? "mbps" : "iops";
  const fmt = (x: { iops: number; mbps: number }) =>
    metric === "mbps" ? `${x.mbps.toFixed(0)} MB/s` : `${x.iops.toFixed(0)} IOPS`;
  return [j, fmt(c), fmt(k), fmt(q), (c[metric] / k[metric]).toFixed(2), (c[metric] / q[metric]).toFixed(2)];
});
const out = table([
  "fio job (nbd engine, 512 MiB region)",
  "Continuum",
  "nbdkit file",
  "qemu-nbd",
  "÷ nbdkit",
  "÷ qemu-nbd",
], rows);
console.log("\n" + out);
await writeSection(
  "capture",
  `## Write interception (\`deno task bench capture\`)

${await machine()}. ${rounds} rounds of ${seconds} s per job, targets interleaved, fresh 1 GiB sparse files;
medians. Continuum is the agent with its local gateway on the same machine journaling every write (ring
buffer + libsql index, group commit) and applying it to its mirror: every client write is written three
times (agent disk, journal, mirror) by three processes sharing the machine's cores with fio.

${out}

Targets from the foundation issue: ≥ 0.5 of nbdkit at 4 KiB iodepth 16, ≥ 0.7 of qemu-nbd at 1 MiB sequential.`,
);
await Deno.remove(dir, { recursive: true });
