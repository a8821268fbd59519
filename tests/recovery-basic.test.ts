// Full and fast recovery rebuild a destroyed agent volume (zeroed, or with 1% of
// its chunks corrupted) from each kind of source: the gateway's mirror (LGP), a
// site's replica (RGP) and a site's standby volume (RSP).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { hashAll, run, sha256File, startTopology, waitFor } from "./lib/cluster.ts";

const t = suite("recovery: full and fast, from every kind of source");
const MiB = 1024 * 1024;
const SIZE = 100 * MiB;

type Topo = Awaited<ReturnType<typeof startTopology>>;

async function api(topo: Topo, path: string, init?: RequestInit): Promise<Response> {
  return await fetch(`http://127.0.0.1:${topo.gw.httpPort}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${topo.gw.token}`, "content-type": "application/json" },
  });
}

export async function recoverAndWait(topo: Topo, body: Record<string, unknown>) {
  const r = await api(topo, "/api/recoveries", { method: "POST", body: JSON.stringify(body) });
  const started = await r.json();
  if (r.status !== 202) throw new Error(`recovery refused: ${r.status} ${JSON.stringify(started)}`);
  return await waitFor(
    async () => {
      const list = await (await api(topo, "/api/recoveries")).json() as {
        id: number;
        status: string;
        error: string | null;
        bytesMoved: number;
        bytesCompared: number;
      }[];
      const me = list.find((x) => x.id === started.id)!;
      if (me.status === "failed") throw new Error(`recovery failed: ${me.error}`);
      return me.status === "done" ? me : undefined;
    },
    120_000,
    `recovery ${started.id}`,
    200,
  );
}

async function damage(topo: Topo, how: "zeroed" | "corrupted"): Promise<void> {
  await topo.agent.proc.stop();
  const f = await Deno.open(topo.lsp, { write: true });
  if (how === "zeroed") {
    await f.truncate(0);
    await f.truncate(SIZE);
  } else {
    // 1% of the 1 MiB chunks get 4 KiB of garbage
    for (let c = 7; c < SIZE / MiB; c += 100) {
      await f.seek(c * MiB + 8192, Deno.SeekMode.Start);
      await f.write(crypto.getRandomValues(new Uint8Array(4096)));
    }
  }
  f.close();
  await topo.agent.start();
}

t("each strategy × damage × source kind rebuilds the agent's volume exactly", async () => {
  if (!need("recovery", { tools: ["nbdcopy"] })) return;
  const topo = await startTopology("recover", { size: SIZE, sites: ["dr1"] });
  try {
    const src = `${topo.dir}/random.bin`;
    const f = await Deno.open(src, { write: true, create: true });
    for (let i = 0; i < SIZE / MiB; i++) {
      const chunk = new Uint8Array(MiB);
      for (let o = 0; o < MiB; o += 65536) crypto.getRandomValues(chunk.subarray(o, o + 65536));
      await f.write(chunk);
    }
    f.close();
    await run("nbdcopy", [src, topo.agent.uri("vol0")]);
    await topo.caughtUp();
    const good = await sha256File(topo.lsp);
    const files: Record<string, string> = {
      lgp: topo.gw.mirrorPath("a1", "vol0"),
      "rgp@dr1": topo.remotes.dr1.replicaPath("a1", "vol0"),
      "rsp@dr1": topo.rsp.dr1,
    };
    for (const source of ["lgp", "rgp@dr1", "rsp@dr1"]) {
      for (const strategy of ["full", "fast"]) {
        for (const how of ["zeroed", "corrupted"] as const) {
          await damage(topo, how);
          assert.is.not(await sha256File(topo.lsp), good, "the volume was damaged");
          // the previous recovery and the agent's restart resynchronise the site (its copies are
          // inconsistent meanwhile, and refused as a source without force): wait for it
          await topo.caughtUp();
          const done = await recoverAndWait(topo, { volume: "a1/vol0", mode: "manual", source, strategy });
          assert.is(await sha256File(topo.lsp), good, `${strategy} from ${source} after ${how}: restored`);
          assert.is(await sha256File(files[source]), good, "the source is intact");
          if (strategy === "fast" && how === "corrupted") {
            assert.ok(
              done.bytesMoved <= 2 * MiB,
              `fast moved only the damaged chunks (${done.bytesMoved} bytes)`,
            );
          }
          if (strategy === "full") assert.is(done.bytesMoved, SIZE, "full moved every byte");
        }
      }
    }
    // writes work again afterwards, and every copy converges
    await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x5a 0 1M", "-c", "flush"]);
    await topo.caughtUp();
    const sums = await hashAll(topo.copies());
    for (const [k, v] of Object.entries(sums)) assert.is(v, sums.lsp, `${k} equals the agent's volume`);
  } finally {
    await topo.stop();
  }
});

t.run();
