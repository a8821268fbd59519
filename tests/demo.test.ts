// `deno task demo --sites N`: with 0 sites the agent and the local gateway run alone (the volume
// journaled and mirrored, no task: a task needs a remote center); with 1 site the demo's task is
// protected by the time the endpoints are printed and a write reaches every copy. Both print
// the same key=value lines for what they run and stop cleanly on SIGTERM; a bad --sites is a
// usage error.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { hashAll, run, waitFor } from "./lib/cluster.ts";
import { need } from "./lib/env.ts";
import { DemoRun } from "./lib/demo.ts";

const t = suite("demo");
const COMMON = [
  "nbd-uri",
  "nbd-tcp-uri",
  "lsp-image",
  "lgp-image",
  "gateway",
  "gateway-status",
  "web-url",
  "web-login",
  "web-password",
  "api-token-file",
  "logs",
];

/** Writes 1 MiB through the demo's NBD endpoint and waits until `copies` all equal the LSP. */
async function writeAndCompare(d: DemoRun, copies: string[]): Promise<void> {
  await run("qemu-io", ["-f", "raw", d.lines["nbd-uri"], "-c", "write -P 0x5a 1M 1M", "-c", "flush"]);
  const files = Object.fromEntries(["lsp-image", ...copies].map((k) => [k, d.lines[k]]));
  let h: Record<string, string> = {};
  await waitFor(
    async () => {
      h = await hashAll(files);
      return copies.every((k) => h[k] === h["lsp-image"]);
    },
    60_000,
    "every copy to equal the LSP",
    500,
  ).catch((e) => assert.unreachable(`${(e as Error).message}: ${JSON.stringify(h)}`));
}

t("--sites 0: the agent and the local gateway alone, vol0 mirrored, no task", async () => {
  if (!need("demo --sites 0", { tools: ["qemu-io"] })) return;
  const d = await DemoRun.start(0);
  try {
    for (const k of COMMON) assert.ok(d.lines[k], `${k}= printed:\n${d.stdout}`);
    assert.equal(
      Object.keys(d.lines).filter((k) => /^(rgp|rsp|remote)/.test(k)),
      [],
      "no site, no site lines",
    );
    assert.not.ok(d.lines.task, "no task without a remote center");
    assert.match(d.stdout, /No remote site \(--sites 0\)/);
    await writeAndCompare(d, ["lgp-image"]);
    const api = await d.api();
    const status = await api.expect(200, "GET", "/api/status") as {
      sites: unknown[];
      volumes: { name: string }[];
    };
    assert.equal(status.sites, []);
    assert.equal(status.volumes.map((v) => v.name), ["vol0"]);
  } finally {
    assert.is(await d.stop(), 0, "the demo stops cleanly");
  }
  assert.match(d.stdout, /stopped\n$/);
});

t("--sites 1: task demo is protected through the API at dr1, a write reaches every copy", async () => {
  if (!need("demo --sites 1", { tools: ["qemu-io"] })) return;
  const d = await DemoRun.start(1);
  try {
    for (const k of [...COMMON, "rgp-image.dr1", "rsp-image.dr1", "remote-status.dr1"]) {
      assert.ok(d.lines[k], `${k}= printed:\n${d.stdout}`);
    }
    assert.not.ok(d.lines["rgp-image.dr2"], "one site only");
    assert.is(d.lines.task, "demo (protected)");
    assert.match(d.lines["second-volume"], /\/disks\/app1\/vol1\.img$/);
    const api = await d.api();
    const task = await api.expect(200, "GET", "/api/tasks/demo") as {
      state: string;
      problems: unknown[];
      group: { remotes: { site: string }[] };
    };
    assert.is(task.state, "protected");
    assert.equal(task.problems, []);
    assert.equal(task.group.remotes.map((r) => r.site), ["dr1"]);
    await writeAndCompare(d, ["lgp-image", "rgp-image.dr1", "rsp-image.dr1"]);
  } finally {
    assert.is(await d.stop(), 0, "the demo stops cleanly");
  }
});

t("a bad --sites is a usage error naming the range", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../demo/demo.ts", import.meta.url).pathname, "--sites", "nine"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.is(out.code, 2);
  assert.match(new TextDecoder().decode(out.stderr), /--sites nine: give a whole number from 0 to 8/);
});

t.run();
