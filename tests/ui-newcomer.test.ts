// A newcomer in headless Chromium (playwright-core) on the demo's own topology (`deno task demo
// --sites 2`: the agents start with their identity only, the demo made task "demo" through the
// API). The walk: log in, see the demo's task protected on the dashboard, create a second task in
// the wizard with nothing but clicks on what was discovered and its name, start it, see it
// protected with both sites consistent, run a failover test and end it — timed, with a
// screenshot of each step. Then a start that fails (its device is missing): the reason on the
// task page, a badge in the task list, the event and the task on the dashboard; the device put
// back, one click on Retry makes it protected. The pages must log no unexpected console error.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { sparseImage, tempDir, waitFor } from "./lib/cluster.ts";
import { haveChromium, launchChromium } from "./lib/browser.ts";
import { DemoRun } from "./lib/demo.ts";

const t = suite("newcomer in a browser");
const MiB = 1024 * 1024;
const SLOTS = ["lsp", "lgp", "buffer", "rgp@dr1", "rsp@dr1", "rgp@dr2", "rsp@dr2"];

type Browser = Awaited<ReturnType<typeof launchChromium>>;
type Page = Awaited<ReturnType<Browser["newPage"]>>;

const ctx: {
  demo?: DemoRun;
  browser?: Browser;
  page?: Page;
  out: string;
  problems: string[];
  shots: string[];
} = {
  out: "",
  problems: [],
  shots: [],
};
const ready = () => ctx.demo !== undefined && ctx.page !== undefined;

t.before(async () => {
  if (!haveChromium("newcomer in a browser")) return;
  ctx.out = await tempDir("newcomer");
  ctx.demo = await DemoRun.start(2);
  ctx.browser = await launchChromium();
  const page = await (await ctx.browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const url = m.location().url;
    // Chromium logs every 4xx as an error: these are answers the walk provokes on purpose
    if (/status of 401/.test(m.text()) && /\/api\/session$/.test(url)) return;
    if (/status of 409/.test(m.text()) && /\/api\/tasks\/third\/(actions\/start|retry)$/.test(url)) return;
    ctx.problems.push(`console: ${m.text()} (${url})`);
  });
  page.on("pageerror", (e) => ctx.problems.push(`page error: ${e.message}`));
  ctx.page = page;
});

t.after(async () => {
  await ctx.browser?.close();
  await ctx.demo?.stop();
  if (ctx.shots.length) console.log(`screenshots:\n  ${ctx.shots.join("\n  ")}`);
});

async function shot(name: string): Promise<void> {
  const path = `${ctx.out}/${String(ctx.shots.length + 1).padStart(2, "0")}-${name}.png`;
  await ctx.page!.screenshot({ path, fullPage: true });
  ctx.shots.push(path);
}

/** Runs a step of the walk; on failure a screenshot says where it stood. */
async function guarded(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
    assert.equal(ctx.problems, [], ctx.problems.join("\n"));
  } catch (e) {
    await ctx.page?.screenshot({ path: `${ctx.out}/failure.png`, fullPage: true }).catch(() => {});
    throw new Error(
      `${(e as Error).message}\n(screenshot ${ctx.out}/failure.png; demo logs ${ctx.demo?.dir})`,
    );
  }
}

/**
 * The wizard from the dashboard to a created task, every choice left as discovered; only the name
 * typed. `probe`: first try what a user may get wrong (a size too large, a name taken): each field
 * says so in its words, and the button that cannot be used says why.
 */
