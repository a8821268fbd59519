// `deno task compile`: builds the one executable, dist/continuum.
//
// 1. the native library (native/build.ts; libxxhash linked statically),
// 2. the UI bundle (dist/ui/app.js), when the UI exists (ui/main.tsx),
// 3. `deno compile` of main.ts with those and the database migrations embedded
//    (the list is src/assets/assets.ts's, which also finds them at run time), and
//    without the npm packages only development uses (package-lock.json marks them),
// 4. a check that the result runs: `dist/continuum --version`.
//
// `deno compile` copies a runtime-only Deno ("denort") into the executable. Deno
// downloads it the first time and caches it in DENO_DIR; without Internet access it
// uses the file named by DENORT_BIN. Failing both, this script says so in one
// paragraph and exits 1. Flags: --output PATH (default dist/continuum).
import { buildNative } from "./native/build.ts";
import { assetsToEmbed } from "./src/assets/assets.ts";
import { VERSION } from "./src/version.ts";

const root = new URL("./", import.meta.url).pathname;
const deno = Deno.execPath();
const decoder = new TextDecoder();

/** An error whose message is the whole story: printed as is, no stack trace. */
class CompileError extends Error {
  constructor(message: string, readonly code = 1) {
    super(message);
  }
}

/** Marks the paragraph printed when no runtime can be had (tests look for it). */
export const NO_RUNTIME = "no deno compile runtime";

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function denoDir(): string {
  const home = Deno.env.get("HOME") ?? "";
  return Deno.env.get("DENO_DIR") ?? `${Deno.env.get("XDG_CACHE_HOME") ?? `${home}/.cache`}/deno`;
}

function noRuntime(what: string, url?: string): CompileError {
  const target = Deno.build.target;
  const zip = `denort-${target}.zip`;
  return new CompileError(
    `compile: ${NO_RUNTIME}: ${what}. \`deno compile\` builds the executable from "denort", a ` +
      `runtime-only Deno binary of exactly the running version (${Deno.version.deno}, ${target}), which it ` +
      `downloads on first use${url ? ` (${url})` : ""} and caches in DENO_DIR. Where it cannot be ` +
      `downloaded, set DENORT_BIN to the path of that denort binary — not the full \`deno\` CLI, ` +
      `which would build a plain Deno instead of Continuum — and run \`deno task compile\` again. ` +
      `A denort comes from the ${zip} asset of Deno's v${Deno.version.deno} release (the archive ` +
      `holds the single file denort): fetch it on a machine with Internet access and copy the ` +
      `unzipped file here, or put the archive itself at ` +
      `${denoDir()}/dl/release/v${Deno.version.deno}/${zip}, where deno compile looks before ` +
      `downloading.`,
  );
}

async function run(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: root,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...opts.env },
  }).spawn();
  const timer = opts.timeoutMs
    ? setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
    }, opts.timeoutMs)
    : undefined;
  const out = await child.output();
  clearTimeout(timer);
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** Deno's error text without the `Stack backtrace` block RUST_BACKTRACE adds. */
function denoError(stderr: string): string {
  return stderr.replace(/\n*Stack backtrace:[\s\S]*$/, "").trim();
}

/** Refuses a DENORT_BIN that is missing or is the full deno CLI (it would build a plain Deno). */
async function checkDenortBin(): Promise<void> {
  const bin = Deno.env.get("DENORT_BIN");
  if (!bin) return;
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(bin);
  } catch (e) {
    throw noRuntime(`DENORT_BIN=${bin} cannot be read (${(e as Error).message})`);
  }
  if (!info.isFile) throw noRuntime(`DENORT_BIN=${bin} is not a file`);
  // the deno CLI answers --version; denort, having no program embedded, does not
  const r = await run(bin, ["--version"], { timeoutMs: 10_000 }).catch(() => undefined);
  const m = r && /^deno (\d+\.\d+\.\d+)/m.exec(r.stdout);
  if (m) {
    throw noRuntime(
      `DENORT_BIN=${bin} is the full deno CLI (deno ${m[1]}), not the denort runtime binary`,
    );
  }
}

