// Shared by the benchmarks: statistics, fio, the machine description, and the
// sections of docs/benchmarks.md each benchmark rewrites.
const root = new URL("../", import.meta.url).pathname;
const docPath = `${root}docs/benchmarks.md`;

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))];
}

async function text(cmd: string, args: string[]): Promise<string> {
  try {
    const o = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).output();
    return new TextDecoder().decode(o.stdout).trim();
  } catch {
    return "";
  }
}

/** One line describing this machine (benchmarks are only comparable on one machine). */
export async function machine(): Promise<string> {
  const cpu = (await text("sh", ["-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"])) ||
    "unknown CPU";
  const cores = navigator.hardwareConcurrency;
  const mem = Math.round(Deno.systemMemoryInfo().total / 1024 ** 3);
  const kernel = await text("uname", ["-r"]);
  const fs = await text("sh", ["-c", `df -T ${root} | tail -1 | awk '{print $2}'`]);
  return `${cpu.trim()}, ${cores} cores, ${mem} GiB RAM, Linux ${kernel}, ${fs} on the data path; Deno ${Deno.version.deno}`;
}

export interface FioResult {
  iops: number;
  mbps: number;
  /** The flushes fio sent (its fsync=N). */
  flushes: number;
}

/** Runs fio's nbd engine against uri; returns write IOPS and MB/s. */
export async function fio(uri: string, job: string[], seconds: number): Promise<FioResult> {
  const j = JSON.parse(await runFio(uri, ["--time_based", `--runtime=${seconds}`, ...job])).jobs[0];
  return { iops: j.write.iops, mbps: j.write.bw_bytes / 1e6, flushes: j.sync?.total_ios ?? 0 };
}

/**
 * Writes fio's 512 MiB region once, sequentially. In 4 KiB requests: 1 MiB writes leave the page
 * cache in large folios, and a 4 KiB write into one costs the kernel per block of the folio.
 */
export async function fill(uri: string): Promise<void> {
  await runFio(uri, ["--rw=write", "--bs=4k", "--iodepth=16"]);
}

async function runFio(uri: string, job: string[]): Promise<string> {
  const args = [
    "--name=bench",
    "--ioengine=nbd",
    `--uri=${uri}`,
    "--size=512M",
    "--output-format=json",
    "--verify_state_save=0",
    ...job,
  ];
  const o = await new Deno.Command("fio", { args, stdout: "piped", stderr: "piped" }).output();
  if (!o.success) throw new Error(`fio failed: ${new TextDecoder().decode(o.stderr)}`);
  const out = new TextDecoder().decode(o.stdout);
  return out.slice(out.indexOf("{"));
}

/**
 * Counters of the machine's whole disks (/proc/diskstats): writes completed, bytes written, and
 * milliseconds some request was in progress (summed over the disks).
 */
export async function diskCounters(): Promise<{ writes: number; bytes: number; busyMs: number }> {
  const disks = new Set<string>();
  for await (const e of Deno.readDir("/sys/block")) {
    if (!/^(loop|ram|zram|nbd|dm-|md)/.test(e.name)) disks.add(e.name);
  }
  let writes = 0, sectors = 0, busyMs = 0;
  for (const line of (await Deno.readTextFile("/proc/diskstats")).split("\n")) {
    const f = line.trim().split(/\s+/);
    if (disks.has(f[2])) {
      writes += Number(f[7]);
      sectors += Number(f[9]); // 512-byte sectors
      busyMs += Number(f[12]);
    }
  }
  return { writes, bytes: sectors * 512, busyMs };
}

/** Replaces the section `name` of docs/benchmarks.md (or `path`) between its markers, creating what is missing. */
export async function writeSection(name: string, markdown: string, path = docPath): Promise<void> {
  let doc: string;
  try {
    doc = await Deno.readTextFile(path);
  } catch {
    doc =
      "# Benchmarks\n\nEach section is rewritten by the benchmark named in it (`deno task bench NAME`). The machines here\n" +
      "are shared and noisy: figures are medians of repeated runs, and what matters is the ratio to the peer\n" +
      "measured in the same run.\n";
  }
  const begin = `<!-- bench:${name} -->`, end = `<!-- /bench:${name} -->`;
  const block = `${begin}\n${markdown.trim()}\n${end}`;
  const i = doc.indexOf(begin), j = doc.indexOf(end);
  doc = i >= 0 && j > i
    ? doc.slice(0, i) + block + doc.slice(j + end.length)
    : `${doc.trimEnd()}\n\n${block}\n`;
  await Deno.writeTextFile(path, doc);
  await new Deno.Command(Deno.execPath(), { args: ["fmt", path], stdout: "null", stderr: "null" })
    .output();
}

export function table(header: string[], rows: (string | number)[][]): string {
  const line = (cells: (string | number)[]) => `| ${cells.join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}
