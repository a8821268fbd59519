// CPU time per process and thread, read from /proc: what bounds a benchmark.

const TICK = 100; // USER_HZ

export interface CpuSample {
  /** "process name/thread name" → CPU seconds of the threads alive now */
  threads: Map<string, number>;
  /** process name → CPU seconds of the process, threads that ended included */
  processes: Map<string, number>;
}

/** A process's name in the tables (its role, for Continuum's) and whether it is one of Continuum's. */
function procName(pid: number): { name: string; deno: boolean } {
  try {
    const cmd = Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0");
    if (!cmd.includes("--role")) return { name: cmd[0].split("/").pop()!, deno: false };
    const role = cmd[cmd.indexOf("--role") + 1];
    return { name: cmd.includes("--standby") ? "standby agent" : role, deno: true };
  } catch {
    return { name: String(pid), deno: false };
  }
}

/** utime + stime of a /proc stat line, in seconds. */
function statSeconds(stat: string): number {
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / TICK;
}

/** Every thread's CPU time now, by "process/thread" (Deno's own threads summed by kind). */
export function cpuSample(pids: number[]): CpuSample {
  const threads = new Map<string, number>();
  const processes = new Map<string, number>();
  for (const pid of pids) {
    const proc = procName(pid);
    try {
      const secs = statSeconds(Deno.readTextFileSync(`/proc/${pid}/stat`));
      processes.set(proc.name, (processes.get(proc.name) ?? 0) + secs);
    } catch { /* gone */ }
    let tids: string[] = [];
    try {
      tids = [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => e.name);
    } catch { /* gone */ }
    for (const tid of tids) {
      try {
        const stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
        const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
        // Deno's own threads (JS main thread, tokio workers, V8 helpers) are summed by kind
        const kind = comm.startsWith("cn-")
          ? comm
          : !proc.deno
          ? comm.replace(/[-\d]+$/, "")
          : tid === String(pid)
          ? "JS main thread"
          : `runtime (${comm.replace(/[-\d]+$/, "")})`;
        const key = `${proc.name}/${kind}`;
        threads.set(key, (threads.get(key) ?? 0) + statSeconds(stat));
      } catch { /* thread ended */ }
    }
  }
  return { threads, processes };
}

/** The growth of each entry between two samples, divided by `per` (those above 0.005). */
export function cpuDelta(
  a: CpuSample,
  b: CpuSample,
  per: number,
  of: "threads" | "processes" = "threads",
): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, v] of b[of]) {
    const d = (v - (a[of].get(k) ?? 0)) / per;
    if (d > 0.005) out.set(k, d);
  }
  return out;
}
