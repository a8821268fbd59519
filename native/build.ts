// Builds native/build/libcontinuum.so (the data plane, native/*.c) with its C dependencies
// (libxxhash, OpenSSL's libcrypto) linked statically, so the library and the executable that
// embeds it need nothing else. `--sanitize` builds native/build/libcontinuum-asan.so instead:
// AddressSanitizer and UndefinedBehaviorSanitizer, loaded with their runtimes preloaded
// (sanitizerEnv). Run by `deno task build:native`; demo and tests call ensureNativeBuilt().
import { fileURLToPath as fromFileUrl } from "node:url";

const dir = fromFileUrl(new URL("./", import.meta.url));
const outDir = `${dir}build/`;
export const nativeLibraryPath = outDir + "libcontinuum.so";
export const sanitizedLibraryPath = outDir + "libcontinuum-asan.so";

const libDirs = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"];
const archives = [
  { file: "libxxhash.a", pkg: "libxxhash-dev" },
  { file: "libcrypto.a", pkg: "libssl-dev" },
];

function mtime(path: string): number {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? 0;
  } catch {
    return 0;
  }
}

function sources(): string[] {
  return [...Deno.readDirSync(dir)].filter((e) => e.isFile && /\.[ch]$/.test(e.name)).map((e) => dir + e.name)
    .sort();
}

function staticArchive(file: string, pkg: string): string {
  for (const d of libDirs) if (mtime(`${d}/${file}`) > 0) return `${d}/${file}`;
  throw new Error(`${file} not found: install Debian's ${pkg} (apt-get install -y ${pkg})`);
}

async function cc(args: string[]): Promise<void> {
  const out = await new Deno.Command("cc", { args, stderr: "piped", stdout: "piped" }).output();
  if (!out.success) {
    throw new Error(`cc ${args.join(" ")} failed:\n${new TextDecoder().decode(out.stderr)}`);
  }
}

async function compilerFile(name: string): Promise<string> {
  const out = await new Deno.Command("cc", { args: [`-print-file-name=${name}`], stdout: "piped" }).output();
  return new TextDecoder().decode(out.stdout).trim();
}

/** The environment that loads the sanitized library: its runtimes preloaded, leaks not counted (Deno's own). */
export async function sanitizerEnv(): Promise<Record<string, string>> {
  return {
    CONTINUUM_NATIVE_LIB: sanitizedLibraryPath,
    LD_PRELOAD: `${await compilerFile("libasan.so")}:${await compilerFile("libubsan.so")}`,
    ASAN_OPTIONS: "detect_leaks=0:abort_on_error=1:halt_on_error=1",
    UBSAN_OPTIONS: "print_stacktrace=1:halt_on_error=1",
  };
}

export async function buildNative(force = false, sanitize = false): Promise<string> {
  const target = sanitize ? sanitizedLibraryPath : nativeLibraryPath;
  const srcs = sources();
  const newest = Math.max(...srcs.map(mtime), mtime(fromFileUrl(import.meta.url)));
  if (!force && mtime(target) > newest) return target;
  const libs = archives.map((a) => staticArchive(a.file, a.pkg));
  await Deno.mkdir(outDir, { recursive: true });
  const tmp = `${target}.${Deno.pid}.tmp`;
  const flags = sanitize
    ? [
      "-O1",
      "-g",
      "-fsanitize=address,undefined",
      "-fno-omit-frame-pointer",
      "-fno-sanitize-recover=undefined",
    ]
    : ["-O2", "-g"];
  await cc([
    ...flags,
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fPIC",
    "-fvisibility=hidden",
    "-shared",
    "-pthread",
    "-o",
    tmp,
    ...srcs.filter((s) => s.endsWith(".c")),
    ...libs,
    "-Wl,--exclude-libs,ALL",
    "-ldl",
  ]);
  // rename is atomic, so a concurrent loader never sees a half-written library
  await Deno.rename(tmp, target);
  return target;
}

if (import.meta.main) {
  const path = await buildNative(Deno.args.includes("--force"), Deno.args.includes("--sanitize"));
  console.log(`native-library=${path}`);
}
