// `deno task bench replication`: (1) catch-up of a 1 GiB backlog to one site over
// the sealed site link on loopback, beside nbdcopy of the same bytes between two nbdkit exports in the
// same run; (2) replication lag to two sites under fio 4 KiB random writes at
// iodepth 16; (3) how fast two sites take in a backlog of 4 KiB random writes with their state on
// the disk and on a tmpfs, beside fio's own 4 KiB random writes to that disk.
import { diskCounters, machine, median, percentile, table, writeSection } from "./lib.ts";
import {
  Agent,
  Gateway,
  keygen,
  RemoteGateway,
  run,
  type SiteStatus,
  sparseImage,
  startTopology,
  tempDir,
  waitFor,
  waitMirrorCaughtUp,
  writeSecret,
} from "../tests/lib/cluster.ts";

const MiB = 1024 ** 2, GiB = 1024 ** 3;
const rounds = Number(Deno.env.get("BENCH_ROUNDS") ?? 3);
const lagSeconds = Number(Deno.env.get("BENCH_SECONDS") ?? 20);
// BENCH_ONLY=catch-up, =lag or =small runs only that part (no docs update): for trying a change quickly
const only = Deno.env.get("BENCH_ONLY");
const smallWrites = Number(Deno.env.get("BENCH_SMALL_WRITES") ?? 40_000);
const tmpfs = "/dev/shm";

async function waitSocket(path: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      (await Deno.connect({ transport: "unix", path })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`${path} never came up`);
}

/**
 * Seconds to copy a 1 GiB file of random data between two nbdkit exports with nbdcopy;
 * with flush, the copy ends with the destination durable (as a replica is once acknowledged).
 */
async function nbdcopyBaseline(dir: string, src: string, flush = false): Promise<number> {
  const tag = flush ? "-flush" : ""; // sockets of their own: nbdkit refuses an existing path
  const dst = await sparseImage(`${dir}/nbdcopy-dst.img`, GiB);
  const a = new Deno.Command("nbdkit", {
    args: ["-f", "-U", `${dir}/a${tag}.sock`, "file", src],
    stderr: "null",
  })
    .spawn();
  const b = new Deno.Command("nbdkit", {
    args: ["-f", "-U", `${dir}/b${tag}.sock`, "file", dst],
    stderr: "null",
  })
    .spawn();
  try {
    await waitSocket(`${dir}/a${tag}.sock`);
    await waitSocket(`${dir}/b${tag}.sock`);
    const t0 = performance.now();
    await run("nbdcopy", [
      ...(flush ? ["--flush"] : []),
      `nbd+unix:///?socket=${dir}/a${tag}.sock`,
      `nbd+unix:///?socket=${dir}/b${tag}.sock`,
    ]);
    return (performance.now() - t0) / 1000;
  } finally {
    a.kill("SIGTERM");
    b.kill("SIGTERM");
    await a.status;
    await b.status;
    await Deno.remove(dst);
  }
}

