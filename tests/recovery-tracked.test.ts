// Recovery at the speed of what changed, end to end: an agent crash during writes
// followed by a tracked recovery moves the chunks of the agent's dirty map and ends
// equal; a recovery with no known common point scans and says so; a recovery pulling
// from a site and the mirror at once finishes from the mirror when the site is
// killed half-way, verified.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { run, sha256File, startTopology, waitFor } from "./lib/cluster.ts";

const t = suite("recovery: tracked divergence, scan fallback, several sources");
const MiB = 1024 * 1024;
type Topo = Awaited<ReturnType<typeof startTopology>>;

interface Row {
  id: number;
  status: string;
  error: string | null;
  method: string;
  methodReason: string | null;
  bytesMoved: number;
  progress: {
    method: string;
    bytesToMove: number;
    bytesMoved: number;
    sources: { name: string; bytesMoved: number; state: string }[];
  } | null;
}

async function api(topo: Topo, path: string, init?: RequestInit): Promise<Response> {
  return await fetch(`http://127.0.0.1:${topo.gw.httpPort}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${topo.gw.token}`, "content-type": "application/json" },
  });
}

async function start(topo: Topo, body: Record<string, unknown>): Promise<number> {
  const r = await api(topo, "/api/recoveries", { method: "POST", body: JSON.stringify(body) });
  const b = await r.json();
  if (r.status !== 202) throw new Error(`recovery refused: ${r.status} ${JSON.stringify(b)}`);
  return b.id;
}

async function row(topo: Topo, id: number): Promise<Row> {
  return ((await (await api(topo, "/api/recoveries")).json()) as Row[]).find((x) => x.id === id)!;
}

async function settled(topo: Topo, id: number): Promise<Row> {
  return await waitFor(
    async () => {
      const me = await row(topo, id);
      if (me.status === "failed") throw new Error(`recovery failed: ${me.error}`);
      return me.status === "done" ? me : undefined;
    },
    180_000,
    `recovery ${id}`,
    100,
  );
}

/** Waits until the agent's dirty map (a 64-byte header, then one bit a chunk) has no bit set. */
async function swept(topo: Topo): Promise<void> {
  const path = `${topo.dir}/agent-a1/vol0.dirty`;
  await waitFor(
    async () => (await Deno.readFile(path)).subarray(64).every((b) => b === 0),
    60_000,
    "the agent's dirty map to be swept",
    200,
  );
}

async function fill(topo: Topo, size: number): Promise<void> {
  const src = `${topo.dir}/random.bin`;
  await run("sh", ["-c", `head -c ${size} /dev/urandom > ${src}`]);
  await run("nbdcopy", [src, topo.agent.uri("vol0")]);
  await topo.caughtUp();
}

t(
  "an agent crash during writes, then a tracked recovery: the dirty map's chunks move, the copies end equal",
  async () => {
    if (!need("tracked recovery", { tools: ["nbdcopy", "qemu-io"] })) return;
    const SIZE = 256 * MiB;
    const topo = await startTopology("recover-tracked", { size: SIZE, sites: [] });
    try {
      await fill(topo, SIZE);
      await swept(topo);
      // writes to 8 chunks spread over the volume; the agent dies while they run
      const writes = run("qemu-io", [
        "-f",
        "raw",
        topo.agent.uri("vol0"),
        ...[3, 40, 77, 120, 150, 190, 220, 250].flatMap((
          c,
        ) => ["-c", `write -P 0x${(c % 200 + 16).toString(16)} ${c}M 512k`]),
      ]).catch(() => {}); // cut off by the crash
      await new Promise((r) => setTimeout(r, 150));
      topo.agent.proc.kill("SIGKILL");
      await writes;
      await topo.agent.proc.stop();
      await topo.agent.start();
      const id = await start(topo, { volume: "a1/vol0", mode: "manual", source: "lgp", method: "tracked" });
      const done = await settled(topo, id);
      assert.is(done.method, "tracked", "it said it tracked");
      assert.match(done.methodReason ?? "", /dirty map/);
      const tracked = Number(/tracked: (\d+) chunks/.exec(done.methodReason ?? "")?.[1]);
      assert.ok(tracked >= 1 && tracked <= 8, `the dirty map held the written chunks only (${tracked})`);
      assert.is(done.bytesMoved, tracked * MiB, "exactly the tracked chunks moved, nothing scanned");
      assert.is(await sha256File(topo.lsp), await sha256File(topo.gw.mirrorPath("a1", "vol0")), "equal");
    } finally {
      await topo.stop();
    }
  },
);

