// A real failover to a recovery point, ransomware-style, in network namespaces: ext4 and a SQLite
// database on the service's volume (the text the service answers with in its first 512 bytes,
// which ext4 leaves alone); a good phase, then damage that overwrites the files and the text and
// reaches the remote site within a second. The search, with a check that opens the database and
// reads its sentinel row, finds the last point before the damage; the failover to that point rolls
// the standby back (only the differing chunks, verified by hash) before its promotion: the service
// comes up at the remote site with the good text, and the promoted standby's volume holds the good
// database. A point the site does not hold is refused before the primary is fenced: nothing
// changes.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { FailoverLab, Poller } from "./lib/failover-lab.ts";
import { tempDir, waitFor } from "./lib/cluster.ts";
import { WebClient } from "./lib/browser.ts";
import { registerLabInventory } from "./lib/lab-inventory.ts";
import { NbdClient } from "./lib/nbd-client.ts";
import {
  damagePhase,
  EXT4_SQLITE_TOOLS,
  goodPhase,
  readDatabase,
  SENTINEL_CHECK,
} from "./lib/ext4-sqlite.ts";

const t = suite("failover to a point");
const prereq = { root: true, fuse: true, tools: ["ip", "iptables", "iptables-save", ...EXT4_SQLITE_TOOLS] };
const SIZE = 16 * 1024 * 1024; // the lab's volume
const GOOD = "the good data before the damage";
const BAD = "ENCRYPTED BY RANSOMWARE";

interface Status {
  volumes: { lastSeq: number }[];
  sites: { volumes: { ackedSeq: number; state: string }[] }[];
}

/** Writes the text the lab's service answers with into the volume's first 512 bytes (FUA). */
async function writeText(lab: FailoverLab, text: string): Promise<void> {
  const c = await NbdClient.connect(`${lab.dir}/agent/nbd.sock`);
  await c.go("vol0");
  const sector = new Uint8Array(512);
  sector.set(new TextEncoder().encode(text));
  await c.write(0, sector, true);
  await c.disconnect();
}

async function replicated(lab: FailoverLab): Promise<number> {
  let seq = 0;
  await waitFor(
    async () => {
      const s = await lab.api("/api/status") as Status;
      const v = s.volumes[0];
      seq = v?.lastSeq ?? 0;
      return v && s.sites[0]?.volumes[0]?.state === "consistent" &&
        s.sites[0].volumes[0].ackedSeq === v.lastSeq;
    },
    60_000,
    "the remote site to hold everything",
    200,
  );
  return seq;
}

async function failover(
  lab: FailoverLab,
  body: unknown,
): Promise<{ status: number; body: { error?: string } }> {
  const r = await fetch("http://10.77.9.1:7880/api/services/web/failover", {
    method: "POST",
    headers: { authorization: `Bearer ${lab.token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

t(
  "the search finds the last good point; the failover to it serves the good database; a bad point changes nothing",
  async () => {
    if (!need("failover to a point in namespaces", prereq)) return;
    const out = await tempDir("failover-point");
    const allowed = new URL("../test-output/", import.meta.url).pathname;
    const lab = await new FailoverLab().start({
      // test copies (the search's probes) are exported where the local gateway's namespace reaches them
      remoteExtra: ["--retention", "1h", "--test-listen", `unix:${out}/tests.sock`],
      // this test moves the service itself: a loaded machine must not fail over early
      gatewayExtra: ["--detector-alpha", "1s", "--device-prefix", allowed],
    });
    const poller = new Poller(lab);
    try {
      const c = new WebClient("http://10.77.9.1:7880", { token: lab.token });
      const group = await registerLabInventory(lab, c);
      await c.expect(201, "POST", "/api/tasks", { name: "db", service: "web", group });
      await c.expect(200, "POST", "/api/tasks/db/actions/start");
      const state = async () => (await c.expect(200, "GET", "/api/tasks/db") as { state: string }).state;
      await waitFor(async () => await state() === "protected", 60_000, "the task to be protected", 250);

      // the good phase: the database with its sentinel and orders, then the service's text
      const uri = `nbd+unix:///vol0?socket=${lab.dir}/agent/nbd.sock`;
      await goodPhase(uri, SIZE, `${out}/m`);
      await writeText(lab, GOOD);
      const good = await replicated(lab);
      // the damage: the files overwritten in place, then the text
      await damagePhase(uri, SIZE, `${out}/m`);
      const damaged = await replicated(lab);
      await writeText(lab, BAD);
      const bad = await replicated(lab);
      assert.ok(bad > damaged && damaged > good);

      // bad points: refused before anything moves; the primary is not fenced
      for (
        const [body, status, re] of [
          [{ point: bad + 1000 }, 409, /point \d+ is not held yet: the newest is/],
          [{ point: "no-such-checkpoint" }, 409, /no checkpoint named "no-such-checkpoint"/],
          [{ point: "a b" }, 400, /the body is \{"point": SEQUENCE or CHECKPOINT NAME\}/],
          [{ seq: 3 }, 400, /the body is/],
        ] as const
      ) {
        const r = await failover(lab, body);
        assert.is(r.status, status, JSON.stringify(r.body));
        assert.match(r.body.error ?? "", re);
        assert.is(await lab.serviceState(), "protected");
      }
      await writeText(lab, BAD); // not fenced: the primary still takes writes
      await replicated(lab);

      // the search for the last good point, by the sentinel row
      const found = await c.expect(200, "POST", "/api/tasks/db/point-search", {
        site: "dr1",
        check: SENTINEL_CHECK,
        timeoutSeconds: 120,
      }) as { lastGood: { seq: number } };
      assert.ok(
        found.lastGood.seq >= good && found.lastGood.seq < damaged,
        `the last good point ${found.lastGood.seq} lies between the good phase's end ${good} and the damage ${damaged}`,
      );
      assert.is(await state(), "protected");

      // the failover to the point found: the remote serves the good text and holds the good database
      const r = await c.expect(200, "POST", "/api/tasks/db/actions/failover", {
        point: found.lastGood.seq,
      }) as {
        message: string;
      };
      assert.match(r.message, new RegExp(`service web now runs at site dr1 at point ${found.lastGood.seq}`));
      await waitFor(() => lab.serviceState().then((s) => s === "failed-over"), 30_000, "failover", 100);
      await waitFor(
        () => poller.answers().some((a) => a.ok && a.body === `dr1: ${GOOD}`),
        30_000,
        "the remote to serve the good text",
      );
      assert.not.ok(poller.answers().some((a) => a.ok && a.body === `dr1: ${BAD}`), "never the damaged text");
      assert.is(
        await readDatabase(lab.rsp, out),
        "10\nalive",
        "the promoted standby holds the good database",
      );
      const log = await Deno.readTextFile(`${lab.dir}/remote.log`);
      assert.match(log, /standby rolled back to a point before its promotion/);
      const audit = await lab.api("/api/audit?limit=200") as { cause: string }[];
      assert.ok(audit.some((a) => new RegExp(`at point ${found.lastGood.seq}`).test(a.cause)));
    } finally {
      await poller.stop();
      await lab.stop();
    }
  },
);

t.run();
