// Recovery points on a real topology (local gateway, agent, two remote sites with retention):
// a known sequence of writes with barriers and a named checkpoint; a failover test copy at each
// point, at every site, equals the volume's content at that point (kept by the test); the same
// after a remote gateway restart. A checkpoint made while a site is away reaches it in its stream
// when it catches up, after a restart of the local gateway too. Unknown points, a checkpoint name
// taken twice, bad names and a site without retention are refused with a clear reason, and nothing
// is copied.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { run, sha256File, startTopology, waitFor } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { WebClient } from "./lib/browser.ts";
import { registerDbTask } from "./lib/inventory.ts";

const t = suite("recovery points");
const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

interface SitePoints {
  site: string;
  ok: boolean;
  error?: string;
  points: { seq: number; time: number; kind: string; names?: string[] }[];
  retention: { bytes: number; points: number };
  windowMs: number;
}

t("a test copy at every point and every site equals the volume at that point", async () => {
  if (!need("recovery points on a real topology", { tools: ["qemu-io"] })) return;
  const allowed = new URL("../test-output/", import.meta.url).pathname;
  let passed = false;
  const topo = await startTopology("pt-topo", {
    size: SIZE,
    sites: ["dr1", "dr2"],
    gatewayExtra: ["--device-prefix", allowed],
    remoteExtra: ["--retention", "1h", "--retention-size", "64M"],
  });
  try {
    const c = new WebClient(`http://127.0.0.1:${topo.gw.httpPort}`, { token: topo.gw.token });
    await registerDbTask(c, topo, SIZE, { sites: ["dr1", "dr2"] });
    const files = topo.copies();
    const state = async () => (await c.expect(200, "GET", "/api/tasks/db") as { state: string }).state;
    await c.expect(200, "POST", "/api/tasks/db/actions/start");
    await waitFor(async () => await state() === "protected", 90_000, "the task to be protected", 250);

    // the known sequence: each phase overwrites part of the last one, then a barrier
    const kept = new Map<number, string>();
    const lastSeq = async () => (await topo.gw.status()).volumes.find((v) => v.name === "vol0")!.lastSeq;
    for (let k = 0; k < 5; k++) {
      await run("qemu-io", [
        "-f",
        "raw",
        topo.agent.uri("vol0"),
        "-c",
        `write -P ${0x10 + k} ${k * 1024}k 1536k`,
        "-c",
        "flush",
      ]);
      await topo.caughtUp();
      kept.set(await lastSeq(), await sha256File(files.lsp));
      if (k === 2) {
        const made = await c.expect(201, "POST", "/api/tasks/db/checkpoints", { name: "before-damage" }) as {
          checkpoint: { seq: number };
          sites: { site: string; linked: boolean }[];
        };
        assert.is(made.checkpoint.seq, await lastSeq(), "a checkpoint names the newest sequence");
        assert.equal(made.sites, [{ site: "dr1", linked: true }, { site: "dr2", linked: true }]);
      }
    }
    const cpSeq = [...kept.keys()][2];

    // the points each site holds: every barrier, the checkpoint named at both
    const listed = await c.expect(200, "GET", "/api/tasks/db/points") as {
      sites: SitePoints[];
      checkpoints: unknown[];
    };
    assert.is(listed.checkpoints.length, 1);
    for (const s of listed.sites) {
      assert.ok(s.ok, `${s.site}: ${s.error}`);
      assert.is(s.windowMs, 3_600_000);
      const seqs = new Set(s.points.map((p) => p.seq));
      for (const seq of kept.keys()) assert.ok(seqs.has(seq), `${s.site} holds point ${seq}`);
      assert.equal(s.points.find((p) => p.seq === cpSeq)?.names, ["before-damage"]);
      assert.ok(s.retention.bytes > 0);
    }

    // the sites' retention in the status and /metrics
    await waitFor(
      async () => {
        const st = await c.expect(200, "GET", "/api/status") as {
          retention: { site: string; ok: boolean; windowMs: number; volumes: { points: number }[] }[];
        };
        return st.retention.length === 2 && st.retention.every((r) => r.ok && r.windowMs === 3_600_000) &&
          st.retention.every((r) => r.volumes[0]?.points >= kept.size);
      },
      15_000,
      "the retention in the status",
      250,
    );
    const metrics = await (await fetch(`http://127.0.0.1:${topo.gw.httpPort}/metrics`, {
      headers: { authorization: `Bearer ${topo.gw.token}` },
    })).text();
    assert.match(metrics, /continuum_retention_window_seconds\{site="dr2"\} 3600/);
    assert.match(metrics, /continuum_retention_points\{site="dr1",volume="a1\/vol0"\} \d+/);

    /** The content of a test copy at a point; with mayExpire, undefined when the site says it expired. */
    const testAt = async (site: string, point: number | string, o: { mayExpire?: boolean } = {}) => {
      const res = await c.req("POST", "/api/tasks/db/actions/failover-test", { site, point });
      if (o.mayExpire && res.status === 409 && /has expired/.test((res.body as { error: string }).error)) {
        return undefined;
      }
      assert.is(res.status, 200, res.text);
      const r = res.body as { detail: { test: { seq: number; export: string } } };
      const dir = `${topo.remotes[site].home}/tests`;
      const [copy] = [...Deno.readDirSync(dir)].map((e) => e.name);
      const hash = await sha256File(`${dir}/${copy}`);
      await c.expect(200, "POST", "/api/tasks/db/actions/end-test", {});
      assert.is(await state(), "protected");
      if (typeof point === "number") assert.is(r.detail.test.seq, point);
      return hash;
    };
    for (const site of ["dr1", "dr2"]) {
      for (const [seq, hash] of kept) assert.is(await testAt(site, seq), hash, `${site} at point ${seq}`);
      assert.is(await testAt(site, "before-damage"), kept.get(cpSeq), `${site} at the checkpoint`);
    }

    // bad points: refused with the site's reason, no copy left, the task stays protected
    const refused = async (body: unknown, status: number, re: RegExp) => {
      const r = await c.req("POST", "/api/tasks/db/actions/failover-test", body);
      assert.is(r.status, status, r.text);
      const error = (r.body as { error: string }).error;
      assert.ok(re.test(error), `${error} does not match ${re}`);
      assert.is(await state(), "protected");
      assert.equal([...Deno.readDirSync(`${topo.remotes.dr1.home}/tests`)], []);
    };
    await refused({ site: "dr1", point: 999_999 }, 409, /point 999999 is not held yet: the newest is \d+/);
    await refused({ site: "dr1", point: "nope" }, 409, /no checkpoint named "nope"/);
    await refused(
      { site: "dr1", point: "a b" },
      400,
      /point: must be a sequence number or a checkpoint name/,
    );
    await refused({ site: "dr1", point: -1 }, 400, /point: must not be negative/);
    const again = await c.req("POST", "/api/tasks/db/checkpoints", { name: "before-damage" });
    assert.is(again.status, 409);
    assert.match((again.body as { error: string }).error, /checkpoint "before-damage" of a1\/vol0 exists/);
    const bad = await c.req("POST", "/api/tasks/db/checkpoints", { name: "12" });
    assert.is(bad.status, 400);
    assert.match((bad.body as { error: string }).error, /a number names a sequence/);

    // a site away when a checkpoint is made: the name travels in its stream once it is back and
    // catches up past the record, although the local gateway restarted meanwhile (the checkpoint is
    // in its database); no listing of points comes first, so only the stream can have brought it
    await topo.remotes.dr2.proc.stop();
    const qemuWrite = (fill: number, at: string) =>
      run("qemu-io", [
        "-f",
        "raw",
        topo.agent.uri("vol0"),
        "-c",
        `write -P ${fill} ${at} 512k`,
        "-c",
        "flush",
      ]);
    await qemuWrite(0x66, "6M");
    const awaySeq = await lastSeq(), awayHash = await sha256File(files.lsp);
    const away = await c.expect(201, "POST", "/api/tasks/db/checkpoints", { name: "while-away" }) as {
      checkpoint: { seq: number };
      sites: { site: string; linked: boolean }[];
    };
    assert.is(away.checkpoint.seq, awaySeq);
    assert.equal(away.sites, [{ site: "dr1", linked: true }, { site: "dr2", linked: false }]);
    await topo.gw.proc.stop();
    await topo.gw.start();
    await qemuWrite(0x67, "6M"); // the site has to catch up past the checkpoint's record
    await topo.remotes.dr2.start();
    await topo.caughtUp();
    await waitFor(async () => await state() === "protected", 60_000, "the task to be protected again", 250);
    assert.is(await testAt("dr2", "while-away"), awayHash, "dr2 at the checkpoint made while it was away");
    assert.is(await testAt("dr1", "while-away"), awayHash, "dr1 at the same checkpoint");
    kept.set(awaySeq, awayHash);

    // after a restart of a remote gateway: the same points, the same content
    await topo.remotes.dr1.proc.stop();
    await topo.remotes.dr1.start();
    await topo.caughtUp();
    await waitFor(async () => await state() === "protected", 60_000, "the task to be protected again", 250);
    for (const [seq, hash] of [...kept].slice(0, 3)) {
      assert.is(await testAt("dr1", seq), hash, `dr1 at point ${seq} after its restart`);
    }
    // a recovery of the local volume from a site's replica at a point: verified, the mirror follows
    const refusedRecovery = async (body: unknown, code: number, re: RegExp) => {
      const r = await c.req("POST", "/api/recoveries", body);
      assert.is(r.status, code, r.text);
      assert.match((r.body as { error: string }).error, re);
    };
    const base = { volume: "a1/vol0", mode: "manual", strategy: "fast" };
    await refusedRecovery({ ...base, source: "rgp@dr2", sourcePoint: 999_999 }, 409, /not held yet/);
    await refusedRecovery({ ...base, source: "rsp@dr2", sourcePoint: "before-damage" }, 400, /use rgp@SITE/);
    await refusedRecovery({ ...base, sourcePoint: 3 }, 400, /sourcePoint: needs a source/);
    assert.equal(await c.expect(200, "GET", "/api/recoveries"), [], "nothing was started");
    const resyncs = () => topo.gw.proc.log.match(/"replica synchronised"/g)?.length ?? 0;
    const resyncsBefore = resyncs();
    const rec = await c.expect(202, "POST", "/api/recoveries", {
      ...base,
      source: "rgp@dr2",
      sourcePoint: "before-damage",
    }) as { id: number };
    await waitFor(
      async () => {
        const list = await c.expect(200, "GET", "/api/recoveries") as {
          id: number;
          status: string;
          error: string;
        }[];
        const r = list.find((x) => x.id === rec.id);
        if (r?.status === "failed") throw new Error(`the recovery failed: ${r.error}`);
        return r?.status === "done";
      },
      120_000,
      "the recovery at the checkpoint",
      250,
    );
    assert.is(await sha256File(files.lsp), kept.get(cpSeq), "the volume holds the checkpoint's content");
    assert.is(await sha256File(files.lgp), kept.get(cpSeq), "and so does the mirror");
    // the recovery replaced the content without a new write: the sites' resynchronisation ends at the
    // same sequence as the last write before it, which now names the recovered content (the newest
    // state with that number)
    const recSeq = await lastSeq();
    kept.set(recSeq, kept.get(cpSeq)!);
    const recAudit = await c.expect(200, "GET", "/api/audit?limit=100") as { cause: string }[];
    assert.ok(
      recAudit.some((a) => /recovery of the lsp from rgp@dr2 at point before-damage verified/.test(a.cause)),
    );

    // expiry: dr2 started again with a window of 2 s; the old points go, the ones still held stay exact
    // the recovery resynchronised the sites (a rebase: its end learns its sequence from the next write);
    // the write below comes after both resynchronisations, or the recovered content without it would
    // never be a point at a site (the task's state may still say protected right after the recovery)
    await waitFor(
      () => resyncs() >= resyncsBefore + 2,
      60_000,
      "both sites resynchronised after the recovery",
      100,
    );
    await waitFor(async () => await state() === "protected", 60_000, "the task to be protected again", 250);
    await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x77 7M 512k", "-c", "flush"]);
    await topo.caughtUp();
    const nowSeq = await lastSeq(), nowHash = await sha256File(files.lsp);
    (topo.remotes.dr2.o as { extra?: string[] }).extra = ["--retention", "2s", "--retention-size", "8M"];
    await topo.remotes.dr2.proc.stop();
    await topo.remotes.dr2.start();
    await topo.caughtUp();
    await waitFor(async () => await state() === "protected", 60_000, "the task to be protected again", 250);
    const firstKept = [...kept.keys()][0];
    let held: SitePoints["points"] = [];
    await waitFor(
      async () => {
        const l = await c.expect(200, "GET", "/api/tasks/db/points?site=dr2") as { sites: SitePoints[] };
        held = l.sites[0].points ?? [];
        return l.sites[0].ok && held.length > 0 && held[0].seq > firstKept;
      },
      30_000,
      "the old points at dr2 to expire",
      250,
    );
    await refused(
      { site: "dr2", point: firstKept },
      409,
      /point \d+ has expired: the oldest point held is \d+/,
    );
    assert.is(held[held.length - 1].seq, nowSeq, "the newest point is still held");
    assert.is(await testAt("dr2", nowSeq), nowHash, "dr2 at its newest point after expiry");
    // a point older than the 2 s window may expire while this loop runs (a test copy takes a while):
    // one that went meanwhile is refused as expired; one still held is exact
    for (const [seq, hash] of kept) {
      if (seq >= held[0].seq && seq <= nowSeq) {
        const where = `the recovery's ${recSeq}, the newest ${nowSeq}, held from ${held[0].seq}`;
        const got = await testAt("dr2", seq, { mayExpire: seq < nowSeq });
        if (got !== undefined) assert.is(got, hash, `dr2 at ${seq} after expiry (${where})`);
      }
    }

    const status = await topo.remotes.dr1.status() as unknown as {
      retention: { windowMs: number; volumes: { volume: string; points: number }[] };
    };
    assert.is(status.retention.windowMs, 3_600_000);
    assert.ok(status.retention.volumes[0].points >= 5);
    passed = true;
  } finally {
    await topo.stop();
    // a failure keeps the roles' logs and copies for a look
    if (passed) await Deno.remove(topo.dir, { recursive: true });
  }
});

t.run();