/** Seconds for a site that was away to receive a 1 GiB backlog (the journal holds it). */
async function catchUp(dir: string, src: string): Promise<number> {
  const secret = `${dir}/agent.secret`;
  await writeSecret(secret);
  const localFp = await keygen(`${dir}/local-keys`, "local");
  const remote = await new RemoteGateway({
    dir,
    site: "dr1",
    trust: { local: localFp },
    standbySecrets: {},
    ackAfter: "rgp",
  })
    .init();
  const gw = await new Gateway({
    dir,
    agents: { a1: secret },
    // the backlog and what the mirror still holds: at 1300M a run once filled the ring and
    // waited for the stopped site
    bufferSize: "2G",
    extra: [
      "--key-dir",
      `${dir}/local-keys`,
      "--remote",
      `dr1=127.0.0.1:${remote.port}`,
      "--remote-fingerprint",
      `dr1=${remote.fingerprint}`,
    ],
  }).start();
  const lsp = await sparseImage(`${dir}/lsp.img`, GiB);
  const agent = await new Agent({
    dir,
    id: "a1",
    secretFile: secret,
    gatewaySocket: gw.socket,
    volumes: { vol0: lsp },
  })
    .start();
  try {
    await waitFor(() => gw.status().then((s) => s.volumes.length > 0), 20_000, "agent");
    // the site never connected: it is new, so it would first be synchronised; make it known first
    await remote.start();
    const sites = async () => ((await gw.status()) as unknown as { sites: SiteStatus[] }).sites;
    await waitFor(async () => (await sites())[0]?.volumes[0]?.state === "consistent", 120_000, "site known");
    await remote.proc.stop();
    await run("nbdcopy", [src, agent.uri("vol0")]);
    await waitMirrorCaughtUp(gw, "a1", "vol0", 300_000);
    const backlog = (await sites())[0].lagBytes;
    const started = performance.now();
    await remote.start();
    // timed from the link's connection: before it, the local site's reconnect backoff (up to
    // seconds) and the remote process's start are waited out, which is no transfer rate
    await waitFor(async () => (await sites())[0].connected, 60_000, "site connected", 20);
    const t0 = performance.now();
    await waitFor(async () => (await sites())[0].lagBytes === 0, 600_000, "catch-up", 50);
    const secs = (performance.now() - t0) / 1000;
    console.log(
      `catch-up of ${(backlog / MiB).toFixed(0)} MiB in ${secs.toFixed(1)} s ` +
        `(${((t0 - started) / 1000).toFixed(1)} s more from the remote's start to its connection)`,
    );
    return backlog / secs / 1e6;
  } finally {
    await agent.proc.stop();
    await gw.proc.stop();
    await remote.proc.stop();
  }
}

/** fio's options for 4 KiB random writes at iodepth 16 over an NBD export (a 512 MiB region). */
function randomWrites(uri: string): string[] {
  return ["--ioengine=nbd", `--uri=${uri}`, "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=512M"];
}

interface SmallCatchUp {
  /** Writes a second both sites acknowledged. */
  rate: number;
  /** The machine's disk writes a second meanwhile. */
  diskWrites: number;
}

/**
 * Two sites (each with its standby, `--ack-after rsp`) whose links were held while fio wrote a
 * backlog of 4 KiB random writes: the rate at which both acknowledge it once the links go on,
 * timed from the first 5 % acknowledged (the links' own restart is no rate) to the end.
 */
async function smallCatchUp(under?: string): Promise<SmallCatchUp> {
  const topo = await startTopology("bench-small", {
    size: GiB,
    sites: ["dr1", "dr2"],
    proxied: ["dr1", "dr2"],
    under,
  });
  try {
    await topo.caughtUp();
    for (const p of Object.values(topo.proxies)) p.cut();
    await run("fio", [
      "--name=backlog",
      ...randomWrites(topo.agent.uri("vol0")),
      `--number_ios=${smallWrites}`,
      "--verify_state_save=0",
    ]);
    await waitMirrorCaughtUp(topo.gw, "a1", "vol0", 120_000);
    const behind = async () => Math.max(...(await topo.sites()).map((s) => s.lagBytes));
    const backlog = await behind();
    for (const p of Object.values(topo.proxies)) p.heal();
    await waitFor(async () => await behind() < 0.95 * backlog, 120_000, "the first 5 % acknowledged", 20);
    const t0 = performance.now(), disk0 = await diskCounters();
    await topo.caughtUp(600_000);
    const secs = (performance.now() - t0) / 1000, disk1 = await diskCounters();
    return { rate: 0.95 * smallWrites / secs, diskWrites: (disk1.writes - disk0.writes) / secs };
  } finally {
    await topo.stop();
    await Deno.remove(topo.dir, { recursive: true });
  }
}

