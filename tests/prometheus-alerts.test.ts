// The alert rules in deploy/prometheus/ pass `promtool check rules`; a real Prometheus (Debian's)
// scrapes a local gateway's /metrics with them. The site link is cut: Prometheus fires
// ContinuumSiteDown, and the gateway's alarm webhook receives the same event, signed.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { createHmac } from "node:crypto";
import { need } from "./lib/env.ts";
import { freePort, startTopology, waitFor, writeSecret } from "./lib/cluster.ts";

const t = suite("prometheus alerts");
const root = new URL("../", import.meta.url).pathname;
const rules = `${root}deploy/prometheus/continuum-alerts.yml`;
const MiB = 1024 * 1024;

t("promtool accepts the rules", async () => {
  if (!need("promtool check rules", { tools: ["promtool"] })) return;
  const out = await new Deno.Command("promtool", {
    args: ["check", "rules", rules],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.ok(out.success, text);
  assert.match(text, /SUCCESS: 9 rules found/);
});

t("a cut site link: Prometheus fires ContinuumSiteDown, the webhook gets the alarm", async () => {
  if (!need("Prometheus with the alert rules", { tools: ["prometheus", "qemu-io"] })) return;
  const hookPort = freePort();
  const received: { body: string; headers: Headers }[] = [];
  const hook = Deno.serve({ hostname: "127.0.0.1", port: hookPort, onListen: () => {} }, async (req) => {
    received.push({ body: await req.text(), headers: req.headers });
    return new Response("ok");
  });
  const dir = await Deno.makeTempDir({ prefix: "continuum-prom-" });
  const secretFile = `${dir}/alarm.secret`;
  await writeSecret(secretFile);
  const topo = await startTopology("prom", {
    size: 16 * MiB,
    sites: ["dr1"],
    proxied: ["dr1"],
    gatewayExtra: ["--alarm-webhook", `http://127.0.0.1:${hookPort}/hook`, "--alarm-secret-file", secretFile],
  });
  const promPort = freePort();
  await Deno.writeTextFile(
    `${dir}/prometheus.yml`,
    JSON.stringify({
      global: { scrape_interval: "1s", evaluation_interval: "1s" },
      rule_files: [rules],
      scrape_configs: [{
        job_name: "continuum",
        authorization: { type: "Bearer", credentials_file: `${topo.dir}/gateway/api-token` },
        static_configs: [{ targets: [`127.0.0.1:${topo.gw.httpPort}`] }],
      }],
    }),
  );
  const prom = new Deno.Command("prometheus", {
    args: [
      `--config.file=${dir}/prometheus.yml`,
      `--storage.tsdb.path=${dir}/data`,
      `--web.listen-address=127.0.0.1:${promPort}`,
      "--log.level=warn",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const api = async (path: string) => {
    const r = await fetch(`http://127.0.0.1:${promPort}/api/v1/${path}`);
    return (await r.json()).data;
  };
  try {
    await topo.caughtUp();
    await waitFor(
      async () => {
        const up = await api("query?query=up").catch(() => undefined);
        return up?.result?.[0]?.value?.[1] === "1";
      },
      30_000,
      "Prometheus to scrape the gateway",
      250,
    );
    const groups = await api("rules") as {
      groups: { name: string; rules: { name: string; health: string }[] }[];
    };
    const loaded = groups.groups.find((g) => g.name === "continuum")!;
    assert.is(loaded.rules.length, 9);
    await waitFor(
      async () => {
        const g = (await api("rules") as typeof groups).groups.find((x) => x.name === "continuum")!;
        return g.rules.every((r) => r.health === "ok");
      },
      20_000,
      "every rule to evaluate",
      250,
    );

    // the link is cut: connections dropped, none accepted
    const cut = Date.now();
    topo.proxies.dr1.close();
    let firing: { labels: Record<string, string>; state: string }[] = [];
    await waitFor(
      async () => {
        const alerts = (await api("alerts")).alerts as { labels: Record<string, string>; state: string }[];
        firing = alerts.filter((a) => a.labels.alertname === "ContinuumSiteDown" && a.state === "firing");
        return firing.length === 1;
      },
      60_000,
      "ContinuumSiteDown to fire",
      500,
    );
    console.log(`\n  ContinuumSiteDown fired ${Date.now() - cut} ms after the cut`);
    assert.is(firing[0].labels.site, "dr1");
    assert.is(firing[0].labels.severity, "critical");

    await waitFor(() => received.some((r) => JSON.parse(r.body).kind === "site-down"), 30_000, "the webhook");
    const got = received.find((r) => JSON.parse(r.body).kind === "site-down")!;
    const body = JSON.parse(got.body);
    assert.is(body.subject, "site:dr1");
    assert.is(body.resolved, false);
    assert.match(body.summary, /^the link to site dr1 has been down for \d+ s/);
    const ts = got.headers.get("x-continuum-timestamp")!;
    const secret = (await Deno.readFile(secretFile)).subarray(0, -1); // without its newline
    const mac = createHmac("sha256", secret).update(`${ts}.${got.body}`).digest("hex");
    assert.is(got.headers.get("x-continuum-signature"), `sha256=${mac}`, "signed with the shared secret");
    const log = await Deno.readTextFile(`${topo.dir}/gateway.log`);
    assert.not.ok(log.includes(new TextDecoder().decode(secret)), "the secret is not logged");
  } finally {
    try {
      prom.kill("SIGTERM");
    } catch { /* gone */ }
    await prom.status;
    await prom.stderr.cancel().catch(() => {});
    await topo.stop();
    await hook.shutdown();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

t.run();
