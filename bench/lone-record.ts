// `deno task bench lone-record`: how long one write, alone on an idle system, takes to be
// acknowledged by a remote site (durable in the site's journal, synced in its replica and applied
// by its standby), against the NBD reply the application sees. One site on this machine; the
// gateways as shipped (`--commit-idle 2ms`) and with the idle commit off (`--commit-idle` =
// `--commit-delay`, as before it existed), taking turns. Prints medians; no section in the docs
// (docs/benchmarks.md quotes it).
import { startTopology } from "../tests/lib/cluster.ts";
import { NbdClient } from "../tests/lib/nbd-client.ts";
import { median, table } from "./lib.ts";

const MiB = 1 << 20;
const WRITES = Number(Deno.env.get("BENCH_WRITES") ?? 12);
const SIZES = [4096, MiB];
const setups: { name: string; extra: string[] }[] = [
  { name: "as shipped (--commit-idle 2ms)", extra: [] },
  { name: "idle commit off", extra: ["--commit-idle", "100ms"] },
];

async function measure(extra: string[], size: number): Promise<{ reply: number[]; ack: number[] }> {
  const t = await startTopology("bench-lone", {
    size: 256 * MiB,
    sites: ["s1"],
    gatewayExtra: extra,
    remoteExtra: extra,
  });
  try {
    await t.agent.proc.waitForLog("every chunk that may differ was resent", 120_000);
    await t.caughtUp();
    const c = await NbdClient.connect(t.agent.socket);
    await c.go("vol0");
    const reply: number[] = [], ack: number[] = [];
    for (let k = 0; k < WRITES; k++) {
      const data = crypto.getRandomValues(new Uint8Array(Math.min(size, 65536)));
      const buf = new Uint8Array(size);
      for (let o = 0; o < size; o += data.length) buf.set(data.subarray(0, size - o), o);
      const before = (await t.sites())[0].volumes[0].ackedSeq;
      const t0 = performance.now();
      await c.write((k + 1) * 4 * MiB, buf);
      const t1 = performance.now();
      // the site's acknowledgement as the local gateway reports it (polled: adds up to 2 ms)
      while ((await t.sites())[0].volumes[0].ackedSeq <= before) await new Promise((r) => setTimeout(r, 2));
      ack.push(performance.now() - t0);
      reply.push(t1 - t0);
      await new Promise((r) => setTimeout(r, 300)); // alone: whatever it started has settled
    }
    await c.disconnect();
    return { reply, ack };
  } finally {
    await t.stop();
    await Deno.remove(t.dir, { recursive: true });
  }
}

const rows: (string | number)[][] = [];
for (const size of SIZES) {
  const got = new Map<string, { reply: number[]; ack: number[] }>();
  for (const s of setups) {
    const r = await measure(s.extra, size);
    got.set(s.name, r);
    console.log(
      `${size} B, ${s.name}: reply ${median(r.reply).toFixed(1)} ms, site ack ${median(r.ack).toFixed(1)} ms`,
    );
  }
  const [on, off] = setups.map((s) => got.get(s.name)!);
  rows.push([
    size >= MiB ? `${size / MiB} MiB` : `${size / 1024} KiB`,
    median(on.reply).toFixed(1),
    median(on.ack).toFixed(1),
    median(off.ack).toFixed(1),
    (median(off.ack) / median(on.ack)).toFixed(1),
  ]);
}
console.log(
  "\n" + table(
    ["write", "NBD reply (ms)", "site ack (ms)", "site ack, idle commit off (ms)", "off ÷ on"],
    rows,
  ),
);
