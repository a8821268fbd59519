// Alarms: the conditions read from the status (failover, site down, lag above the RPO target,
// journal near full), and their delivery to webhooks: signed JSON, retried while the receiver is
// unreachable or failing, given up on a refusal, in order, with no secret and no URL credentials
// in the log; bad webhook flags are refused with a clear message.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { createHmac } from "node:crypto";
import { evaluateConditions } from "../src/alarms/conditions.ts";
import { openWebhooks, parseWebhookUrl, redactUrl, signature, Webhooks } from "../src/alarms/webhooks.ts";
import { Alarms } from "../src/alarms/alarms.ts";
import type { AlarmEvent } from "../src/alarms/alarm.ts";
import { setLogSink } from "../src/log.ts";
import { freePort, tempDir, waitFor } from "./lib/cluster.ts";

const c = suite("alarm conditions");

c("a service failing over and back; what holds at the first look is known already", () => {
  let r = evaluateConditions(
    undefined,
    { services: [{ name: "web", state: "failed-over", site: "dr1" }] },
    0,
  );
  assert.equal(r.alarms, [], "a gateway restarted while the service runs remotely raises nothing");
  r = evaluateConditions(r.state, { services: [{ name: "web", state: "protected" }] }, 1000);
  assert.equal(r.alarms.map((a) => [a.kind, a.resolved]), [["failover", true]]);
  r = evaluateConditions(r.state, { services: [{ name: "web", state: "failing-over", site: "dr1" }] }, 2000);
  assert.equal(r.alarms, []);
  r = evaluateConditions(r.state, { services: [{ name: "web", state: "failed-over", site: "dr1" }] }, 3000);
  assert.is(r.alarms.length, 1);
  assert.equal(
    { ...r.alarms[0], detail: undefined },
    {
      kind: "failover",
      severity: "critical",
      subject: "service:web",
      summary: "service web failed over to site dr1",
      detail: undefined,
    },
  );
});

c("a site down for 10 s, once, then up again", () => {
  const down = { sites: [{ site: "dr1", connected: false, lastError: "connection refused" }] };
  let r = evaluateConditions(undefined, down, 0);
  r = evaluateConditions(r.state, down, 9_999);
  assert.equal(r.alarms, [], "a short cut is no alarm");
  r = evaluateConditions(r.state, down, 10_000);
  assert.equal(r.alarms.map((a) => a.summary), [
    "the link to site dr1 has been down for 10 s: connection refused",
  ]);
  r = evaluateConditions(r.state, down, 20_000);
  assert.equal(r.alarms, [], "raised once");
  r = evaluateConditions(r.state, { sites: [{ site: "dr1", connected: true }] }, 21_000);
  assert.equal(r.alarms.map((a) => [a.kind, a.subject, a.resolved]), [["site-down", "site:dr1", true]]);
  r = evaluateConditions(r.state, { sites: [{ site: "dr1", connected: false }] }, 22_000);
  r = evaluateConditions(r.state, { sites: [{ site: "dr1", connected: true }] }, 23_000);
  assert.equal(r.alarms, [], "a cut that never alarmed ends silently");
});

c(
  "a lag above a replicating task's RPO target; paused tasks and tasks without a target are not judged",
  () => {
    const snap = (lagSeconds: number, state = "protected") => ({
      sites: [{ site: "dr1", connected: true, lagSeconds }],
      tasks: [
        { name: "db", state, rpoMs: 5000, sites: ["dr1"] },
        { name: "free", state: "protected", sites: ["dr1"] },
      ],
    });
    let r = evaluateConditions(undefined, snap(1), 0);
    r = evaluateConditions(r.state, snap(6), 1000);
    assert.equal(r.alarms.map((a) => [a.kind, a.subject, a.summary]), [[
      "rpo-exceeded",
      "task:db",
      "task db: site dr1 lags 6.0 s, more than its RPO target of 5.0 s",
    ]]);
    r = evaluateConditions(r.state, snap(7), 2000);
    assert.equal(r.alarms, []);
    r = evaluateConditions(r.state, snap(2), 3000);
    assert.equal(r.alarms.map((a) => a.resolved), [true]);
    r = evaluateConditions(r.state, snap(60, "paused"), 4000);
    assert.equal(r.alarms, [], "a paused task lags on purpose");
  },
);

