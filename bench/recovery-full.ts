// The recovery bench's full-recovery rounds alone, for profiling: `deno task bench recovery-full`
// (ROUNDS=n, default 3; PERF=file records the gateway and the agent with perf during each rebuild).
// A blank 1 GiB local disk rebuilt from the mirror against nbdcopy --flush from an nbdkit export of
// it, caches dropped, the two taking turns at running first; each round prints the load average,
// whether the rebuilt disk equals the mirror, and the CPU time of each thread of the gateway and
// the agent during the rebuild (/proc/PID/task/*/stat). Writes no section of docs/benchmarks.md.
import { median } from "./lib.ts";
import { recoveryClient } from "./recoveries.ts";
import { run, startTopology } from "../tests/lib/cluster.ts";

const MiB = 1024 * 1024, SIZE = 1024 * MiB, ROUNDS = Number(Deno.env.get("ROUNDS") ?? 3);
async function dropCaches() {
  await run("sync", []);
  await Deno.writeTextFile("/proc/sys/vm/drop_caches", "3").catch(() => {});
}
async function timed(fn: () => Promise<unknown>) {
  await dropCaches();
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
}
/** CPU seconds per thread name of a process (utime + stime, clock ticks of 100 Hz). */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const e of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const st = Deno.readTextFileSync(`/proc/${pid}/task/${e.name}/stat`);
      const comm = st.slice(st.indexOf("(") + 1, st.lastIndexOf(")"));
      const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
      const cpu = (Number(f[11]) + Number(f[12])) / 100;
      out.set(comm, (out.get(comm) ?? 0) + cpu);
    } catch { /* ended */ }
  }
  return out;
}
function cpuDelta(a: Map<string, number>, b: Map<string, number>): string {
  const d = [...b].map(([k, v]) => [k, v - (a.get(k) ?? 0)] as const).filter(([, v]) => v >= 0.05)
    .sort((x, y) => y[1] - x[1]);
  const total = d.reduce((s, [, v]) => s + v, 0);
  return `${total.toFixed(2)} s (${d.map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ")})`;
}
const load = async () => (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
const topo = await startTopology("bench-recovery-full", { size: SIZE, sites: [] });
const rows: { full: number; nbdcopy: number }[] = [];
try {
  const recover = recoveryClient(topo);
  const random = `${topo.dir}/random.img`;
  await run("sh", ["-c", `head -c ${SIZE} /dev/urandom > ${random}`]);
  await run("nbdcopy", [random, topo.agent.uri("vol0")]);
  await topo.caughtUp(300_000);
  const lgp = topo.copies().lgp;
  for (let round = 0; round < ROUNDS; round++) {
    await topo.agent.proc.stop();
    await Deno.truncate(topo.lsp, 0);
    await Deno.truncate(topo.lsp, SIZE);
    await topo.agent.start();
    await Deno.remove(`${topo.dir}/nbdcopy.img`).catch(() => {});
    await run("truncate", ["-s", String(SIZE), `${topo.dir}/nbdcopy.img`]);
    let cpu = "";
    const fullRun = () =>
      timed(async () => {
        const gp = topo.gw.proc.pid, ap = topo.agent.proc.pid;
        const g0 = threadCpu(gp), a0 = threadCpu(ap);
        const perf = Deno.env.get("PERF")
          ? new Deno.Command("perf", {
            args: ["record", "-F", "999", "-g", "-o", Deno.env.get("PERF")!, "-p", `${gp},${ap}`],
            stdout: "null",
            stderr: "null",
          }).spawn()
          : undefined;
        const t0 = performance.now();
        const row = await recover({ volume: "a1/vol0", mode: "manual", source: "lgp", strategy: "full" });
        console.log(
          `  recovery: ${
            ((row.finishedAt - row.startedAt) / 1000).toFixed(2)
          } s from its start to its verified end, ${
            ((performance.now() - t0) / 1000).toFixed(2)
          } s seen here`,
        );
        if (perf) {
          perf.kill("SIGINT");
          await perf.status;
        }
        cpu = `gateway ${cpuDelta(g0, threadCpu(gp))}; agent ${cpuDelta(a0, threadCpu(ap))}`;
      });
    const nbdcopyRun = () =>
      timed(() =>
        run("nbdcopy", [
          "--flush",
          "--",
          "[",
          "nbdkit",
          "--readonly",
          "file",
          lgp,
          "]",
          `${topo.dir}/nbdcopy.img`,
        ])
      );
    const l0 = await load();
    let full: number, nbdcopy: number;
    if (round % 2 === 0) {
      full = await fullRun();
      nbdcopy = await nbdcopyRun();
    } else {
      nbdcopy = await nbdcopyRun();
      full = await fullRun();
    }
    // the rebuilt disk equals the mirror
    const cmp = await new Deno.Command("cmp", { args: [lgp, topo.lsp] }).output();
    console.log(
      `round ${round + 1}: full ${full.toFixed(2)} s, nbdcopy --flush ${nbdcopy.toFixed(2)} s, ratio ${
        (nbdcopy / full).toFixed(2)
      }x, load before ${l0}, after ${await load()}, equal ${cmp.success}`,
    );
    console.log(`  cpu during full: ${cpu}`);
    rows.push({ full, nbdcopy });
  }
} finally {
  await topo.stop();
  await Deno.remove(topo.dir, { recursive: true });
}
const f = median(rows.map((r) => r.full)), n = median(rows.map((r) => r.nbdcopy));
console.log(
  `median: full ${f.toFixed(2)} s, nbdcopy ${n.toFixed(2)} s, ratio ${
    (n / f).toFixed(2)
  }x (per-round ratios ${rows.map((r) => (r.nbdcopy / r.full).toFixed(2)).join(", ")})`,
);
