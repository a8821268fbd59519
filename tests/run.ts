// The test entry point (`deno task test`). Each tests/**/*.test.ts file runs in its
// own process (a crash or a hung file cannot take the others down), its uvu summary
// is read, and the run ends with the one line CI reads: `N passed, N failed`.
// Arguments filter files by substring: `deno task test nbd journal`.
// A second pass runs the capture tests, the standby copies' test, the site link's transport test
// (its sealed batches), the standby stream's session queue (records sent from the journal) and
// the NBD fuzzer against the AddressSanitizer and
// UndefinedBehaviorSanitizer build of the native library (every run of the whole suite, and with
// TEST_SANITIZE=1): a report from any process fails the file.
import { ensureSetup } from "./lib/setup.ts";
import { buildNative, sanitizerEnv } from "../native/build.ts";

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

const SANITIZER_REPORT =
  /ERROR: AddressSanitizer|runtime error:|UndefinedBehaviorSanitizer|ERROR: LeakSanitizer/;

/**
 * Sanitizer reports a file's processes left: in the files ASan writes under log_path, or in a
 * role's log (UBSan reports on stderr, which a role's log holds).
 */
async function sanitizerReports(dir: string): Promise<string[]> {
  const found: string[] = [];
  let entries: Deno.DirEntry[] = [];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch { /* the file left no directory */ }
  for (const e of entries) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) found.push(...await sanitizerReports(p));
    else if (e.isFile && (e.name.startsWith("sanitizer.") || e.name.endsWith(".log"))) {
      const text = await Deno.readTextFile(p).catch(() => "");
      const at = text.search(SANITIZER_REPORT);
      if (at >= 0) found.push(`${p}:\n${text.slice(Math.max(0, at - 200), at + 6000)}`);
    }
  }
  return found;
}

async function runFile(file: string, sanitizer?: Record<string, string>): Promise<Outcome> {
  const rel = file.slice(root.length);
  console.log(`\n=== ${rel}${sanitizer ? " (sanitized native library)" : ""}`);
  const started = performance.now();
  // each file's roles work under a directory of its own, so what it leaves can be cleaned up;
  // its name is short because Unix socket paths below it must stay under 108 bytes
  const outDir = `${Deno.env.get("TEST_OUTPUT_DIR") ?? `${root}test-output`}/${Deno.pid.toString(36)}${
    (fileIndex++).toString(36)
  }`;
  console.log(`(output: ${outDir.slice(root.length)})`);
  let env: Record<string, string> = { NO_COLOR: "1", TEST_OUTPUT_DIR: outDir };
  if (sanitizer) {
    // the test process and every role it starts load the sanitized library; reports go to files
    await Deno.mkdir(outDir, { recursive: true });
    const logPath = `log_path=${outDir}/sanitizer`;
    env = {
      ...env,
      ...sanitizer,
      CONTINUUM_SANITIZER_PRELOAD: sanitizer.LD_PRELOAD,
      ASAN_OPTIONS: `${sanitizer.ASAN_OPTIONS}:${logPath}`,
      UBSAN_OPTIONS: `${sanitizer.UBSAN_OPTIONS}:${logPath}`,
    };
  }
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", file],
    cwd: root,
    stdout: "piped",
    stderr: "inherit",
    env,
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
  const reports = sanitizer ? await sanitizerReports(outDir) : [];
  for (const r of reports) console.log(`!!! ${rel}: sanitizer report:\n${r.slice(0, 8000)}`);
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
  if (reports.length && failed === 0) failed = 1;
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
const sanitize = filters.length === 0 || Deno.env.get("TEST_SANITIZE") === "1";
const sanitized = files.filter((f) =>
  /\/tests\/(capture-[^/]*|unit-standby|transport|gateway-standby-queue|fuzz-nbd)\.test\.ts$/.test(f)
);
if (sanitize && sanitized.length) {
  await buildNative(false, true);
  const env = await sanitizerEnv();
  for (const f of sanitized) {
    const r = await runFile(f, env);
    passed += r.passed;
    failed += r.failed;
    if (r.failed) failedFiles.push(`${f.slice(root.length)} (sanitized)`);
  }
}
if (failedFiles.length) console.log(`\nfailing files: ${failedFiles.join(", ")}`);
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(failed === 0 && files.length > 0 ? 0 : 1);
