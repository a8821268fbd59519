// The web UI in headless Chromium (Debian's, driven by playwright-core) against a real
// topology (local gateway, agent, remote site): log in, the dashboard shows the agent, the
// volume and the site and follows writes without a reload, a task is created in the wizard and
// started from its page until it is protected, a failover test is run and ended from the page,
// and a viewer gets no change buttons. Screenshots
// go to the test's directory; the pages must log no console error.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { run, startTopology, tempDir, waitFor } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import {
  ADMIN_PASSWORD,
  failureWithScreenshot,
  haveChromium,
  launchChromium,
  WebClient,
  WebGateway,
} from "./lib/browser.ts";
import { ensureVolume, registerSitesAndHosts } from "./lib/inventory.ts";

const t = suite("web UI in a browser");
const MiB = 1024 * 1024;
const VIEWER = { name: "watcher", password: "viewer password 12345" };

t(
  "log in, watch the dashboard live, create and start a task in the wizard, recover, run a failover test; a viewer cannot act",
  async () => {
    if (!haveChromium("web UI in a browser") || !need("web UI in a browser", { tools: ["qemu-io"] })) return;
    const out = await tempDir("ui-browser");
    const pw = `${out}/admin.password`;
    await Deno.writeTextFile(pw, `${ADMIN_PASSWORD}\n`, { mode: 0o600 });
    const allowed = new URL("../test-output/", import.meta.url).pathname;
    const topo = await startTopology("ui-topo", {
      size: 16 * MiB,
      sites: ["dr1"],
      // a slow link to dr1, so that the lag a write causes stays visible for a few seconds
      gatewayExtra: ["--admin-password-file", pw, "--device-prefix", allowed, "--remote-bandwidth", "dr1=2M"],
    });
    const base = `http://127.0.0.1:${topo.gw.httpPort}`;
    const browser = await launchChromium();
    const problems: string[] = [];
    let current: { screenshot(o: { path: string; fullPage: boolean }): Promise<unknown> } | undefined;
    try {
      // the inventory (the wizard can add it too; here the API does, as automation would)
      const api = new WebClient(base, { token: topo.gw.token });
      await api.expect(201, "POST", "/api/users", { ...VIEWER, role: "viewer" });
      await registerSitesAndHosts(api);
      const files = topo.copies();
      const devices: Record<string, [string, string, number]> = {
        lsp: ["app1", files.lsp, 16 * MiB],
        lgp: ["lgw", files.lgp, 16 * MiB],
        buffer: ["lgw", `${topo.dir}/gateway/journal.ring`, 256 * MiB],
        "rgp@dr1": ["rgw", files["rgp-dr1"], 16 * MiB],
        "rsp@dr1": ["standby", files["rsp-dr1"], 16 * MiB],
      };
      for (const [slot, [host, device, size]] of Object.entries(devices)) {
        // the LSP's volume is named as the agent names it (--volume vol0=…): that binds the task to it
        const name = slot === "lsp" ? "vol0" : slot.replace("@", "-");
        await ensureVolume(api, name, host, device, size);
      }

      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      const page = await context.newPage();
      current = page;
      page.on("console", (m) => {
        if (m.type() !== "error") return;
        if (expected401(m.text(), m.location().url)) return;
        problems.push(`console: ${m.text()} (${m.location().url})`);
      });
      page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));

      // ---------------------------------------------------------------- login
      await page.goto(`${base}/`);
      await page.waitForURL(/\/login/);
      await page.getByLabel("User name").fill("admin");
      await page.getByLabel("Password").fill("not the password");
      await page.getByRole("button", { name: "Log in" }).click();
      await page.getByText("wrong user name or password").waitFor();
      await page.getByLabel("Password").fill(ADMIN_PASSWORD);
      await page.getByRole("button", { name: "Log in" }).click();
      await page.getByRole("heading", { name: "Dashboard" }).waitFor();

      // ---------------------------------------------------------------- dashboard, live
      await page.locator('[data-testid="agents"] tr[data-agent="a1"]').waitFor();
      await page.locator('[data-testid="links"] tr[data-site="dr1"]').getByText("a1/vol0").waitFor();
      assert.is(
        await page.locator('[data-testid="agents"] tr[data-agent="standby"]').count(),
        0,
        "standby servers are the remote gateway's",
      );
      await page.getByText("a1/vol0").first().waitFor();
      await page.locator('.live[data-connection="live"]').first().waitFor();
      const row = page.locator("tr", { has: page.locator("td.mono", { hasText: "a1/vol0" }) }).first();
      const seqBefore = Number(await row.locator("td").nth(2).textContent());
      await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), "-c", "write -P 0x33 0 2M", "-c", "flush"]);
      await waitFor(
        async () => Number(await row.locator("td").nth(2).textContent()) > seqBefore,
        20_000,
        "the dashboard to show the new writes",
      );
      const journal = await page.locator('[data-testid="journal-use"]').textContent();
      assert.ok(journal && /B/.test(journal), `journal use shown: ${journal}`);
      await page.screenshot({ path: `${out}/dashboard.png`, fullPage: true });

      // ---------------------------------------------------------------- the wizard
      await page.getByRole("link", { name: "New task" }).click();
      await page.getByRole("heading", { name: "New protection task" }).waitFor();
      await page.locator('input[name="local-site"][value="prod"]').check();
      await page.locator('input[name="remote-site"][value="dr1"]').check();
      await page.getByRole("button", { name: "Next: Hosts and devices" }).click();
      await page.getByRole("button", { name: "Next: Group" }).click();
      for (const [slot, [host, device]] of Object.entries(devices)) {
        const select = page.locator(`select[name="slot-${slot}"]`);
        const value = await select.locator("option", { hasText: `${host}:${device} (` }).getAttribute(
          "value",
        );
        assert.ok(value, `an option for ${slot}`);
        await select.selectOption(value!);
      }
      await page.getByRole("button", { name: "Next: Strategies" }).click();
      await page.getByRole("button", { name: "Next: Review" }).click();
      await page.locator('input[name="task-name"]').fill("db");
      await page.getByRole("button", { name: "Create task" }).click();
      await page.waitForURL(/\/tasks\/db$/);
      await page.getByRole("heading", { name: /db/ }).first().waitFor();
      const made = await api.expect(200, "GET", "/api/tasks/db") as {
        state: string;
        group: { local: { lsp: { device: string } } };
      };
      assert.is(made.state, "configured");
      assert.is(made.group.local.lsp.device, files.lsp);

      // start it from its page; the state follows without a reload
      await page.locator('[data-action="start"]').click();
      await page.locator("dialog").getByRole("button", { name: "Start" }).click();
      await waitFor(
        async () =>
          (await api.expect(200, "GET", "/api/tasks/db") as { state: string }).state === "protected",
        60_000,
        "the task to be protected",
        250,
      );
      await page.locator('.badge[data-state="protected"]').first().waitFor({ timeout: 20_000 });
      // a write: the lag to dr1 rises on the task page, then falls to nothing, without a reload
      const lag = page.locator('[data-testid="lag-dr1"]');
      await lag.getByText("0 B", { exact: true }).waitFor({ timeout: 30_000 });
      // 1 MiB writes: the link's 2 MB/s limit paces them (one large write would pass in one burst)
      const writes = Array.from({ length: 8 }, (_, i) => ["-c", `write -P 0x44 ${4 + i}M 1M`]).flat();
      await run("qemu-io", ["-f", "raw", topo.agent.uri("vol0"), ...writes, "-c", "flush"]);
      await waitFor(
        async () => /MiB|KiB/.test(await lag.textContent() ?? ""),
        20_000,
        "the lag to rise",
        100,
      );
      await page.screenshot({ path: `${out}/task.png`, fullPage: true });
      await lag.getByText("0 B", { exact: true }).waitFor({ timeout: 60_000 });

      // recovery: the policy's candidates, its choice and why; a recovery of the mirror it runs
      await page.getByRole("link", { name: "Recovery…" }).click();
      await page.getByRole("heading", { name: "Recovery of db" }).waitFor();
      const why = page.locator('[data-testid="explanation"]');
      await why.waitFor();
      const explanation = await why.textContent() ?? "";
      assert.match(explanation, /The policy chooses (lgp|rgp@dr1|rsp@dr1)\. \S+ chosen: consistent/);
      assert.ok(await page.locator('[data-testid="candidates"] tr[aria-current="true"]').count() === 1);
      await page.locator('select[name="recover-target"]').selectOption("lgp");
      await page.getByRole("button", { name: "Recover…" }).click();
      await page.locator("dialog").getByRole("button", { name: "Recover" }).click();
      await page.getByText(/Recovery started: the task is recovering/).waitFor();
      await page.waitForURL(/\/tasks\/db$/);
      await waitFor(
        async () =>
          (await api.expect(200, "GET", "/api/tasks/db") as { state: string }).state === "protected",
        120_000,
        "the task to be protected after the recovery",
        250,
      );
      await page.locator('.badge[data-state="protected"]').first().waitFor({ timeout: 20_000 });
      await page.getByText(/recovering → syncing \(recovery \d+ of a1\/vol0 done\)/).first().waitFor();

      // ---------------------------------------------------------------- run a failover test and see the states change
      await page.locator('[data-action="failover-test"]').click();
      await page.locator("dialog").getByRole("button", { name: "Failover test" }).click();
      await page.locator('.badge[data-state="testing"]').first().waitFor({ timeout: 30_000 });
      const exported = page.locator('[data-testid="test-export"]');
      await exported.waitFor({ timeout: 20_000 });
      const uri = (await exported.textContent()) ?? "";
      assert.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/test-a1-vol0$/);
      assert.is(await page.locator('[data-testid="test-site"]').textContent(), "dr1");
      // the copy the page names is there, at the remote site
      const read = await run("qemu-io", ["-r", "-f", "raw", uri, "-c", "read -P 0x44 4M 1M"]);
      assert.match(read.stdout, /read 1048576\/1048576 bytes/);
      await page.screenshot({ path: `${out}/failover-test.png`, fullPage: true });
      await page.locator('[data-action="end-test"]').click();
      await page.locator("dialog").getByRole("button", { name: "End test" }).click();
      await page.locator('.badge[data-state="protected"]').first().waitFor({ timeout: 30_000 });
      await page.locator('[data-testid="failover-test"]').waitFor({ state: "detached", timeout: 20_000 });
      await page.getByText(/testing → protected/).first().waitFor();
      assert.is(
        (await api.expect(200, "GET", "/api/tasks/db") as { state: string }).state,
        "protected",
      );

      // ---------------------------------------------------------------- a viewer
      const vctx = await browser.newContext({ viewport: { width: 390, height: 844 } });
      const vpage = await vctx.newPage();
      current = vpage;
      vpage.on("console", (m) => {
        if (m.type() !== "error") return;
        if (expected401(m.text(), m.location().url)) return;
        problems.push(`viewer console: ${m.text()} (${m.location().url})`);
      });
      vpage.on("pageerror", (e) => problems.push(`viewer page error: ${e.message}`));
      await vpage.goto(`${base}/tasks/db`);
      await vpage.getByLabel("User name").fill(VIEWER.name);
      await vpage.getByLabel("Password").fill(VIEWER.password);
      await vpage.getByRole("button", { name: "Log in" }).click();
      await vpage.waitForURL(/\/tasks\/db$/);
      await vpage.locator('[data-testid="read-only"]').waitFor();
      await vpage.locator('.badge[data-state="protected"]').first().waitFor();
      assert.is(await vpage.locator("[data-action]").count(), 0, "no action buttons");
      assert.is(await vpage.getByRole("link", { name: "New task" }).count(), 0, "no wizard link");
      await vpage.goto(`${base}/inventory`);
      await vpage.getByRole("heading", { name: "Inventory" }).waitFor();
      await vpage.getByText("app1").first().waitFor();
      const changers = await vpage.getByRole("button", { name: /delete|add|create|save/i }).count();
      assert.is(changers, 0, "no button that changes the inventory");
      await vpage.screenshot({ path: `${out}/viewer-phone.png`, fullPage: true });
      await vctx.close();
      await context.close();
      assert.equal(problems, [], problems.join("\n"));
    } catch (e) {
      throw await failureWithScreenshot(e, current, out, problems);
    } finally {
      await browser.close();
      await topo.stop();
    }
  },
);

