// Bundles the web UI (ui/main.tsx, preact + signals, its styles included) into one file,
// dist/ui/app.js, with `deno bundle` (esbuild; offline once cached). compile.ts embeds dist/ui
// in the executable; tests call bundleUi() before starting a gateway. Run directly to build:
//   npx deno run -A src/web/ui-bundle.ts
const root = new URL("../../", import.meta.url).pathname;

export interface BundleResult {
  path: string;
  bytes: number;
}

/** Builds dist/ui/app.js (or `out`) from ui/main.tsx; throws with deno's message when it fails. */
export async function bundleUi(
  o: { root?: string; out?: string; minify?: boolean } = {},
): Promise<BundleResult> {
  const base = o.root ?? root;
  const out = o.out ?? `${base}dist/ui/app.js`;
  await Deno.mkdir(out.slice(0, out.lastIndexOf("/")), { recursive: true });
  const tmp = `${out}.${Deno.pid}.tmp`;
  const args = [
    "bundle",
    "--platform",
    "browser",
    ...(o.minify === false ? [] : ["--minify"]),
    "-o",
    tmp,
    "ui/main.tsx",
  ];
  const r = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: base,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  if (r.code !== 0) {
    // cleanup of the failed bundle (it may not exist): the error below says why it failed
    await Deno.remove(tmp).catch(() => {});
    const err = new TextDecoder().decode(r.stderr).replace(/\n*Stack backtrace:[\s\S]*$/, "").trim();
    throw new Error(`bundling the UI failed (deno ${args.join(" ")}):\n${err}`);
  }
  // replaced in one step: a gateway serving the old bundle never reads half a file
  await Deno.rename(tmp, out);
  return { path: out, bytes: (await Deno.stat(out)).size };
}

if (import.meta.main) {
  try {
    const r = await bundleUi();
    console.log(`ui-bundle=${r.path} (${r.bytes} bytes)`);
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(1);
  }
}
