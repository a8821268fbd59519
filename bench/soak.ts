// `deno task soak [MINUTES]` (default 120; not in CI): an agent, its local gateway
// and two remote sites (one behind a proxy) under a steady fio workload with verify,
// while a fault is injected every few minutes in turn: the proxied link cut and
// healed, a remote gateway killed and restarted, the local gateway killed and
// restarted. Every 10 s it samples each role's memory (RSS), the journal's use and
// each site's lag; at the end it checks that every copy converged, writes the
// samples as an SVG chart to docs/soak.svg and a summary to docs/reliability.md.
import { median, writeSection } from "./lib.ts";
import { hashAll, startTopology, waitFor } from "../tests/lib/cluster.ts";

const minutes = Number(Deno.args[0] ?? 120);
const faultEveryS = Number(Deno.env.get("SOAK_FAULT_EVERY_S") ?? 240);
const MiB = 1024 * 1024;
const root = new URL("../", import.meta.url).pathname;

function rssMiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

interface Sample {
  t: number;
  rss: Record<string, number>;
  journalMiB: number;
  lagS: Record<string, number>;
}

const topo = await startTopology("soak", {
  size: 1024 * MiB,
  sites: ["dr1", "dr2"],
  proxied: ["dr1"],
  gatewayExtra: ["--buffer-size", "512M"],
});
const samples: Sample[] = [];
const faults: { t: number; what: string }[] = [];
const started = Date.now();
const fio = new Deno.Command("fio", {
  args: [
    "--name=soak",
    "--ioengine=nbd",
    `--uri=${topo.agent.uri("vol0")}`,
    "--rw=randwrite",
    "--bs=4k",
    "--iodepth=4",
    "--rate_iops=300",
    "--size=1G",
    "--time_based",
    `--runtime=${minutes * 60}`,
    "--verify=crc32c",
    "--verify_backlog=1024",
    "--do_verify=1",
    "--output-format=terse",
  ],
  stdout: "null",
  stderr: "piped",
}).spawn();
let fioAlive = true;
const fioDone = fio.output().finally(() => fioAlive = false);

const sampler = setInterval(async () => {
  try {
    const s = await topo.gw.status() as unknown as {
      journal: { used: number };
      sites: { site: string; lagSeconds: number }[];
    };
    const rss: Record<string, number> = {
      agent: rssMiB(topo.agent.proc.pid),
      "local gateway": rssMiB(topo.gw.proc.pid),
    };
    for (const [name, r] of Object.entries(topo.remotes)) rss[`remote ${name}`] = rssMiB(r.proc.pid);
    samples.push({
      t: (Date.now() - started) / 1000,
      rss,
      journalMiB: s.journal.used / MiB,
      lagS: Object.fromEntries(s.sites.map((x) => [x.site, x.lagSeconds])),
    });
  } catch { /* the gateway is restarting: no sample */ }
}, 10_000);

