// Recovery beyond the basics: a 1 GiB volume with 1% changed moves at most 2%; a
// recovery killed half-way resumes from its checkpoint; the policy picks the
// cheapest valid source and says why, and an inconsistent source needs force; a
// scheduled recovery runs on time across a gateway restart.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { type SiteStatus, startTopology, waitFor } from "./lib/cluster.ts";
import { run } from "./lib/cluster.ts";

const t = suite("recovery: policy, resume, schedule");
const MiB = 1024 * 1024;
type Topo = Awaited<ReturnType<typeof startTopology>>;

async function api(topo: Topo, path: string, init?: RequestInit): Promise<Response> {
  return await fetch(`http://127.0.0.1:${topo.gw.httpPort}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${topo.gw.token}`, "content-type": "application/json" },
  });
}

interface Row {
  id: number;
  status: string;
  error: string | null;
  bytesMoved: number;
  bytesCompared: number;
  checkpoint: number;
  chunks: number;
  scheduledAt: number | null;
  startedAt: number | null;
  progress: { done: number; chunks: number } | null;
}

async function rows(topo: Topo): Promise<Row[]> {
  return await (await api(topo, "/api/recoveries")).json();
}

async function post(
  topo: Topo,
  body: Record<string, unknown>,
): Promise<{ status: number; json: Record<string, unknown> }> {
  const r = await api(topo, "/api/recoveries", { method: "POST", body: JSON.stringify(body) });
  return { status: r.status, json: await r.json() };
}

async function done(topo: Topo, id: number, timeoutMs = 120_000): Promise<Row> {
  return await waitFor(
    async () => {
      const me = (await rows(topo)).find((x) => x.id === id)!;
      if (me.status === "failed") throw new Error(`recovery failed: ${me.error}`);
      return me.status === "done" ? me : undefined;
    },
    timeoutMs,
    `recovery ${id}`,
    200,
  );
}

async function damage(topo: Topo, fn: (f: Deno.FsFile) => Promise<void>): Promise<void> {
  await topo.agent.proc.stop();
  const f = await Deno.open(topo.lsp, { write: true });
  await fn(f);
  f.close();
  await topo.agent.start();
}

t("fast recovery of a 1 GiB volume with 1% of its chunks changed moves at most 2%", async () => {
  const topo = await startTopology("recover-1g", { size: 1024 * MiB, sites: [] });
  try {
    await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x33 0 64M", "-c", "flush"]);
    await topo.caughtUp();
    await damage(topo, async (f) => {
      for (let c = 3; c < 1024; c += 100) {
        await f.seek(c * MiB, Deno.SeekMode.Start);
        await f.write(crypto.getRandomValues(new Uint8Array(65536)));
      }
    });
    const { json } = await post(topo, { volume: "a1/vol0", mode: "manual", source: "lgp", strategy: "fast" });
    const r = await done(topo, Number(json.id));
    console.log(
      `\n  fast recovery of 1 GiB with 1% changed: moved ${r.bytesMoved} bytes = ${
        (100 * r.bytesMoved / (1024 * MiB)).toFixed(2)
      }%, compared ${r.bytesCompared}`,
    );
    assert.ok(r.bytesMoved <= 0.02 * 1024 * MiB, `moved at most 2% (${r.bytesMoved})`);
    assert.ok(r.bytesMoved >= 10 * MiB, "the changed chunks were moved");
  } finally {
    await topo.stop();
  }
});

t("a recovery killed half-way resumes and moves no more than the rest plus one chunk", async () => {
  const topo = await startTopology("recover-resume", { size: 512 * MiB, sites: ["dr1"] });
  try {
    await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x44 0 8M", "-c", "flush"]);
    await topo.caughtUp();
    await damage(topo, (f) => f.truncate(0).then(() => f.truncate(512 * MiB)));
    // full, 64 KiB chunks over the site link: long enough to be interrupted
    const { status, json } = await post(topo, {
      volume: "a1/vol0",
      mode: "manual",
      source: "rgp@dr1",
      strategy: "full",
      chunkSize: 65536,
    });
    assert.is(status, 202, JSON.stringify(json));
    const id = Number(json.id);
    const chunks = 512 * MiB / 65536;
    await waitFor(
      async () => {
        const me = (await rows(topo)).find((x) => x.id === id)!;
        return me.checkpoint >= chunks * 0.4 ? me : undefined;
      },
      120_000,
      "the recovery to get going",
      20,
    );
    topo.gw.proc.kill("SIGKILL");
    await topo.gw.proc.exited;
    // what the database says was done when it died
    await topo.gw.start();
    const atRestart = (await rows(topo)).find((x) => x.id === id)!;
    assert.ok(atRestart.checkpoint < chunks, "it was interrupted before the end");
    const r = await done(topo, id);
    const remaining = (chunks - atRestart.checkpoint) * 65536;
    const movedAfter = r.bytesMoved - atRestart.bytesMoved;
    console.log(
      `\n  resumed at chunk ${atRestart.checkpoint}/${chunks}: moved ${movedAfter} bytes for ${remaining} remaining`,
    );
    assert.ok(movedAfter <= remaining + 65536, `moved ${movedAfter} ≤ remaining ${remaining} + one chunk`);
    assert.match(topo.gw.proc.log, /resuming an interrupted recovery/);
    const lsp = await Deno.readFile(topo.lsp);
    assert.ok(lsp.subarray(0, 8 * MiB).every((b) => b === 0x44), "the data is back");
  } finally {
    await topo.stop();
  }
});