c("a site's retention full: an alarm each time space expires points early, none at the first look", () => {
  const ret = (n: number) => ({
    retention: [{ site: "dr1", windowMs: 86_400_000, volumes: [{ volume: "a1/vol0", forcedExpiries: n }] }],
  });
  let r = evaluateConditions(undefined, ret(2), 0);
  assert.equal(r.alarms, [], "what the site counted before the gateway looked is known");
  r = evaluateConditions(r.state, ret(2), 1);
  assert.equal(r.alarms, []);
  r = evaluateConditions(r.state, ret(3), 2);
  assert.equal(r.alarms.map((a) => [a.kind, a.subject]), [["retention-full", "site:dr1"]]);
  assert.match(
    r.alarms[0].summary,
    /site dr1: the retention of a1\/vol0 is full: points younger than its window expired/,
  );
  r = evaluateConditions(r.state, ret(0), 3);
  assert.equal(r.alarms, [], "a restarted site counts from 0");
  r = evaluateConditions(r.state, ret(1), 4);
  assert.is(r.alarms.length, 1);
});

c("the journal near full, with hysteresis", () => {
  const j = (used: number) => ({ journal: { used, capacity: 100 } });
  let r = evaluateConditions(undefined, j(89), 0);
  assert.equal(r.alarms, []);
  r = evaluateConditions(r.state, j(91), 1);
  assert.equal(r.alarms.map((a) => [a.kind, a.summary]), [[
    "journal-near-full",
    "the journal is 91 % full: a site or the mirror holds its tail",
  ]]);
  r = evaluateConditions(r.state, j(85), 2);
  assert.equal(r.alarms, [], "still on above the lower mark");
  r = evaluateConditions(r.state, j(79), 3);
  assert.equal(r.alarms.map((a) => a.resolved), [true]);
});

// ------------------------------------------------------------------ delivery

const secret = new TextEncoder().encode("webhook-secret-0123456789");
const event = (n: number): AlarmEvent => ({
  id: `id-${n}`,
  kind: "site-down",
  severity: "critical",
  subject: "site:dr1",
  summary: `event ${n}`,
  site: "prod",
  at: 1_700_000_000_000 + n,
  resolved: false,
});

interface Received {
  body: string;
  headers: Headers;
}

function receiver(port: number, answer: (n: number) => number = () => 200) {
  const got: Received[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, async (req) => {
    got.push({ body: await req.text(), headers: req.headers });
    return new Response("", { status: answer(got.length) });
  });
  return { got, close: () => server.shutdown() };
}

const w = suite("alarm webhooks");

w("a delivery: JSON with the event, signed over timestamp and body", async () => {
  const port = freePort();
  const r = receiver(port);
  const hooks = new Webhooks({ urls: [new URL(`http://127.0.0.1:${port}/hook?token=abc`)], secret });
  try {
    hooks.deliver(event(1));
    await waitFor(() => r.got.length === 1, 5000, "the delivery");
    const { body, headers } = r.got[0];
    assert.equal(JSON.parse(body), { version: 1, ...event(1) });
    assert.is(headers.get("content-type"), "application/json");
    assert.is(headers.get("x-continuum-event"), "site-down");
    assert.is(headers.get("x-continuum-delivery"), "id-1");
    const ts = headers.get("x-continuum-timestamp")!;
    assert.ok(Math.abs(Number(ts) - Date.now() / 1000) < 5);
    const expected = createHmac("sha256", secret).update(`${ts}.${body}`).digest("hex");
    assert.is(headers.get("x-continuum-signature"), `sha256=${expected}`);
    assert.is(signature(secret, Number(ts), body), `sha256=${expected}`);
    await waitFor(() => hooks.status()[0].delivered === 1, 2000, "counted");
    assert.equal(hooks.status(), [{
      url: "http://127.0.0.1:" + port + "/hook",
      delivered: 1,
      failed: 0,
      pending: 0,
      lastError: null,
    }]);
  } finally {
    hooks.close();
    await r.close();
  }
});

