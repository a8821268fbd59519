// The QoS parts of the web UI in headless Chromium, on the failover lab (network namespaces: the
// agent's heartbeats reach the gateway): targets are set in the task wizard, the task page shows
// the detector settings derived from them for the task's server and the QoS observed so far, a
// drill is run from the page and its grade appears. The pages must log no console error.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { tempDir, waitFor } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { ADMIN_PASSWORD, haveChromium, launchChromium, logInAsAdmin, WebClient } from "./lib/browser.ts";
import { FailoverLab } from "./lib/failover-lab.ts";
import { labDevices, registerLabInventory } from "./lib/lab-inventory.ts";

const t = suite("QoS in the web UI");

t(
  "targets in the wizard, the derived detector settings and observed QoS, a drill and its grade",
  async () => {
    if (
      !haveChromium("QoS in the web UI") ||
      !need("QoS in the web UI", { root: true, tools: ["ip", "iptables"] })
    ) {
      return;
    }
    const out = await tempDir("ui-qos");
    const pw = `${out}/admin.password`;
    await Deno.writeTextFile(pw, `${ADMIN_PASSWORD}\n`, { mode: 0o600 });
    const allowed = new URL("../test-output/", import.meta.url).pathname;
    const lab = new FailoverLab();
    const browser = await launchChromium();
    const problems: string[] = [];
    try {
      await lab.start({
        gatewayExtra: ["--admin-password-file", pw, "--device-prefix", allowed],
        remoteExtra: ["--test-listen", `unix:${out}/tests.sock`],
      });
      const base = "http://10.77.9.1:7880";
      const api = new WebClient(base, { token: lab.token });
      await registerLabInventory(lab, api);
      const page = await (await browser.newContext({ viewport: { width: 1400, height: 900 } })).newPage();
      page.on("console", (m) => {
        // the lab serves plain HTTP on a namespace's address, where Chromium ignores the COOP header
        const untrustworthy = /Cross-Origin-Opener-Policy header has been ignored/.test(m.text());
        if (m.type() === "error" && !/status of 401/.test(m.text()) && !untrustworthy) {
          problems.push(`console: ${m.text()}`);
        }
      });
      page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
      await logInAsAdmin(page, base);

      // ---------------------------------------------------------------- the wizard, with targets
      await page.getByRole("link", { name: "New task" }).click();
      await page.locator('input[name="local-site"][value="prod"]').check();
      await page.locator('input[name="remote-site"][value="dr1"]').check();
      await page.getByRole("button", { name: "Next: Hosts and devices" }).click();
      await page.getByRole("button", { name: "Next: Group" }).click();
      const d = labDevices(lab);
      // the hosts registered for the lab (the gateway may also have discovered the same devices under
      // the names its agents report, e.g. dr1-gateway); an option's value is the host, NUL, the device
      const slots: Record<string, [string, string]> = {
        lsp: ["app1", d.lsp],
        lgp: ["lgw", d.lgp],
        buffer: ["lgw", d.buffer],
        "rgp@dr1": ["rgw", d.rgp],
        "rsp@dr1": ["standby", d.rsp],
      };
      for (const [slot, [host, device]] of Object.entries(slots)) {
        await page.locator(`select[name="slot-${slot}"]`).selectOption(`${host}\0${device}`);
      }
      await page.getByRole("button", { name: "Next: Strategies" }).click();
      const targets = page.locator('[data-testid="targets"]');
      await targets.locator('input[name="target-detection"]').fill("2s");
      await targets.getByRole("alert").getByText("Give all three detection targets, or none.").waitFor();
      assert.ok(
        await page.getByRole("button", { name: "Next: Review" }).isDisabled(),
        "incomplete targets stop the wizard",
      );
      await targets.locator('input[name="target-recurrence"]').fill("10min");
      await targets.locator('input[name="target-mistake"]').fill("1s");
      await targets.locator('input[name="target-rto"]').fill("1m");
      await targets.locator('input[name="target-rpo"]').fill("10s");
      await page.getByRole("button", { name: "Next: Review" }).click();
      const review = await page.locator('[data-testid="review-targets"]').textContent();
      assert.is(
        review,
        "detect within 2.0 s, a false detection at most every 10 min lasting 1.0 s; RTO 60.0 s; RPO 10.0 s",
      );
      await page.locator('input[name="task-name"]').fill("db");
      await page.locator('input[name="service"]').fill("web");
      await page.getByRole("button", { name: "Create task" }).click();
      await page.waitForURL(/\/tasks\/db$/);
      const made = await api.expect(200, "GET", "/api/tasks/db") as { targets: unknown };
      assert.equal(made.targets, {
        detection: { detectionMs: 2000, mistakeRecurrenceMs: 600_000, mistakeDurationMs: 1000 },
        rtoMs: 60_000,
        rpoMs: 10_000,
      });
      await page.locator('[data-action="start"]').click();
      await page.locator("dialog").getByRole("button", { name: "Start" }).click();
      await page.locator('.badge[data-state="protected"]').first().waitFor({ timeout: 60_000 });

      // ---------------------------------------------------------------- the derived settings, observed QoS
      const link = page.locator('[data-testid="detector-qos"] tr[data-agent="app1"]');
      await link.locator('.badge[data-state="met"]').waitFor({ timeout: 60_000 });
      await link.locator('[data-testid="qos-targets"]', { hasText: "from task db" }).waitFor();
      await waitFor(
        async () =>
          !/measuring/.test(await link.locator('[data-testid="qos-predicted"]').textContent() ?? ""),
        60_000,
        "the link measured at the derived period",
        500,
      );
      const setting = await link.locator('[data-testid="qos-setting"]').textContent() ?? "";
      assert.not.match(setting, /^η 100 ms, α 200 ms/, `derived, not the flags': ${setting}`);
      assert.match(await link.locator('[data-testid="qos-predicted"]').textContent() ?? "", /^T_D ≤ \d/);
      assert.match(
        await link.locator('[data-testid="qos-observed"]').textContent() ?? "",
        /^0 false detections in /,
      );
      await page.screenshot({ path: `${out}/detector.png`, fullPage: true });

      // ---------------------------------------------------------------- a drill from the page
      await page.getByRole("button", { name: "Run drill" }).click();
      await page.locator("dialog").getByRole("button", { name: "Run drill" }).click();
      const grade = page.locator(
        '[data-testid="drills"] tr[data-drill="1"] [data-testid="drill-grade"] .badge',
      );
      await grade.and(page.locator('[data-state="passed"], [data-state="failed"]')).waitFor({
        timeout: 90_000,
      });
      assert.is(
        await grade.getAttribute("data-state"),
        "passed",
        await page.locator('[data-testid="drills"]').textContent() ?? "",
      );
      await page.screenshot({ path: `${out}/drill.png`, fullPage: true });
      assert.equal(problems, []);
    } finally {
      await browser.close();
      await lab.stop();
    }
  },
);

t.run();
