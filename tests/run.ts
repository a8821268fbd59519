// The test entry point (`deno task test`). Each tests/**/*.test.ts file runs in its
// own process (a crash or a hung file cannot take the others down), its uvu summary
// is read, and the run ends with the one line CI reads: `N passed, N failed`.
// Arguments filter files by substring: `deno task test nbd journal`.
import { ensureSetup } from "./lib/setup.ts";

const root = new URL("../", import.meta.url).pathname;
const fileTimeoutMs = Number(Deno.env.get("TEST_FILE_TIMEOUT_MS") ?? 8 * 60_000);

async function findTests(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await findTests(p));
    else if (e.name.endsWith(".test.ts")) out.push(p);
  }
  return out.sort();
}

interface Outcome {
  passed: number;
  failed: number;
}

function summary(text: string): { total: number; passed: number } | undefined {
  const total = /Total:\s+(\d+)/.exec(text);
  const passed = /Passed:\s+(\d+)/.exec(text);
  return total && passed ? { total: Number(total[1]), passed: Number(passed[1]) } : undefined;
}

/** Removes the big files (images, journal rings) a passing test left; logs and screenshots stay. */
async function shrink(dir: string): Promise<void> {
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch {
    return;
  }
  for (const e of entries) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) await shrink(p);
    else if (e.isFile && (await Deno.stat(p)).size >= 4 << 20) await Deno.remove(p).catch(() => {});
  }
}

let fileIndex = 0;

async function runFile(file: string): Promise<Outcome> {
  const rel = file.slice(root.length);
  console.log(`\n=== ${rel}`);
  const started = performance.now();
  // each file's roles work under a directory of its own, so what it leaves can be cleaned up;
  // its name is short because Unix socket paths below it must stay under 108 bytes
  const outDir = `${Deno.env.get("TEST_OUTPUT_DIR") ?? `${root}test-output`}/${Deno.pid.toString(36)}${
    (fileIndex++).toString(36)
  }`;
  console.log(`(output: ${outDir.slice(root.length)})`);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", file],
    cwd: root,
    stdout: "piped",
    stderr: "inherit",
    env: { NO_COLOR: "1", TEST_OUTPUT_DIR: outDir },
  }).spawn();
  const timer = setTimeout(() => {
    console.log(`!!! ${rel}: no result after ${fileTimeoutMs / 1000}s, killed`);
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, fileTimeoutMs);
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    const s = decoder.decode(chunk, { stream: true });
    text += s;
    await Deno.stdout.write(chunk);
  }
  const status = await child.status;
  clearTimeout(timer);
  const s = summary(text);
  const secs = ((performance.now() - started) / 1000).toFixed(1);
  if (!s) {
    console.log(`!!! ${rel}: exited with code ${status.code} before its summary (${secs}s)`);
    return { passed: 0, failed: 1 };
  }
  let failed = s.total - s.passed;
  if (status.code !== 0 && failed === 0) {
    console.log(`!!! ${rel}: exit code ${status.code} although every test passed`);
    failed = 1;
  }
  console.log(`--- ${rel}: ${s.passed} passed, ${failed} failed (${secs}s)`);
  if (failed === 0) await shrink(outDir);
  return { passed: s.passed, failed };
}

await ensureSetup();
const filters = Deno.args;
const files = (await findTests(`${root}tests`)).filter((f) =>
  filters.length === 0 || filters.some((x) => f.includes(x))
);
let passed = 0, failed = 0;
const failedFiles: string[] = [];
for (const f of files) {
  const r = await runFile(f);
  passed += r.passed;
  failed += r.failed;
  if (r.failed) failedFiles.push(f.slice(root.length));
}
if (failedFiles.length) console.log(`\nfailing files: ${failedFiles.join(", ")}`);
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(failed === 0 && files.length > 0 ? 0 : 1);