/** `--exclude` arguments for the npm packages only development needs. */
function devPackageExcludes(): string[] {
  const out = ["--exclude", "node_modules/.bin"]; // links to development tools
  let lock: { packages?: Record<string, { dev?: boolean }> };
  try {
    lock = JSON.parse(Deno.readTextFileSync(`${root}package-lock.json`));
  } catch {
    return out;
  }
  for (const [path, pkg] of Object.entries(lock.packages ?? {})) {
    // nested packages go with their top-level one
    if (pkg.dev && path.lastIndexOf("node_modules/") === 0 && exists(root + path)) {
      out.push("--exclude", path);
    }
  }
  return out;
}

async function bundleUi(): Promise<void> {
  if (!exists(`${root}ui/main.tsx`)) {
    console.log("ui: no ui/main.tsx, no UI bundle to embed");
    return;
  }
  await Deno.remove(`${root}dist/ui`, { recursive: true }).catch(() => {});
  await Deno.mkdir(`${root}dist/ui`, { recursive: true });
  const r = await run(deno, [
    "bundle",
    "--platform",
    "browser",
    "--minify",
    "-o",
    "dist/ui/app.js",
    "ui/main.tsx",
  ]);
  if (r.code !== 0) throw new CompileError(`compile: bundling the UI failed:\n${denoError(r.stderr)}`);
  console.log("ui-bundle=dist/ui/app.js");
}

async function compile(output: string): Promise<void> {
  // the heartbeat Worker is loaded by URL at run time: it must be in the executable too
  const includes = [...assetsToEmbed(), "src/heartbeat/sender-worker.ts"].flatMap((p) => ["--include", p]);
  const args = ["compile", "-A", ...includes, ...devPackageExcludes(), "--output", output, "main.ts"];
  console.log(`deno ${args.join(" ")}`);
  const r = await run(deno, args);
  if (r.code === 0) return;
  const err = denoError(r.stderr);
  if (/Setting up base binary|denort|Could not find denort/i.test(err)) {
    const url = /https?:\/\/\S+?denort\S+?\.zip/.exec(err)?.[0];
    const cause = err.split("\n").map((l) => l.trim()).filter((l) => /^\d+: /.test(l)).pop()?.replace(
      /^\d+: /,
      "",
    );
    throw noRuntime(
      Deno.env.get("DENORT_BIN")
        ? `deno compile could not use DENORT_BIN=${Deno.env.get("DENORT_BIN")} (${cause ?? err})`
        : `deno compile could not download it (${cause ?? "no network"}) and DENORT_BIN is not set`,
      url,
    );
  }
  throw new CompileError(`compile: deno compile failed:\n${err}`);
}

/** Runs the new executable once: it must be Continuum, not a plain Deno. */
async function verify(output: string): Promise<void> {
  const r = await run(output, ["--version"], { timeoutMs: 60_000 });
  if (r.code === 0 && r.stdout.trim() === `continuum ${VERSION}`) return;
  await Deno.remove(output).catch(() => {});
  const printed = (r.stdout + r.stderr).trim().split("\n").slice(0, 3).join(" / ");
  throw noRuntime(
    `the executable built does not run Continuum (\`--version\` exited ${r.code} and printed ` +
      `"${printed}"); it was removed. Its runtime (DENORT_BIN=${Deno.env.get("DENORT_BIN") ?? "unset"}) ` +
      "is probably not a denort of this exact Deno version",
  );
}

async function main(args: string[]): Promise<void> {
  let output = "dist/continuum";
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--output" && args[i + 1]) output = args[++i];
    else if (args[i].startsWith("--output=")) output = args[i].slice(9);
    else throw new CompileError(`compile: unknown argument "${args[i]}" (only --output PATH)`, 2);
  }
  if (!output.startsWith("/")) output = root + output;
  await checkDenortBin();
  const lib = await buildNative();
  console.log(`native-library=${lib.slice(root.length)}`);
  await bundleUi();
  await Deno.mkdir(output.slice(0, output.lastIndexOf("/")), { recursive: true });
  await compile(output);
  await verify(output);
  const size = Deno.statSync(output).size;
  console.log(`executable=${output} (${(size / 2 ** 20).toFixed(1)} MiB, continuum ${VERSION})`);
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    if (e instanceof CompileError) {
      console.error(e.message);
      Deno.exit(e.code);
    }
    console.error(`compile: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