async function wizard(page: Page, name: string, probe = false): Promise<void> {
  await page.getByRole("link", { name: "New task" }).click();
  await page.getByRole("heading", { name: "New protection task" }).waitFor();
  await page.locator('input[name="local-site"][value="local"]:checked').waitFor();
  for (const s of ["dr1", "dr2"]) {
    await page.locator(`input[name="remote-site"][value="${s}"]:checked`).waitFor();
  }
  assert.match(await page.getByTestId("needed").textContent() ?? "", /7 partitions/);
  await shot(`${name}-centers`);
  await page.getByRole("button", { name: "Next: Hosts and devices" }).click();
  await page.getByRole("heading", { name: "Hosts at these centers" }).waitFor();
  await shot(`${name}-hosts`);
  await page.getByRole("button", { name: "Next: Group" }).click();
  // every role pre-selected: the proposal of the gateway, or the only possible choice
  for (const slot of SLOTS) {
    await waitFor(
      async () => (await page.locator(`select[name="slot-${slot}"]`).inputValue()) !== "",
      20_000,
      `the ${slot} to be pre-selected`,
      100,
    );
  }
  await page.getByTestId("sizes-ok").waitFor();
  await shot(`${name}-group`);
  await page.getByRole("button", { name: "Next: Strategies" }).click();
  const next = page.getByRole("button", { name: "Next: Review" });
  if (probe) {
    const bound = page.locator("label.field", { has: page.locator('input[name="buffer-bound"]') });
    await bound.locator("input").fill("100000P");
    await bound.locator(".err").getByText("is too large (at most 8.0 PiB)", { exact: true }).waitFor();
    await bound.locator("input").fill("1T");
    await bound.locator(".err").getByText(/^is too large: the buffer partition holds 512 MiB$/).waitFor();
    assert.ok(await next.isDisabled());
    assert.is(await next.getAttribute("title"), "Correct the marked fields.");
    await page.locator("#why-not").getByText("Correct the marked fields.").waitFor();
    await bound.locator("input").fill("");
  }
  await next.click();
  const create = page.getByRole("button", { name: "Create task" });
  assert.ok(await create.isDisabled(), "Create waits for a name");
  assert.is(await create.getAttribute("title"), "Type a name for the task.");
  if (probe) {
    await page.locator('input[name="task-name"]').fill("second");
    await page.locator("label.field", { hasText: "Task name" }).locator(".err")
      .getByText("a task named second exists already").waitFor();
    assert.ok(await create.isDisabled());
    await page.locator('input[name="task-name"]').fill("no spaces please");
    await page.locator("label.field", { hasText: "Task name" }).locator(".err")
      .getByText("use 1 to 64 letters, digits, '.', '_' or '-'").waitFor();
    await shot(`${name}-form-messages`);
  }
  await page.locator('input[name="task-name"]').fill(name);
  await shot(`${name}-review`);
  await create.click();
  await page.waitForURL(new RegExp(`/tasks/${name}$`));
}

/** Confirms an action of the task page. */
async function act(page: Page, action: string, label: string): Promise<void> {
  await page.locator(`[data-action="${action}"]`).click();
  await page.locator("dialog").getByRole("button", { name: label }).click();
}

t(
  "the newcomer's walk: the demo's task protected, a second task by clicks and a name, a failover test",
  async () => {
    if (!ready()) return;
    const { demo, page } = ctx;
    const web = demo!.lines["web-url"];
    let elapsed = 0;
    await guarded(async () => {
      const started = performance.now();
      await page!.goto(web);
      await page!.getByLabel("User name").fill("admin");
      await page!.getByLabel("Password").fill(demo!.lines["web-password"]);
      await page!.getByRole("button", { name: "Log in" }).click();
      await page!.getByRole("heading", { name: "Dashboard" }).waitFor();
      // the demo's task, protected; the agent's server known (discovered)
      await page!.locator('a[href="/tasks/demo"] .badge[data-state="protected"]').waitFor({
        timeout: 30_000,
      });
      await page!.locator('[data-testid="agents"] tr[data-agent="app1"] td').nth(1).getByText("app1")
        .waitFor();
      await page!.locator('[data-testid="links"] tr[data-site="dr2"] .badge[data-state="consistent"]')
        .waitFor();
      await shot("dashboard");

      await wizard(page!, "second");
      await act(page!, "start", "Start");
      await page!.locator('h1 .badge[data-state="protected"]').waitFor({ timeout: 90_000 });
      for (const site of ["dr1", "dr2"]) {
        const row = page!.locator(`[data-testid="task-live"] tr[data-site="${site}"]`);
        await row.locator("span.row", { hasText: "app1/vol1" }).locator('.badge[data-state="consistent"]')
          .waitFor();
      }
      await shot("second-protected");

      await act(page!, "failover-test", "Failover test");
      await page!.locator('h1 .badge[data-state="testing"]').waitFor({ timeout: 60_000 });
      assert.match(
        await page!.getByTestId("test-export").textContent() ?? "",
        /^nbd:\/\/127\.0\.0\.1:\d+\/test-app1-vol1$/,
      );
      await shot("second-failover-test");
      await act(page!, "end-test", "End test");
      await page!.locator('h1 .badge[data-state="protected"]').waitFor({ timeout: 60_000 });
      await page!.getByTestId("failover-test").waitFor({ state: "detached" });
      elapsed = (performance.now() - started) / 1000;
      await shot("second-test-ended");
    });
    console.log(
      `\nnewcomer walk: ${elapsed.toFixed(1)} s from the login to the end of the failover test ` +
        "(typed: the login and the task name; every other input a click on what was discovered)",
    );
    assert.ok(elapsed < 120, `the walk took ${elapsed.toFixed(1)} s (target: under 2 minutes)`);
  },
);

