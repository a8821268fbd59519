// The search for the last good point, ransomware-style, on a real topology: ext4 and a SQLite
// database on the protected volume; a good phase (a sentinel row and more transactions), then a
// phase that overwrites the database and a file in place. The search, with a check that opens
// the database on the test copy and reads the sentinel row, finds the last point before the
// damage with a logarithmic number of probes, each in the audit log. The site keeps the points
// because the task's mirror strategy asks for them (no --retention at the site). A check that hangs stops
// the search with a clear error, and the task is back to protected with nothing changed.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { hashAll, run, startTopology, waitFor } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { WebClient } from "./lib/browser.ts";
import { registerDbTask } from "./lib/inventory.ts";
import {
  damagePhase,
  EXT4_SQLITE_TOOLS,
  goodPhase,
  readDatabase,
  SENTINEL_CHECK as CHECK,
} from "./lib/ext4-sqlite.ts";

const t = suite("last good point");
const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

t("the search finds the last point before the damage; a hanging check stops it cleanly", async () => {
  if (
    !need("the last good point on ext4 + SQLite", {
      fuse: true,
      tools: ["qemu-io", ...EXT4_SQLITE_TOOLS],
    })
  ) return;
  const allowed = new URL("../test-output/", import.meta.url).pathname;
  const topo = await startTopology("pt-search", {
    size: SIZE,
    sites: ["dr1"],
    gatewayExtra: ["--device-prefix", allowed],
  });
  try {
    const c = new WebClient(`http://127.0.0.1:${topo.gw.httpPort}`, { token: topo.gw.token });
    // the site runs without --retention: the task's mirror strategy asks for the points
    await registerDbTask(c, topo, SIZE, { mirror: { retentionHours: 1, retentionBytes: 256 * MiB } });
    const files = topo.copies();
    const state = async () => (await c.expect(200, "GET", "/api/tasks/db") as { state: string }).state;
    await c.expect(200, "POST", "/api/tasks/db/actions/start");
    await waitFor(async () => await state() === "protected", 90_000, "the task to be protected", 250);
    const lastSeq = async () => (await topo.gw.status()).volumes.find((v) => v.name === "vol0")!.lastSeq;
    const uri = topo.agent.uri("vol0");

    // the good phase: the database with its sentinel, then more transactions, mounted three times
    await goodPhase(uri, SIZE, `${topo.dir}/m`);
    await topo.caughtUp();
    const good = await lastSeq();

    // the damage: the database and the notes overwritten in place, as ransomware does
    await damagePhase(uri, SIZE, `${topo.dir}/m`);
    await topo.caughtUp();
    const damaged = await lastSeq();
    // and the application goes on writing (more points after the damage)
    await run("qemu-io", ["-f", "raw", uri, "-c", "write -P 0x55 60M 1M", "-c", "flush"]);
    await topo.caughtUp();

    const listed = (await c.expect(200, "GET", "/api/tasks/db/points") as {
      sites: { points: { seq: number }[]; windowMs: number; retention: { maxBytes: number } }[];
    }).sites[0];
    assert.is(listed.windowMs, 3_600_000, "the task's window");
    assert.is(listed.retention.maxBytes, 256 * MiB, "the task's space bound");
    const points = listed.points;
    const before = await hashAll(files);
    const found = await c.expect(200, "POST", "/api/tasks/db/point-search", {
      site: "dr1",
      check: CHECK,
      timeoutSeconds: 120,
    }) as {
      lastGood: { seq: number };
      firstBad: { seq: number };
      searched: number;
      probes: { seq: number; passed: boolean }[];
    };
    assert.ok(
      found.lastGood.seq >= good && found.lastGood.seq < damaged,
      `the last good point ${found.lastGood.seq} lies between the good phase's end ${good} and the damage ${damaged}`,
    );
    assert.ok(found.firstBad.seq > found.lastGood.seq && found.firstBad.seq <= damaged);
    assert.is(found.searched, points.length);
    assert.ok(
      found.probes.length <= Math.ceil(Math.log2(points.length)) + 2,
      `${found.probes.length} probes over ${points.length} points`,
    );
    assert.ok(found.probes.some((p) => p.seq === found.lastGood.seq && p.passed));
    assert.is(await state(), "protected", "the task is back to protected");
    assert.equal(await hashAll(files), before, "the search changed no copy");
    assert.equal([...Deno.readDirSync(`${topo.remotes.dr1.home}/tests`)], [], "no test copy left");
    const audit = await c.expect(200, "GET", "/api/audit?limit=200") as { kind: string; cause: string }[];
    assert.is(
      audit.filter((a) => a.kind === "point-search" && /^point search probe/.test(a.cause)).length,
      found.probes.length,
      "every probe is in the audit log",
    );
    assert.ok(
      audit.some((a) =>
        new RegExp(`the last good point of a1/vol0 .* is sequence ${found.lastGood.seq}`).test(a.cause)
      ),
    );

    // the copy at the point found holds the good data
    await c.expect(200, "POST", "/api/tasks/db/actions/failover-test", {
      site: "dr1",
      point: found.lastGood.seq,
    });
    const test = (await c.expect(200, "GET", "/api/status") as { tests: { export: string }[] }).tests[0];
    assert.is(await readDatabase(test.export, topo.dir), "10\nalive");
    await c.expect(200, "POST", "/api/tasks/db/actions/end-test", {});

    // a check that hangs: killed at its timeout, the search stops with a clear error
    const r = await c.req("POST", "/api/tasks/db/point-search", {
      check: ["sleep", "600"],
      timeoutSeconds: 2,
    });
    assert.is(r.status, 409, r.text);
    assert.match(
      (r.body as { error: string }).error,
      /the check timed out after 2 s at point \d+: the search stopped \(1 probes; nothing was changed\)/,
    );
    assert.is(await state(), "protected");
    const bad = await c.req("POST", "/api/tasks/db/point-search", { good: "nope", check: CHECK });
    assert.is(bad.status, 409);
    assert.match(
      (bad.body as { error: string }).error,
      /the known-good point "nope" is not held at site dr1/,
    );
    const empty = await c.req("POST", "/api/tasks/db/point-search", { check: [] });
    assert.is(empty.status, 400);
    assert.equal(await hashAll(files), before, "nothing changed");
  } finally {
    await topo.stop();
    await Deno.remove(topo.dir, { recursive: true }).catch(() => {});
  }
});

t.run();