w(
  "an unreachable receiver: retried until it is back, in order, nothing lost; no secret or credential logged",
  async () => {
    const lines: string[] = [];
    setLogSink((l) => lines.push(l));
    const port = freePort();
    const hooks = new Webhooks({
      urls: [new URL(`http://user:pass@127.0.0.1:${port}/hook?token=s3cr3t`)],
      secret,
      retry: { firstDelayMs: 50, maxDelayMs: 200, giveUpAfterMs: 60_000 },
    });
    let r: ReturnType<typeof receiver> | undefined;
    try {
      for (let n = 1; n <= 3; n++) hooks.deliver(event(n));
      await waitFor(() => hooks.status()[0].failed >= 3, 5000, "failed attempts");
      assert.is(hooks.status()[0].pending, 3, "kept while unreachable");
      r = receiver(port);
      await waitFor(() => r!.got.length === 3, 10_000, "every alarm once the receiver is back");
      assert.equal(r.got.map((g) => JSON.parse(g.body).id), ["id-1", "id-2", "id-3"], "in order");
      const text = lines.join("\n");
      assert.match(text, /alarm webhook failed: retrying/);
      assert.match(text, /"url":"http:\/\/127\.0\.0\.1:\d+\/hook"/);
      for (const s of ["s3cr3t", "pass", "webhook-secret"]) {
        assert.not.ok(
          text.includes(s),
          `${s} in the log`,
        );
      }
    } finally {
      setLogSink((l) => console.error(l));
      hooks.close();
      await r?.close();
    }
  },
);

w("5xx is retried, a refusal (4xx) is given up and logged with the alarm", async () => {
  const lines: string[] = [];
  setLogSink((l) => lines.push(l));
  const port = freePort();
  const r = receiver(port, (n) => n === 1 ? 503 : n === 2 ? 200 : 400);
  const hooks = new Webhooks({
    urls: [new URL(`http://127.0.0.1:${port}/`)],
    secret,
    retry: { firstDelayMs: 20, maxDelayMs: 100, giveUpAfterMs: 60_000 },
  });
  try {
    hooks.deliver(event(1));
    await waitFor(() => hooks.status()[0].delivered === 1, 5000, "delivered after a 503");
    hooks.deliver(event(2));
    await waitFor(() => hooks.status()[0].pending === 0 && r.got.length === 3, 5000, "refused once");
    await new Promise((res) => setTimeout(res, 200));
    assert.is(r.got.length, 3, "a refusal is not retried");
    const gaveUp = lines.map((l) => JSON.parse(l)).find((l) => l.msg === "alarm webhook gave up");
    assert.ok(gaveUp, lines.join("\n"));
    assert.is(gaveUp.reason, "HTTP 400");
    assert.is(gaveUp.alarm.id, "id-2", "the alarm itself is in the log");
  } finally {
    setLogSink((l) => console.error(l));
    hooks.close();
    await r.close();
  }
});

w("bad webhook flags are refused with a clear message", async () => {
  assert.throws(() => parseWebhookUrl("not a url"), /--alarm-webhook not a url: not a URL/);
  assert.throws(
    () => parseWebhookUrl("ftp://x/y?token=t"),
    /--alarm-webhook ftp:\/\/x\/y: must be http:\/\/ or https:\/\//,
  );
  assert.throws(() => openWebhooks(["http://x/"], undefined), /--alarm-webhook needs --alarm-secret-file/);
  const dir = await tempDir("alarms");
  await Deno.writeTextFile(`${dir}/open.secret`, "0123456789abcdef0123", { mode: 0o644 });
  assert.throws(() => openWebhooks(["http://x/"], `${dir}/open.secret`), /readable by group or others/);
  await Deno.writeTextFile(`${dir}/ok.secret`, "0123456789abcdef0123", { mode: 0o600 });
  assert.ok(openWebhooks(["https://x/"], `${dir}/ok.secret`));
  assert.is(openWebhooks([], undefined), undefined);
  assert.is(redactUrl(new URL("https://u:p@h:1/a/b?c=d#e")), "https://h:1/a/b");
});

const h = suite("alarm hub");

h("raised alarms are logged, audited, delivered and kept while on", () => {
  const audited: unknown[] = [], delivered: AlarmEvent[] = [];
  const alarms = new Alarms({
    site: "prod",
    audit: { record: (e: unknown) => audited.push(e) } as never,
    webhooks: { deliver: (e: AlarmEvent) => delivered.push(e), status: () => [], close: () => {} } as never,
  });
  setLogSink(() => {});
  try {
    const e = alarms.raise({
      kind: "drill-failed",
      severity: "critical",
      subject: "task:db",
      summary: "drill 3 failed",
    });
    assert.is(e.site, "prod");
    assert.is(e.resolved, false);
    assert.equal(alarms.status().active.map((a) => a.id), [e.id]);
    alarms.raise({
      kind: "drill-failed",
      severity: "critical",
      subject: "task:db",
      summary: "ok",
      resolved: true,
    });
    assert.equal(alarms.status().active, []);
    assert.is(alarms.status().recent.length, 2);
    assert.is(delivered.length, 2);
    assert.is(audited.length, 2);
  } finally {
    setLogSink((l) => console.error(l));
    alarms.close();
  }
});

c.run();
w.run();
h.run();