t("a start that fails (its device missing) shows why everywhere until one click on Retry", async () => {
  if (!ready()) return;
  const { demo, page } = ctx;
  const disks = `${demo!.dir}/disks`;
  await guarded(async () => {
    // a third volume appears on the application server and the standbys, and is discovered
    for (const owner of ["app1", "dr1", "dr2"]) await sparseImage(`${disks}/${owner}/vol2.img`, 256 * MiB);
    const api = await demo!.api();
    await waitFor(
      async () => {
        const q = `host=app1&device=${encodeURIComponent(`${disks}/app1/vol2.img`)}&remotes=dr1,dr2`;
        return (await api.expect(200, "GET", `/api/discovery/proposal?${q}`) as { complete: boolean })
          .complete;
      },
      30_000,
      "the third volume to be discovered",
      500,
    );
    await page!.getByRole("link", { name: "Dashboard" }).click();
    await wizard(page!, "third", true);
    // the device goes away before the start
    await Deno.remove(`${disks}/app1/vol2.img`);
    await act(page!, "start", "Start");
    await page!.locator("dialog").getByText(/vol2\.img does not exist/).waitFor();
    await page!.locator("dialog").getByRole("button", { name: "Cancel" }).click();
    const problems = page!.getByTestId("task-problems");
    await problems.getByText(/start failed: agent app1 cannot serve volume vol2: .*vol2\.img does not exist/)
      .waitFor();
    await page!.locator('h1 .badge[data-state="configured"]').waitFor();
    await shot("third-start-failed");

    await page!.getByRole("link", { name: "Tasks", exact: true }).click();
    await page!.locator("tr", { hasText: "third" }).getByTestId("problem-badge").getByText("start failed")
      .waitFor();
    await shot("tasks-badge");

    await page!.getByRole("link", { name: "Dashboard" }).click();
    await page!.getByTestId("attention").getByText(/vol2\.img does not exist/).waitFor();
    await page!.locator("ul.log li", { hasText: /task third: start failed: .*does not exist/ }).first()
      .waitFor();
    await shot("dashboard-attention");

    // fixed: the device is back; one click
    await sparseImage(`${disks}/app1/vol2.img`, 256 * MiB);
    await page!.getByTestId("attention").getByRole("link", { name: "third" }).click();
    await page!.locator('[data-testid="task-problems"] [data-action="retry"]').click();
    await page!.locator('h1 .badge[data-state="protected"]').waitFor({ timeout: 90_000 });
    await page!.getByTestId("task-problems").waitFor({ state: "detached" });
    await shot("third-retried-protected");
    const task = await api.expect(200, "GET", "/api/tasks/third") as { state: string; problems: unknown[] };
    assert.is(task.state, "protected");
    assert.equal(task.problems, []);
  });
});

t.run();