t("first start: the one-time setup link's page creates the admin and logs in", async () => {
  if (!haveChromium("the setup page in a browser")) return;
  const gw = new WebGateway({ adminPassword: false });
  await gw.start();
  const browser = await launchChromium();
  const problems: string[] = [];
  try {
    const link = gw.setupUrl();
    assert.ok(link, gw.stdout);
    const page = await browser.newPage();
    page.on("console", (m) => {
      if (m.type() === "error" && !expected401(m.text(), m.location().url)) problems.push(m.text());
    });
    page.on("pageerror", (e) => problems.push(e.message));
    await page.goto(link!);
    await page.getByRole("heading", { name: "First start: create the admin" }).waitFor();
    await page.getByLabel("Admin user name").fill("chief");
    await page.getByLabel("Password", { exact: true }).fill("a very good password");
    await page.getByLabel("Password again").fill("a very good password");
    await page.getByRole("button", { name: "Create admin and log in" }).click();
    await page.getByRole("heading", { name: "Dashboard" }).waitFor();
    assert.not.match(page.url(), /#/, "the spent token left the address bar");
    await page.getByText("chief").first().waitFor();
    // the link is spent
    const again = await browser.newPage();
    await again.goto(link!);
    await again.getByLabel("Admin user name").fill("second");
    await again.getByLabel("Password", { exact: true }).fill("another good password");
    await again.getByLabel("Password again").fill("another good password");
    await again.getByRole("button", { name: "Create admin and log in" }).click();
    await again.getByText("setup is done already: log in instead").waitFor();
    assert.equal(problems.filter((p) => !/status of 409/.test(p)), [], problems.join("\n"));
  } finally {
    await browser.close();
    await gw.stop();
  }
});

/**
 * Chromium logs every 4xx answer as a console error. Two are the API's expected answers: "nobody
 * is logged in" (GET /api/session before the login) and the wrong password typed on purpose.
 */
function expected401(text: string, url: string): boolean {
  return /status of 401/.test(text) && /\/api\/(session|login)$/.test(url);
}

t.run();
