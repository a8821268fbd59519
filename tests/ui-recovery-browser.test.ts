// The recovery page's progress in headless Chromium against a real topology: a full
// rebuild of the mirror from a site's two copies, whose link goes through a test proxy
// limited to a few MB/s so that it takes seconds. While it runs the page shows, without
// a reload, the method, the sources and their shares, the bytes moved of the total, the
// rate and the time left; then the run's completion. The page must log no console error.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { run, startTopology, tempDir, waitFor } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import {
  ADMIN_PASSWORD,
  failureWithScreenshot,
  haveChromium,
  launchChromium,
  logInAsAdmin,
  WebClient,
} from "./lib/browser.ts";
import { registerDbTask } from "./lib/inventory.ts";

const t = suite("recovery progress in a browser");
const MiB = 1024 * 1024;
const SIZE = 24 * MiB;

t("a running recovery's method, sources, bytes, rate and time left, then its end", async () => {
  if (!haveChromium("recovery progress in a browser") || !need("recovery progress", { tools: ["nbdcopy"] })) {
    return;
  }
  const out = await tempDir("ui-recovery");
  const pw = `${out}/admin.password`;
  await Deno.writeTextFile(pw, `${ADMIN_PASSWORD}\n`, { mode: 0o600 });
  const allowed = new URL("../test-output/", import.meta.url).pathname;
  const topo = await startTopology("ui-recovery-topo", {
    size: SIZE,
    sites: ["dr1"],
    proxied: ["dr1"],
    gatewayExtra: ["--admin-password-file", pw, "--device-prefix", allowed],
  });
  const base = `http://127.0.0.1:${topo.gw.httpPort}`;
  const browser = await launchChromium();
  const problems: string[] = [];
  let page: Awaited<ReturnType<typeof browser.newPage>> | undefined;
  try {
    const random = `${topo.dir}/random.bin`;
    await run("sh", ["-c", `head -c ${SIZE} /dev/urandom > ${random}`]);
    await run("nbdcopy", [random, topo.agent.uri("vol0")]);
    await topo.caughtUp();

    // a task over the topology's copies, so that its recovery page has its task (not started)
    const api = new WebClient(base, { token: topo.gw.token });
    await registerDbTask(api, topo, SIZE);

    page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
    page.on("console", (m) => {
      if (m.type() === "error" && !/status of 401/.test(m.text())) problems.push(`console: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    await logInAsAdmin(page, base);
    await page.goto(`${base}/tasks/db/recovery`);
    await page.getByRole("heading", { name: "Recovery of db" }).waitFor();
    await page.getByText("No recovery yet.").waitFor();

    // the site's link carries 4 MB/s: the 24 MiB take about six seconds
    topo.proxies.dr1.rateBps = 4e6;
    const started = await api.expect(202, "POST", "/api/recoveries", {
      volume: "a1/vol0",
      mode: "manual",
      source: "rgp@dr1",
      also: ["rsp@dr1"],
      strategy: "full",
      target: "lgp",
    }) as { id: number };
    const row = page.locator(`[data-testid="recovery-${started.id}"]`);
    await row.waitFor({ timeout: 10_000 });
    await row.locator('.badge[data-state="running"]').waitFor();
    assert.match(await row.textContent() ?? "", /a1\/vol0 → lgp from rgp@dr1 \+ rsp@dr1/);
    await row.getByText("Method: full copy").waitFor();
    // the live progress: moved of the total, a rate and a time left, once the first chunks are in
    const summary = row.locator("div.small", { hasText: "chunks settled" });
    const seen = await waitFor(
      async () => {
        const text = await summary.textContent({ timeout: 1000 }).catch(() => "") ?? "";
        const m =
          /^copying: moved ([\d.]+) (KiB|MiB) of 24\.0 MiB at ([\d.]+) (KiB|MiB)\/s, ([\d.]+) (ms|s) left; (\d+)\/24 chunks settled$/
            .exec(text);
        return m && Number(m[1]) > 0 && Number(m[3]) > 0 ? text : undefined;
      },
      15_000,
      "the page to show bytes moved, a rate and the time left",
      100,
    );
    const bar = row.locator(`progress[aria-label="recovery ${started.id}"]`);
    assert.is(await bar.getAttribute("max"), String(SIZE), "the bar's end is the bytes to move");
    assert.ok(Number(await bar.getAttribute("value")) > 0, "and it has moved");
    // each source with its share and its rate
    const shares = await row.locator("li").allTextContents();
    assert.is(shares.length, 2, shares.join("; "));
    assert.match(shares[0], /^rgp@dr1: [\d.]+ (B|KiB|MiB) \(\d+ %\) at [\d.]+ (B|KiB|MiB)\/s$/);
    assert.match(shares[1], /^rsp@dr1: [\d.]+ (B|KiB|MiB) \(\d+ %\) at [\d.]+ (B|KiB|MiB)\/s$/);
    // the figures move on without a reload
    await waitFor(
      async () => {
        const text = await summary.textContent({ timeout: 1000 }).catch(() => seen) ?? seen;
        return text !== seen;
      },
      10_000,
      "the progress to be updated",
      100,
    );
    await page.screenshot({ path: `${out}/recovery-running.png`, fullPage: true });

    // the end: the row says done and what moved, the live part is gone
    await row.locator('.badge[data-state="done"]').waitFor({ timeout: 60_000 });
    await row.getByText(/^moved 24\.0 MiB, started /).waitFor();
    assert.is(await bar.count(), 0, "no progress bar once done");
    assert.is(await row.locator("li").count(), 0, "nor the sources' live shares");
    await page.screenshot({ path: `${out}/recovery-done.png`, fullPage: true });
    assert.equal(problems, [], problems.join("\n"));
  } catch (e) {
    throw await failureWithScreenshot(e, page, out, problems);
  } finally {
    await browser.close();
    await topo.stop();
  }
});

t.run();