/** fio's 4 KiB random writes a second to the disk: 4 writers, each with an fdatasync every 256 writes. */
async function diskRandomWrites(): Promise<number> {
  const dir = await tempDir("bench-disk");
  try {
    const { stdout } = await run("fio", [
      "--name=disk",
      `--filename=${dir}/fio.img`,
      "--size=1G",
      "--rw=randwrite",
      "--bs=4k",
      "--ioengine=psync",
      "--fdatasync=256",
      "--numjobs=4",
      "--group_reporting",
      "--time_based",
      "--runtime=10",
      "--output-format=json",
    ]);
    return JSON.parse(stdout.slice(stdout.indexOf("{"))).jobs[0].write.iops;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const small: { disk: SmallCatchUp[]; tmpfs: SmallCatchUp[]; fio: number[] } = {
  disk: [],
  tmpfs: [],
  fio: [],
};
const hasTmpfs = await Deno.stat(tmpfs).then(() => true, () => false);
for (let r = 1; r <= (only === undefined || only === "small" ? rounds : 0); r++) {
  const disk = await smallCatchUp();
  const mem = hasTmpfs ? await smallCatchUp(tmpfs) : undefined;
  const f = await diskRandomWrites();
  small.disk.push(disk);
  if (mem) small.tmpfs.push(mem);
  small.fio.push(f);
  console.log(
    `round ${r}: two sites take in 4 KiB writes at ${disk.rate.toFixed(0)}/s (disk writes ${
      disk.diskWrites.toFixed(0)
    }/s)${mem ? `, on ${tmpfs} at ${mem.rate.toFixed(0)}/s` : ""}; fio ${f.toFixed(0)} random writes/s`,
  );
}
const smallTable = () => {
  const row = (
    label: string,
    xs: number[],
  ) => [label, median(xs).toFixed(0), xs.map((x) => x.toFixed(0)).join(", ")];
  const onDisk = small.disk.map((x) => x.rate), inMemory = small.tmpfs.map((x) => x.rate);
  const diskWrites = small.disk.map((x) => x.diskWrites), ran = inMemory.length > 0;
  return table(["", "median", "rounds"], [
    row("two sites, state on the disk: writes/s acknowledged", onDisk),
    row("the disk's writes/s meanwhile", diskWrites),
    ...(ran ? [row(`two sites, state on a tmpfs (${tmpfs}): writes/s acknowledged`, inMemory)] : []),
    row("fio: the disk's 4 KiB random writes/s", small.fio),
    ...(ran ? [["ratio disk ÷ tmpfs", (median(onDisk) / median(inMemory)).toFixed(2), ""]] : []),
    [
      "ratio of the disk's writes meanwhile to fio's",
      (median(diskWrites) / median(small.fio)).toFixed(2),
      "",
    ],
  ]);
};
if (only === "small") {
  console.log(`\n${smallTable()}`);
  Deno.exit(0);
}

const copyRates: number[] = [], flushRates: number[] = [], catchRates: number[] = [];
for (let r = 1; r <= (only === "lag" ? 0 : rounds); r++) {
  const dir = await tempDir("bench-rep");
  const src = `${dir}/random.bin`;
  const f = await Deno.open(src, { write: true, create: true });
  const chunk = new Uint8Array(MiB);
  for (let i = 0; i < 1024; i++) {
    for (let o = 0; o < MiB; o += 65536) crypto.getRandomValues(chunk.subarray(o, o + 65536));
    await f.write(chunk);
  }
  f.close();
  const copy = GiB / await nbdcopyBaseline(dir, src) / 1e6;
  const flushed = GiB / await nbdcopyBaseline(dir, src, true) / 1e6;
  const catchRate = await catchUp(dir, src);
  copyRates.push(copy);
  flushRates.push(flushed);
  catchRates.push(catchRate);
  console.log(
    `round ${r}: nbdcopy ${copy.toFixed(0)} MB/s, with --flush ${flushed.toFixed(0)} MB/s, ` +
      `catch-up ${catchRate.toFixed(0)} MB/s`,
  );
  await Deno.remove(dir, { recursive: true });
}
if (only === "catch-up") {
  console.log(
    `median ratio ${(median(catchRates) / median(copyRates)).toFixed(2)} ` +
      `(to nbdcopy --flush: ${(median(catchRates) / median(flushRates)).toFixed(2)})`,
  );
  Deno.exit(0);
}

// replication lag to two sites under a steady 4 KiB random-write load
const topo = await startTopology("bench-lag", { size: GiB, sites: ["dr1", "dr2"] });
const lags: Record<string, number[]> = { dr1: [], dr2: [] };
let iops = 0;
try {
  const fio = new Deno.Command("fio", {
    args: [
      "--name=lag",
      ...randomWrites(topo.agent.uri("vol0")),
      "--time_based",
      `--runtime=${lagSeconds}`,
      "--output-format=json",
      "--verify_state_save=0",
    ],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const out = fio.output();
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, 2000)); // warm-up
  while (Date.now() - t0 < lagSeconds * 1000 - 500) {
    for (const s of await topo.sites()) lags[s.site].push(s.lagSeconds);
    await new Promise((r) => setTimeout(r, 100));
  }
  const text = new TextDecoder().decode((await out).stdout);
  iops = JSON.parse(text.slice(text.indexOf("{"))).jobs[0].write.iops;
} finally {
  await topo.stop();
}

const catchTable = table(
  ["", "median MB/s", "rounds"],
  [
    [
      "Continuum catch-up, 1 GiB backlog, one site",
      median(catchRates).toFixed(0),
      catchRates.map((x) => x.toFixed(0)).join(", "),
    ],
    [
      "nbdcopy between two nbdkit file exports",
      median(copyRates).toFixed(0),
      copyRates.map((x) => x.toFixed(0)).join(", "),
    ],
    [
      "nbdcopy --flush (destination durable at the end)",
      median(flushRates).toFixed(0),
      flushRates.map((x) => x.toFixed(0)).join(", "),
    ],
    ["ratio to nbdcopy", (median(catchRates) / median(copyRates)).toFixed(2), ""],
    ["ratio to nbdcopy --flush", (median(catchRates) / median(flushRates)).toFixed(2), ""],
  ],
);
const lagTable = table(
  ["site", "p50 lag (s)", "p99 lag (s)", "max (s)", "samples"],
  Object.entries(lags).map((
    [s, xs],
  ) => [
    s,
    percentile(xs, 50).toFixed(3),
    percentile(xs, 99).toFixed(3),
    Math.max(...xs).toFixed(3),
    xs.length,
  ]),
);
console.log(`\n${catchTable}\n\n${lagTable}\n(load: ${iops.toFixed(0)} IOPS)\n\n${smallTable()}`);
if (only === "lag") Deno.exit(0);
await writeSection(
  "replication",
  `## Replication (\`deno task bench replication\`)

${await machine()}.

Catch-up: the local gateway's journal holds a 1 GiB backlog (random data written with nbdcopy through the
agent) for a site that was stopped; the site is started and the time from its link's connection until it
acknowledged everything is measured (site with \`--ack-after rgp\`, the sealed site link on loopback; the local
site's reconnect backoff before it, up to 5 s, is not counted). In the same run, nbdcopy copies the same bytes
between two nbdkit file exports, once as it is (the copy ends in the page cache) and once with \`--flush\` (it
ends durable, as an acknowledged replica is). ${rounds} rounds, medians.

${catchTable}

Lag: two sites, each with a remote gateway and a standby agent (\`--ack-after rsp\`), under fio 4 KiB random
writes at iodepth 16 for ${lagSeconds} s (${iops.toFixed(0)} IOPS achieved; every role shares this machine).
Lag is sampled from the local gateway's status every 100 ms: the age of the oldest record a site has not
acknowledged, counted from when it entered the journal. Target: p99 under 1 s.

${lagTable}

Small writes: the same two sites, their links held (by a test proxy) while fio writes ${smallWrites} 4 KiB random
writes through the agent; then the links go on, and the rate is timed from the first 5 % acknowledged by both
sites to the last (the links' own restart is no rate). Once with every role's state on the disk, once on a tmpfs
(${tmpfs}). Each write becomes four random-offset copies at the sites (two replicas, two standby copies, each
synced before its acknowledgement) and one in each site's journal ring. Beside it, fio's own 4 KiB random writes
to the same disk (4 writers, each with an fdatasync every 256 writes, for 10 s), and the machine's disk writes
per second (/proc/diskstats) while the sites caught up. ${rounds} rounds, medians.

${smallTable()}`,
);
