// Set-up shared by `deno task test` and `deno task demo`: the Debian packages the
// tests use (installed when running as root, otherwise the one apt-get line to run),
// the native library and the web UI bundle.
import { buildNative } from "../../native/build.ts";
import { bundleUi } from "../../src/web/ui-bundle.ts";

const root = new URL("../../", import.meta.url).pathname;

export function debianPackages(): string[] {
  return Deno.readTextFileSync(`${root}.ci/debian-packages`).split("\n")
    .map((l) => l.replace(/#.*/, "").trim()).filter(Boolean);
}

async function installed(pkg: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("dpkg-query", { args: ["-W", "-f=${Status}", pkg], stderr: "null" })
      .output();
    return new TextDecoder().decode(out.stdout).includes("install ok installed");
  } catch {
    return false; // not a Debian system: nothing to check against
  }
}

async function run(cmd: string, args: string[]): Promise<boolean> {
  const st = await new Deno.Command(cmd, { args, stdout: "inherit", stderr: "inherit" }).spawn().status;
  return st.success;
}

export async function ensureDebianPackages(): Promise<void> {
  const missing: string[] = [];
  for (const p of debianPackages()) if (!await installed(p)) missing.push(p);
  if (missing.length === 0) return;
  const line = `apt-get install -y ${missing.join(" ")}`;
  if (Deno.uid() !== 0) {
    console.log(`setup: missing Debian packages; as root run:\n  ${line}`);
    return;
  }
  console.log(`setup: installing ${missing.join(" ")}`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  const ok = await new Deno.Command("apt-get", { args: ["install", "-y", ...missing], env }).spawn().status;
  if (ok.success) return;
  // a fresh machine may have no package lists yet
  if (!await run("apt-get", ["update"]) || !await run("apt-get", ["install", "-y", ...missing])) {
    throw new Error(`setup: ${line} failed`);
  }
}

/** Newest modification time (ms) of the files under `dir`, 0 when there are none. */
async function newest(dir: string): Promise<number> {
  let t = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    t = Math.max(t, e.isDirectory ? await newest(p) : (await Deno.stat(p)).mtime?.getTime() ?? 0);
  }
  return t;
}

/** Bundles the web UI (dist/ui/app.js) when it is missing or older than a file of ui/. */
export async function ensureUiBundle(): Promise<void> {
  const built = await Deno.stat(`${root}dist/ui/app.js`).then((s) => s.mtime?.getTime() ?? 0, () => 0);
  if (built > await newest(`${root}ui`)) return;
  const r = await bundleUi();
  console.log(`setup: bundled the web UI (${r.bytes} bytes)`);
}

export async function ensureSetup(): Promise<void> {
  await ensureDebianPackages();
  await buildNative();
  await ensureUiBundle();
}
