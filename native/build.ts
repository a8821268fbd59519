// Builds native/build/libcontinuum.so with its C dependency (libxxhash) linked
// statically, so the library and the executable that embeds it need nothing else.
// Run by `deno task build:native`; demo and tests call ensureNativeBuilt().
import { fileURLToPath as fromFileUrl } from "node:url";

const source = fromFileUrl(new URL("./continuum.c", import.meta.url));
const outDir = fromFileUrl(new URL("./build/", import.meta.url));
export const nativeLibraryPath = outDir + "libcontinuum.so";

const staticXxhash = [
  "/usr/lib/x86_64-linux-gnu/libxxhash.a",
  "/usr/lib/aarch64-linux-gnu/libxxhash.a",
  "/usr/lib/libxxhash.a",
];

function mtime(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

export async function buildNative(force = false): Promise<string> {
  if (!force && mtime(nativeLibraryPath) > mtime(source)) return nativeLibraryPath;
  const archive = staticXxhash.find((p) => mtime(p) > 0);
  if (!archive) {
    throw new Error(
      "libxxhash.a not found: install Debian's libxxhash-dev (apt-get install -y libxxhash-dev)",
    );
  }
  await Deno.mkdir(outDir, { recursive: true });
  const tmp = `${nativeLibraryPath}.${Deno.pid}.tmp`;
  const args = [
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fPIC",
    "-fvisibility=hidden",
    "-shared",
    "-o",
    tmp,
    source,
    archive,
    "-Wl,--exclude-libs,ALL",
  ];
  const out = await new Deno.Command("cc", { args, stderr: "piped", stdout: "piped" }).output();
  if (!out.success) {
    throw new Error(`cc ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
  // rename is atomic, so a concurrent loader never sees a half-written library
  await Deno.rename(tmp, nativeLibraryPath);
  return nativeLibraryPath;
}

if (import.meta.main) {
  const path = await buildNative(Deno.args.includes("--force"));
  console.log(`native-library=${path}`);
}
