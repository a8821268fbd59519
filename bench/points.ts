// `deno task bench points`: (1) replication throughput and lag to one site with retention on and
// off (a backlog of random data written through the agent, rounds interleaved); (2) the time to
// bring up a copy 24 h back of a 1 GiB volume with 10 % churn over 48 h of points; (3) the
// retention's space per GiB written.
import { machine, median, table, writeSection } from "./lib.ts";
import { run, startTopology } from "../tests/lib/cluster.ts";
import { encodeRecord, Kind } from "../src/record/record.ts";
import { VolumeLog } from "../src/retention/volume-log.ts";
import { setLogSink } from "../src/log.ts";

const MiB = 1024 ** 2, GiB = 1024 ** 3;
const rounds = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const backlogMiB = Number(Deno.env.get("BENCH_MIB") ?? 256);
setLogSink(() => {});

/** Seconds from the start of a write of `backlogMiB` random MiB until the site acknowledged all. */
async function replicate(retention: boolean): Promise<{ seconds: number; lagP99: number }> {
  const topo = await startTopology("bench-pt", {
    size: backlogMiB * MiB + 64 * MiB,
    sites: ["dr1"],
    ackAfter: "rgp",
    remoteExtra: retention ? ["--retention", "24h", "--retention-size", "8G"] : [],
  });
  try {
    const src = `${topo.dir}/random.img`;
    const f = await Deno.open(src, { write: true, create: true });
    const chunk = new Uint8Array(MiB);
    for (let i = 0; i < backlogMiB; i++) {
      crypto.getRandomValues(chunk.subarray(0, 65536));
      for (let o = 65536; o < MiB; o += 65536) chunk.copyWithin(o, 0, 65536);
      chunk[0] = i & 255; // no two MiB alike
      await f.write(chunk);
    }
    f.close();
    // lag sampled while the data flows: the age of the oldest unacknowledged record
    const lags: number[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const s = (await topo.sites())[0] as unknown as { lagSeconds?: number };
        lags.push(s.lagSeconds ?? 0);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const t0 = performance.now();
    await run("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", src, topo.agent.uri("vol0")]);
    await topo.caughtUp(600_000);
    const seconds = (performance.now() - t0) / 1000;
    sampling = false;
    await sampler;
    lags.sort((a, b) => a - b);
    return { seconds, lagP99: lags[Math.floor(lags.length * 0.99)] ?? 0 };
  } finally {
    await topo.stop();
    await Deno.remove(topo.dir, { recursive: true }).catch(() => {});
  }
}

/** A 1 GiB volume's retention: 10 % of it rewritten in 64 KiB writes over 48 h, a barrier a minute. */
async function bringUp(): Promise<{ seconds: number[]; logBytes: number; written: number }> {
  const dir = await Deno.makeTempDir({ prefix: "bench-ret-" });
  try {
    const now = Date.now();
    const l = await VolumeLog.open(`${dir}/v`, GiB, async (into) => {
      // a full base: 1 GiB of data (a pattern per MiB, written once)
      const f = await Deno.open(into, { write: true, create: true });
      const b = new Uint8Array(MiB);
      for (let i = 0; i < 1024; i++) {
        b.fill(i & 255);
        await f.write(b);
      }
      f.close();
      return { seq: 0, time: now - 48 * 3_600_000, consistent: true };
    });
    const writes = (GiB / 10) / 65536, payload = new Uint8Array(65536);
    crypto.getRandomValues(payload);
    let seq = 0, written = 0;
    const span = 48 * 3_600_000;
    for (let i = 0; i < writes; i++) {
      const time = now - span + Math.floor((i / writes) * span);
      const offset = 65536 * Math.floor(Math.random() * (GiB / 65536));
      seq++;
      const h = { kind: Kind.Write, flags: 0, volume: 1, length: 65536, seq, offset, time, pos: 0 };
      l.take(encodeRecord(h, payload), h);
      written += 65536;
      if (i % 16 === 15) {
        seq++;
        const b = { kind: Kind.Flush, flags: 0, volume: 1, length: 0, seq, offset: 0, time, pos: 0 };
        l.take(encodeRecord(b), b);
      }
      if (i % 256 === 255) await l.flush();
    }
    await l.flush();
    const target = now - 24 * 3_600_000;
    const point = l.points(1e9).filter((p) => p.time <= target).pop()!;
    const seconds: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const into = `${dir}/copy-${r}.img`;
      const t0 = performance.now();
      await l.materialize(point, into);
      seconds.push((performance.now() - t0) / 1000);
      await Deno.remove(into);
    }
    const logBytes = l.bytes;
    await l.close();
    return { seconds, logBytes, written };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const on: { seconds: number; lagP99: number }[] = [], off: { seconds: number; lagP99: number }[] = [];
for (let r = 0; r < rounds; r++) {
  off.push(await replicate(false));
  on.push(await replicate(true));
  console.log(`round ${r + 1}: off ${off[r].seconds.toFixed(2)} s, on ${on[r].seconds.toFixed(2)} s`);
}
const mbps = (x: { seconds: number }) => Math.round(backlogMiB * MiB / x.seconds / 1e6);
const up = await bringUp();
console.log(`bring-up 24 h back: ${up.seconds.map((s) => s.toFixed(2)).join(", ")} s`);
const ratio = median(on.map(mbps)) / median(off.map(mbps));
const stamp = await machine();
await writeSection(
  "points",
  `## Recovery points (\`deno task bench points\`)

${stamp}. ${rounds} rounds, medians.

Replication with retention on and off: ${backlogMiB} MiB of random data written through the agent
(\`qemu-img convert\` to its NBD export) to one site (\`--ack-after rgp\`, the sealed site link on loopback),
timed from the start of the write until the site acknowledged everything; every role shares the machine. With
retention the site also appends each record to its retention log and acknowledges only once that is durable. Lag: the
age of the oldest record the site has not acknowledged, sampled every 100 ms. Target: ≥ 0.9× throughput.

${
    table(["", "retention off", "retention on (24h)", "on ÷ off"], [
      [
        "throughput, MB/s (rounds)",
        `${median(off.map(mbps))} (${off.map(mbps).join(", ")})`,
        `${median(on.map(mbps))} (${on.map(mbps).join(", ")})`,
        ratio.toFixed(2),
      ],
      [
        "lag p99 during the write, s",
        median(off.map((x) => x.lagP99)).toFixed(2),
        median(on.map((x) => x.lagP99)).toFixed(2),
        "",
      ],
    ])
  }

A test copy 24 h back: a 1 GiB volume (full base image), 10 % of it rewritten in 64 KiB writes spread over
48 h with a barrier every 16 writes; the point is the newest barrier at least 24 h old. Time from the request
to the copy's file being complete (base image copied with \`cp --reflink=auto\`: a full copy on this ext4,
then 24 h of the log replayed). Target: under 5 s.

${
    table(["", "seconds (rounds)"], [[
      "copy at a point 24 h back, 1 GiB, 10 % churn",
      `${median(up.seconds).toFixed(2)} (${up.seconds.map((s) => s.toFixed(2)).join(", ")})`,
    ]])
  }

Retention space: the log holds ${
    (up.logBytes / up.written).toFixed(3)
  } bytes per byte written in 64 KiB writes
(72-byte record headers and barriers; 1.018 for 4 KiB writes), i.e. ${
    Math.round(up.logBytes / up.written * 1024)
  } MiB per GiB written, plus one base image per volume (its allocated size).`,
);