const kinds = ["cut dr1 for 30 s", "kill -9 remote dr2", "kill -9 local gateway"];
let n = 0;
try {
  while (Date.now() - started < minutes * 60_000 - (faultEveryS + 60) * 1000 && fioAlive) {
    await new Promise((r) => setTimeout(r, faultEveryS * 1000));
    const what = kinds[n++ % kinds.length];
    faults.push({ t: (Date.now() - started) / 1000, what });
    console.log(`${new Date().toISOString()} ${what}`);
    if (what.startsWith("cut")) {
      topo.proxies.dr1.cut();
      await new Promise((r) => setTimeout(r, 30_000));
      topo.proxies.dr1.heal();
    } else if (what.includes("remote")) {
      topo.remotes.dr2.proc.kill("SIGKILL");
      await topo.remotes.dr2.proc.exited;
      await topo.remotes.dr2.start();
    } else {
      topo.gw.proc.kill("SIGKILL");
      await topo.gw.proc.exited;
      await topo.gw.start();
    }
  }
  const out = await fioDone;
  const fioErr = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`fio failed (verify?): ${fioErr.slice(-2000)}`);
  clearInterval(sampler);
  const convergeStart = Date.now();
  await topo.caughtUp(600_000);
  const convergeS = (Date.now() - convergeStart) / 1000;
  await waitFor(
    async () => {
      const h = await hashAll(topo.copies());
      return new Set(Object.values(h)).size === 1;
    },
    300_000,
    "every copy to be equal",
    2000,
  );
  await writeSvg();
  const rssEnd = samples[samples.length - 1].rss, rssStart = samples[Math.min(3, samples.length - 1)].rss;
  const lags = samples.flatMap((s) => Object.values(s.lagS));
  const summary = `## Soak (\`deno task soak\`)

Last run: ${minutes} minutes on the benchmark machine (docs/benchmarks.md): fio 4 KiB random writes at 300
IOPS with crc32c verify through the agent; two sites, one behind a proxy; in turn the proxied
link cut for 30 s, a remote gateway killed with SIGKILL and restarted, the local gateway killed and
restarted (${faults.length} faults, one every ${faultEveryS} s). fio verified every block it wrote; after the run every copy converged
to the same bytes in ${convergeS.toFixed(0)} s. Memory from the first minute to the end (MiB RSS): ${
    Object.keys(rssEnd).map((k) => `${k} ${rssStart[k]?.toFixed(0)} → ${rssEnd[k].toFixed(0)}`).join(", ")
  }; journal use at most ${Math.max(...samples.map((s) => s.journalMiB)).toFixed(0)} MiB; lag median ${
    median(lags).toFixed(2)
  } s, at most ${Math.max(...lags).toFixed(1)} s (during the faults). Chart: [soak.svg](soak.svg).`;
  console.log(`\n${summary}`);
  await writeSection("soak", summary, `${root}docs/reliability.md`);
} finally {
  clearInterval(sampler);
  try {
    fio.kill("SIGKILL");
  } catch { /* ended */ }
  await topo.stop();
}

/** Three stacked panels (memory, journal, lag) over time, plain SVG. */
async function writeSvg(): Promise<void> {
  const W = 900, H = 180, pad = 50, tMax = Math.max(1, ...samples.map((s) => s.t));
  const colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
  const panels: { title: string; series: Record<string, number[]> }[] = [
    {
      title: "memory (MiB RSS)",
      series: Object.fromEntries(
        Object.keys(samples[0].rss).map((k) => [k, samples.map((s) => s.rss[k] ?? 0)]),
      ),
    },
    { title: "journal use (MiB)", series: { journal: samples.map((s) => s.journalMiB) } },
    {
      title: "lag (s)",
      series: Object.fromEntries(
        Object.keys(samples[0].lagS).map((k) => [k, samples.map((s) => s.lagS[k] ?? 0)]),
      ),
    },
  ];
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${
    panels.length * (H + 30)
  }" font-family="sans-serif" font-size="11">`;
  panels.forEach((p, i) => {
    const y0 = i * (H + 30) + 20, max = Math.max(1e-9, ...Object.values(p.series).flat());
    svg += `<text x="${pad}" y="${y0 - 6}" font-weight="bold">${p.title}, max ${max.toFixed(1)}</text>`;
    svg += `<rect x="${pad}" y="${y0}" width="${W - 2 * pad}" height="${H}" fill="none" stroke="#999"/>`;
    for (const f of faults) {
      const x = pad + (f.t / tMax) * (W - 2 * pad);
      svg += `<line x1="${x}" y1="${y0}" x2="${x}" y2="${
        y0 + H
      }" stroke="#ccc"><title>${f.what}</title></line>`;
    }
    Object.entries(p.series).forEach(([name, ys], k) => {
      const pts = ys.map((y, j) =>
        `${(pad + (samples[j].t / tMax) * (W - 2 * pad)).toFixed(1)},${(y0 + H - (y / max) * H).toFixed(1)}`
      ).join(" ");
      svg += `<polyline fill="none" stroke="${colors[k % colors.length]}" points="${pts}"/>`;
      svg += `<text x="${W - pad + 4}" y="${y0 + 12 + 12 * k}" fill="${
        colors[k % colors.length]
      }">${name}</text>`;
    });
  });
  svg += `<text x="${pad}" y="${panels.length * (H + 30) - 4}">time (s, 0–${
    tMax.toFixed(0)
  }); grey lines: faults</text></svg>\n`;
  await Deno.writeTextFile(`${root}docs/soak.svg`, svg);
}