t("a recovery with no known common point scans, and says so", async () => {
  if (!need("scan fallback", { tools: ["nbdcopy"] })) return;
  const SIZE = 64 * MiB;
  const topo = await startTopology("recover-scan", { size: SIZE, sites: [] });
  try {
    await fill(topo, SIZE);
    await topo.agent.proc.stop();
    const f = await Deno.open(topo.lsp, { write: true });
    await f.seek(5 * MiB, Deno.SeekMode.Start);
    await f.write(crypto.getRandomValues(new Uint8Array(4096)));
    f.close();
    await topo.agent.start();
    const done = await settled(topo, await start(topo, { volume: "a1/vol0", mode: "manual", source: "lgp" }));
    assert.is(done.method, "scan");
    assert.match(done.methodReason ?? "", /no common point known/);
    assert.is(done.bytesMoved, MiB, "the scan found the one damaged chunk");
    assert.is(await sha256File(topo.lsp), await sha256File(topo.gw.mirrorPath("a1", "vol0")));
    // bad requests are refused with the reason, and start nothing
    const before = ((await (await api(topo, "/api/recoveries")).json()) as Row[]).length;
    const bad = async (body: Record<string, unknown>, status: number, why: RegExp) => {
      const r = await api(topo, "/api/recoveries", {
        method: "POST",
        body: JSON.stringify({ volume: "a1/vol0", mode: "manual", source: "lgp", ...body }),
      });
      assert.is(r.status, status, JSON.stringify(body));
      assert.match((await r.json()).error, why);
    };
    await bad({ method: "guess" }, 400, /method/);
    await bad({ also: ["elsewhere"] }, 400, /also\.0: use lgp, rgp@SITE or rsp@SITE/);
    await bad({ also: ["lgp"] }, 400, /lgp cannot be a further source/);
    await bad({ verify: "maybe" }, 400, /verify/);
    await bad({ method: "tracked", strategy: "full" }, 400, /a tracked recovery is a fast one/);
    assert.is(((await (await api(topo, "/api/recoveries")).json()) as Row[]).length, before);
  } finally {
    await topo.stop();
  }
});

t("several sources at once: the site killed half-way, the mirror finishes, verified", async () => {
  if (!need("multi-source recovery", { tools: ["nbdcopy"] })) return;
  const SIZE = 128 * MiB;
  const topo = await startTopology("recover-multi", { size: SIZE, sites: ["dr1"], proxied: ["dr1"] });
  try {
    await fill(topo, SIZE);
    const good = await sha256File(topo.lsp);
    await topo.agent.proc.stop();
    await Deno.truncate(topo.lsp, 0);
    await Deno.truncate(topo.lsp, SIZE);
    await topo.agent.start();
    await topo.caughtUp();
    // the site is the reference and the slower source: 2 MB/s, so its eight chunks in flight take
    // seconds while the mirror's share moves at the disk's rate
    topo.proxies.dr1.rateBps = 2e6;
    const id = await start(topo, {
      volume: "a1/vol0",
      mode: "manual",
      source: "rgp@dr1",
      also: ["lgp"],
      strategy: "full",
    });
    const mid = await waitFor(
      async () => {
        const r = await row(topo, id);
        if (r.status !== "running") throw new Error(`the recovery ended before the kill: ${r.status}`);
        // under way from both: the site has delivered a chunk and still holds others
        const site = r.progress?.sources.find((s) => s.name === "rgp@dr1");
        return site && site.bytesMoved > 0 && (r.progress?.bytesMoved ?? 0) >= 4 * MiB ? r : undefined;
      },
      60_000,
      "the recovery to be under way",
      10,
    );
    assert.equal(mid.progress!.sources.map((s) => s.name), ["rgp@dr1", "lgp"]);
    topo.remotes.dr1.proc.kill("SIGKILL");
    const done = await settled(topo, id);
    assert.is(await sha256File(topo.lsp), good, "the volume is whole");
    assert.is(await sha256File(topo.gw.mirrorPath("a1", "vol0")), good, "and the mirror");
    assert.match(done.methodReason ?? "", /rgp@dr1 [\d.]+ MiB \(failed/, "the site's part and its failure");
    assert.is(done.bytesMoved, SIZE, "every chunk moved once into the volume");
    assert.match(done.methodReason ?? "", /lgp [\d.]+ MiB/);
  } finally {
    await topo.stop();
  }
});

t.run();
