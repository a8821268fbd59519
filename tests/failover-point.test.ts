// A real failover to a recovery point, in network namespaces: good data, then damage that reaches
// the remote site within a second; the failover to the point before the damage rolls the standby
// back (only the differing chunks, verified by hash) before its promotion, and the remote serves
// the good data. A point the site does not hold is refused before the primary is fenced: nothing
// changes.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { FailoverLab, Poller, writeMessage } from "./lib/failover-lab.ts";
import { waitFor } from "./lib/cluster.ts";

const t = suite("failover to a point");
const prereq = { root: true, tools: ["ip", "iptables", "iptables-save"] };
const GOOD = "the good data before the damage";
const BAD = "ENCRYPTED BY RANSOMWARE";

interface Status {
  volumes: { lastSeq: number }[];
  sites: { volumes: { ackedSeq: number; state: string }[] }[];
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

t("the standby is rolled back to the point before its promotion; a bad point changes nothing", async () => {
  if (!need("failover to a point in namespaces", prereq)) return;
  const lab = await new FailoverLab().start({
    remoteExtra: ["--retention", "1h"],
    // this test moves the service itself: a loaded machine must not fail over early
    gatewayExtra: ["--detector-alpha", "1s"],
  });
  const poller = new Poller(lab);
  try {
    await writeMessage(lab, GOOD);
    const good = await replicated(lab);
    await writeMessage(lab, BAD);
    const bad = await replicated(lab);
    assert.ok(bad > good);

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
    await writeMessage(lab, BAD); // not fenced: the primary still takes writes
    await replicated(lab);

    // the failover to the good point: the remote serves the good data
    const r = await failover(lab, { point: good });
    assert.is(r.status, 200, JSON.stringify(r.body));
    await waitFor(() => lab.serviceState().then((s) => s === "failed-over"), 30_000, "failover", 100);
    await waitFor(
      () => poller.answers().some((a) => a.ok && a.body === `dr1: ${GOOD}`),
      30_000,
      "the remote to serve the good data",
    );
    assert.not.ok(poller.answers().some((a) => a.ok && a.body === `dr1: ${BAD}`), "never the damaged data");
    const log = await Deno.readTextFile(`${lab.dir}/remote.log`);
    assert.match(log, /standby rolled back to a point before its promotion/);
    const audit = await lab.api("/api/audit?limit=200") as { cause: string }[];
    assert.ok(audit.some((a) => new RegExp(`operator request at point ${good}`).test(a.cause)));
  } finally {
    await poller.stop();
    await lab.stop();
  }
});

t.run();