t(
  "policy: the cheapest valid source is chosen and explained; an inconsistent source needs force",
  async () => {
    const topo = await startTopology("recover-policy", {
      size: 128 * MiB,
      sites: ["dr1", "dr2"],
      gatewayExtra: ["--remote-bandwidth", "dr2=2M"],
    });
    try {
      await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x55 0 4M", "-c", "flush"]);
      await topo.caughtUp();
      // an interrupted recovery of the mirror leaves it inconsistent
      const m = await post(topo, {
        volume: "a1/vol0",
        mode: "manual",
        source: "rgp@dr1",
        target: "lgp",
        strategy: "full",
        chunkSize: 65536,
      });
      assert.is(m.status, 202);
      await api(topo, `/api/recoveries/${m.json.id}`, { method: "DELETE" });
      await waitFor(
        async () => (await rows(topo)).find((x) => x.id === m.json.id)?.status === "cancelled",
        20_000,
        "cancel",
      );
      const status = await topo.gw.status();
      const seq = status.volumes[0].lastSeq;

      let c = await (await api(topo, `/api/recovery-candidates?volume=a1/vol0&seq=${seq}`)).json();
      const by = (s: string) => c.candidates.find((x: { source: string }) => x.source === s);
      assert.is(by("lgp").valid, false, "the inconsistent mirror is refused");
      assert.match(by("lgp").reason, /inconsistent/);
      assert.ok(by("rgp@dr1").valid && by("rgp@dr2").valid);
      assert.ok(by("rgp@dr2").costSeconds > by("rgp@dr1").costSeconds, "the slow link costs more");
      assert.is(c.chosen, "rgp@dr1");
      assert.match(c.explanation, /rgp@dr1 chosen/);
      assert.match(c.explanation, /lgp: its copy is inconsistent/);
      // every valid copy at the chosen point pulls a share sized by its rate, named in the explanation
      assert.ok(c.also.includes("rgp@dr2"), JSON.stringify(c.also));
      assert.match(
        c.explanation,
        /pulled from \d sources at once: rgp@dr1 \d+ %.*rgp@dr2 \d+ %.*\(by measured rate\)/,
      );

      // dr1 goes away and more is written: only dr2 reaches the new disaster point
      await topo.standbys.dr1.proc.stop();
      await topo.remotes.dr1.proc.stop();
      await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x66 8M 1M", "-c", "flush"]);
      await waitFor(
        async () => {
          const s = await topo.gw.status();
          const sites = (s as unknown as { sites: SiteStatus[] }).sites;
          return sites.find((x) => x.site === "dr2")!.volumes[0].ackedSeq === s.volumes[0].lastSeq;
        },
        60_000,
        "dr2 to catch up",
        200,
      );
      const seq2 = (await topo.gw.status()).volumes[0].lastSeq;
      c = await (await api(topo, `/api/recovery-candidates?volume=a1/vol0&seq=${seq2}`)).json();
      assert.is(c.chosen, "rgp@dr2");
      assert.match(by("rgp@dr1").reason, /unreachable/);
      console.log(`\n  ${c.explanation}`);

      // an inconsistent source: refused by manual mode without force, accepted with it
      const refused = await post(topo, {
        volume: "a1/vol0",
        mode: "manual",
        source: "lgp",
        strategy: "fast",
      });
      assert.is(refused.status, 409);
      assert.match(String(refused.json.error), /inconsistent: recovering from it needs force/);
      const policy = await post(topo, {
        volume: "a1/vol0",
        mode: "policy",
        strategy: "fast",
        point: { seq: seq2 },
      });
      assert.is(policy.status, 202);
      assert.is(policy.json.source, "rgp@dr2");
      await done(topo, Number(policy.json.id));
    } finally {
      await topo.stop();
    }
  },
);

t("a scheduled recovery set one minute ahead runs on time after a gateway restart", async () => {
  const topo = await startTopology("recover-schedule", { size: 32 * MiB, sites: [] });
  try {
    await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x77 0 1M", "-c", "flush"]);
    await topo.caughtUp();
    const at = Date.now() + 60_000;
    const { status, json } = await post(topo, {
      volume: "a1/vol0",
      mode: "manual",
      source: "lgp",
      strategy: "fast",
      at,
    });
    assert.is(status, 202);
    await new Promise((r) => setTimeout(r, 5000));
    await topo.gw.proc.stop();
    await topo.gw.start();
    const r = await done(topo, Number(json.id), 120_000);
    const late = (r.startedAt ?? 0) - at;
    console.log(`\n  scheduled for ${new Date(at).toISOString()}, started ${late} ms later`);
    assert.ok(late >= 0 && late < 3000, `started on time (${late} ms after the time set)`);
  } finally {
    await topo.stop();
  }
});

t.run();
