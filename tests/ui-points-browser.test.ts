// The recovery points panel of a task's page in headless Chromium, on a real topology (local
// gateway, agent, a remote site keeping an hour of points): log in, the panel shows the site's
// window, what it holds and its points from the oldest to the newest sequence, with a named
// checkpoint on the timeline and in the list; a checkpoint made from the panel names the newest
// sequence and appears at the site; a failover test started from the page at the checkpoint
// exports the volume as it was at that point. The pages must log no console error.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { run, sha256File, startTopology, tempDir, waitFor } from "./lib/cluster.ts";
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

const t = suite("recovery points in the web UI");
const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

t(
  "the points panel: the window, the points and a checkpoint; a checkpoint made there; a test copy at it",
  async () => {
    if (
      !haveChromium("recovery points in the web UI") ||
      !need("recovery points in the web UI", { tools: ["qemu-io"] })
    ) {
      return;
    }
    const out = await tempDir("ui-points");
    const pw = `${out}/admin.password`;
    await Deno.writeTextFile(pw, `${ADMIN_PASSWORD}\n`, { mode: 0o600 });
    const allowed = new URL("../test-output/", import.meta.url).pathname;
    const topo = await startTopology("ui-points-topo", {
      size: SIZE,
      sites: ["dr1"],
      gatewayExtra: ["--admin-password-file", pw, "--device-prefix", allowed],
      remoteExtra: ["--retention", "1h"],
    });
    const base = `http://127.0.0.1:${topo.gw.httpPort}`;
    const browser = await launchChromium();
    const problems: string[] = [];
    let page: Awaited<ReturnType<typeof browser.newPage>> | undefined;
    try {
      const api = new WebClient(base, { token: topo.gw.token });
      await registerDbTask(api, topo, SIZE);
      await api.expect(200, "POST", "/api/tasks/db/actions/start");
      const state = async () => (await api.expect(200, "GET", "/api/tasks/db") as { state: string }).state;
      await waitFor(async () => await state() === "protected", 90_000, "the task to be protected", 250);
      const lastSeq = async () => (await topo.gw.status()).volumes.find((v) => v.name === "vol0")!.lastSeq;
      const write = async (fill: number) => {
        await run("qemu-io", [
          "-f",
          "raw",
          topo.agent.uri("vol0"),
          "-c",
          `write -P ${fill} 1M 1M`,
          "-c",
          "flush",
        ]);
        await topo.caughtUp();
      };
      // barriers, and a checkpoint by the API between them
      await write(0x11);
      await write(0x22);
      const cp = await api.expect(201, "POST", "/api/tasks/db/checkpoints", { name: "before-upgrade" }) as {
        checkpoint: { seq: number };
      };
      const cpHash = await sha256File(topo.lsp);
      await write(0x33);

      page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
      page.on("console", (m) => {
        // Chromium logs every 4xx answer as an error: "nobody is logged in" before the login, and the
        // checkpoint name taken twice on purpose
        if (m.type() === "error" && !/status of 40[19]/.test(m.text())) problems.push(`console: ${m.text()}`);
      });
      page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
      await logInAsAdmin(page, base);
      await page.goto(`${base}/tasks/db`);

      // the site's window, size and points; the checkpoint on the timeline and in the list
      const panel = page.locator('[data-testid="points"]');
      const site = panel.locator('[data-testid="points-dr1"]');
      const summary = site.locator("p.small").first();
      await summary.getByText(/^Window 1 h, /).waitFor({ timeout: 20_000 });
      const text = await summary.textContent() ?? "";
      const m =
        /^Window 1 h, [\d.]+ (B|KiB|MiB) held, (\d+) points from .+ \(sequence \d+\) to .+ \(sequence (\d+)\)$/
          .exec(text);
      assert.ok(m, `the site's summary: ${text}`);
      assert.ok(Number(m![2]) >= 3, `at least the three barriers: ${text}`);
      assert.is(Number(m![3]), await lastSeq(), "the newest point is the newest write");
      const timeline = site.locator("svg.timeline");
      assert.is(await timeline.getAttribute("aria-label"), `${m![2]} points at dr1 over the last 1 h`);
      const titles = await timeline.locator("title").allTextContents();
      assert.ok(
        titles.some((x) =>
          x.startsWith(`sequence ${cp.checkpoint.seq}, `) && x.endsWith(" — before-upgrade")
        ),
        `the checkpoint on the timeline: ${titles.join(" | ")}`,
      );
      await panel.locator("li", { hasText: `before-upgrade: sequence ${cp.checkpoint.seq}` }).waitFor();

      // a checkpoint made from the panel: the newest sequence, listed, and named at the site
      const newest = await lastSeq();
      await panel.locator('input[name="checkpoint"]').fill("after-upgrade");
      await panel.getByRole("button", { name: "Add checkpoint" }).click();
      await panel.locator("li", { hasText: `after-upgrade: sequence ${newest}` }).waitFor();
      await waitFor(
        async () =>
          (await timeline.locator("title").allTextContents()).some((x) =>
            x.startsWith(`sequence ${newest}, `) && x.endsWith(" — after-upgrade")
          ),
        10_000,
        "the new checkpoint on the site's timeline",
      );
      // a name taken already: the page says why
      await panel.locator('input[name="checkpoint"]').fill("before-upgrade");
      await panel.getByRole("button", { name: "Add checkpoint" }).click();
      await panel.getByText(/checkpoint "before-upgrade" of a1\/vol0 exists/).waitFor();
      await page.screenshot({ path: `${out}/points.png`, fullPage: true });

      // a failover test at the checkpoint, from the page: the copy is the volume at that point
      await page.locator('[data-action="failover-test"]').click();
      const dialog = page.locator("dialog");
      await dialog.locator('input[name="point"]').fill("before-upgrade");
      await dialog.getByRole("button", { name: "Failover test" }).click();
      await page.locator('.badge[data-state="testing"]').first().waitFor({ timeout: 30_000 });
      const test = page.locator('[data-testid="failover-test"]');
      await test.getByText(`a1/vol0, sequence ${cp.checkpoint.seq}`).waitFor({ timeout: 20_000 });
      const dir = `${topo.remotes.dr1.home}/tests`;
      const [copy] = [...Deno.readDirSync(dir)].map((e) => e.name);
      assert.is(await sha256File(`${dir}/${copy}`), cpHash, "the test copy holds the checkpoint's content");
      await page.screenshot({ path: `${out}/test-at-point.png`, fullPage: true });
      await page.locator('[data-action="end-test"]').click();
      await dialog.getByRole("button", { name: "End test" }).click();
      await page.locator('.badge[data-state="protected"]').first().waitFor({ timeout: 30_000 });
      assert.equal(problems, [], problems.join("\n"));
    } catch (e) {
      throw await failureWithScreenshot(e, page, out, problems);
    } finally {
      await browser.close();
      await topo.stop();
      await Deno.remove(topo.dir, { recursive: true }).catch(() => {});
    }
  },
);

t.run();
