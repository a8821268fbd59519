// The files that travel inside the one executable: the native library (built by
// native/build.ts), the database migrations and, when it has been built, the UI bundle.
//
// `deno compile --include PATH` stores each file in the executable's read-only virtual
// file system, at the same path relative to the modules as in the source tree (its root
// is $TMPDIR/deno-compile-NAME/ at run time). So every asset is found at
// ASSET-ROOT/<its repository path>, where ASSET-ROOT is two levels above this module,
// under `deno run` (the checkout) and in the executable (the embedded tree) alike.
//
// What differs in the executable ("embedded mode"): the operating system's loader
// cannot map a file that exists only inside the executable, so the native library's
// bytes are written once to a private runtime directory, under a name derived from
// their SHA-256, and loaded from there (or from an anonymous memory file when no such
// directory is usable). Tests force exactly this path under `deno run` with
// CONTINUUM_FORCE_EMBEDDED=1 and CONTINUUM_ASSET_ROOT=DIR (a copy made by copyAssets).
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { logger } from "../log.ts";

const log = logger("assets");

/** Every asset's path relative to the repository root (and to the embedded root). */
export const assetPaths = {
  nativeLibrary: "native/build/libcontinuum.so",
  migrations: "src/db/migrations",
  /** Optional: present once the UI exists and has been bundled. */
  ui: "dist/ui",
} as const;

const sourceRoot = fileURLToPath(new URL("../../", import.meta.url));

/** True in an executable made by `deno compile`. */
export function isCompiled(): boolean {
  return Deno.build.standalone === true;
}

/** True when assets are used the way the executable uses them (compiled, or forced for tests). */
export function isEmbedded(): boolean {
  return isCompiled() || Deno.env.get("CONTINUUM_FORCE_EMBEDDED") === "1";
}

/** The directory the asset paths are relative to (ends with "/"). */
export function assetRoot(): string {
  // the override is a test switch for `deno run`; an executable always uses what it carries
  const forced = !isCompiled() && isEmbedded() ? Deno.env.get("CONTINUUM_ASSET_ROOT") : undefined;
  if (forced) return forced.endsWith("/") ? forced : `${forced}/`;
  return sourceRoot;
}

export function assetPath(relative: string): string {
  return assetRoot() + relative;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** The asset paths `deno compile --include` must get: the two required ones and the UI once built. */
export function assetsToEmbed(root = sourceRoot): string[] {
  const out: string[] = [assetPaths.nativeLibrary, assetPaths.migrations];
  if (exists(root + assetPaths.ui)) out.push(assetPaths.ui);
  return out;
}

function copyTree(from: string, to: string): void {
  const info = Deno.statSync(from);
  if (info.isDirectory) {
    Deno.mkdirSync(to, { recursive: true });
    for (const e of Deno.readDirSync(from)) copyTree(`${from}/${e.name}`, `${to}/${e.name}`);
  } else {
    Deno.copyFileSync(from, to);
  }
}

/**
 * Copies every asset from the source tree to `destRoot` with the layout `deno compile`
 * gives them (tests use it to stand in for the executable's embedded files).
 */
export function copyAssets(destRoot: string): string[] {
  const copied = assetsToEmbed();
  for (const rel of copied) {
    const to = `${destRoot}/${rel}`;
    Deno.mkdirSync(to.slice(0, to.lastIndexOf("/")), { recursive: true });
    copyTree(sourceRoot + rel, to);
  }
  return copied;
}

// ---------------------------------------------------------------- runtime directory

/** A directory that exists but may not hold code we load (wrong owner, writable by others). */
export class UnsafeDirectoryError extends Error {
  override name = "UnsafeDirectoryError";
}

/**
 * Where extracted assets go, first that applies: CONTINUUM_RUNTIME_DIR; systemd's
 * RuntimeDirectory= ($RUNTIME_DIRECTORY, a tmpfs directory of the service's own user,
 * removed when it stops, and writable under ProtectSystem=strict); $XDG_RUNTIME_DIR/
 * continuum (a login session's private tmpfs); /run/continuum for root; else
 * $TMPDIR/continuum-UID. Only the first is tried: a directory that is refused is an
 * error to fix, not a reason to look elsewhere.
 */
export function runtimeDirPath(): string {
  const env = (k: string) => Deno.env.get(k) || undefined;
  const explicit = env("CONTINUUM_RUNTIME_DIR");
  if (explicit) return explicit;
  const systemd = env("RUNTIME_DIRECTORY")?.split(":")[0];
  if (systemd) return systemd;
  const xdg = env("XDG_RUNTIME_DIR");
  if (xdg) return `${xdg}/continuum`;
  const uid = Deno.uid() ?? 0;
  if (uid === 0) return "/run/continuum";
  return `${env("TMPDIR") ?? "/tmp"}/continuum-${uid}`;
}

/** Refuses a path that is not a real directory of ours, closed to writes by others. */
export function checkPrivateDir(dir: string): void {
  const info = Deno.lstatSync(dir);
  if (info.isSymlink || !info.isDirectory) {
    throw new UnsafeDirectoryError(`runtime directory ${dir} is not a directory (or is a symbolic link)`);
  }
  const uid = Deno.uid();
  if (uid !== null && info.uid !== null && info.uid !== uid) {
    throw new UnsafeDirectoryError(
      `runtime directory ${dir} belongs to uid ${info.uid}, not to this process (uid ${uid}); ` +
        "remove it or set CONTINUUM_RUNTIME_DIR to a directory of this user",
    );
  }
  if (info.mode !== null && (info.mode & 0o022) !== 0) {
    const mode = (info.mode & 0o777).toString(8).padStart(4, "0");
    throw new UnsafeDirectoryError(
      `runtime directory ${dir} has mode ${mode}: other users could replace the code loaded from it; ` +
        `run: chmod 700 ${dir}`,
    );
  }
}

/** Creates the runtime directory (mode 0700) when missing and checks it. */
export function prepareRuntimeDir(dir = runtimeDirPath()): string {
  try {
    Deno.lstatSync(dir);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.chmodSync(dir, 0o700); // whatever the umask
  }
  checkPrivateDir(dir);
  return dir;
}

function sha256(...parts: Uint8Array[]): string {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest("hex");
}

/** True when `path` is a regular file of ours, not writable by others, with this SHA-256. */
function holds(path: string, digest: string): boolean {
  try {
    const info = Deno.lstatSync(path);
    const uid = Deno.uid();
    if (!info.isFile || info.isSymlink || (uid !== null && info.uid !== uid)) return false;
    if (info.mode !== null && (info.mode & 0o022) !== 0) return false;
    return sha256(Deno.readFileSync(path)) === digest;
  } catch {
    return false;
  }
}

/** Writes a file under a temporary name (O_EXCL) and renames it into place. */
function writeInto(path: string, bytes: Uint8Array, mode: number): void {
  const tmp = `${path}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    Deno.writeFileSync(tmp, bytes, { createNew: true, mode: 0o600 });
    Deno.chmodSync(tmp, mode);
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* not created */ }
    throw e;
  }
}

// ------------------------------------------------------------------ native library

/** Where the native library comes from: the build output, or the embedded copy. */
export function nativeLibrarySource(): string {
  return assetPath(assetPaths.nativeLibrary);
}

function readEmbeddedLibrary(): Uint8Array {
  const path = nativeLibrarySource();
  try {
    return Deno.readFileSync(path);
  } catch (e) {
    throw new Error(
      `the embedded native library ${path} cannot be read: ${(e as Error).message}` +
        (isCompiled() ? " (this executable was built without it; rebuild it with: deno task compile)" : ""),
    );
  }
}

/**
 * Writes the embedded native library to the runtime directory, once: the file is
 * named after its content, and one that is already there is checked, not rewritten.
 * Returns its path.
 */
export function extractNativeLibrary(bytes = readEmbeddedLibrary(), dir?: string): string {
  const digest = sha256(bytes);
  const root = prepareRuntimeDir(dir);
  const path = `${root}/libcontinuum-${digest.slice(0, 16)}.so`;
  if (!holds(path, digest)) writeInto(path, bytes, 0o500);
  return path;
}

const libcSymbols = {
  memfd_create: { parameters: ["buffer", "u32"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

/** Opens the library from an anonymous memory file (memfd_create), nothing written to disk. */
function openFromMemory<S extends Deno.ForeignLibraryInterface>(
  bytes: Uint8Array,
  symbols: S,
): Deno.DynamicLibrary<S> {
  const libc = Deno.dlopen("libc.so.6", libcSymbols);
  try {
    const MFD_CLOEXEC = 1;
    const fd = libc.symbols.memfd_create(new TextEncoder().encode("continuum-native\0"), MFD_CLOEXEC);
    if (fd < 0) throw new Error("memfd_create failed");
    try {
      let off = 0;
      while (off < bytes.length) {
        const n = Number(libc.symbols.write(fd, bytes.subarray(off), BigInt(bytes.length - off)));
        if (n <= 0) throw new Error("write to the memory file failed");
        off += n;
      }
      return Deno.dlopen(`/proc/self/fd/${fd}`, symbols);
    } finally {
      libc.symbols.close(fd); // the mapping keeps the memory file alive
    }
  } finally {
    libc.close();
  }
}

export type NativeOrigin = "override" | "build" | "runtime-dir" | "memory";
let loaded: { path: string; origin: NativeOrigin } | undefined;

/** Where the native library of this process was loaded from, once it is. */
export function nativeLibraryLoaded(): { path: string; origin: NativeOrigin } | undefined {
  return loaded;
}

/**
 * Opens the native library: `override` (CONTINUUM_NATIVE_LIB) when given; under
 * `deno run` the build output; in the executable (or forced) the embedded copy, from
 * the runtime directory or, when that cannot be written or mapped, from memory.
 */
export function openNativeLibrary<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
  override?: string,
): Deno.DynamicLibrary<S> {
  if (override || !isEmbedded()) {
    const path = override ?? nativeLibrarySource();
    try {
      const lib = Deno.dlopen(path, symbols);
      loaded = { path, origin: override ? "override" : "build" };
      return lib;
    } catch (e) {
      throw new Error(
        `cannot load the native library ${path}: ${(e as Error).message}` +
          (override ? " (set by CONTINUUM_NATIVE_LIB)" : " (build it with: npx deno task build:native)"),
      );
    }
  }
  const bytes = readEmbeddedLibrary();
  let first: Error;
  try {
    const path = extractNativeLibrary(bytes);
    const lib = Deno.dlopen(path, symbols);
    loaded = { path, origin: "runtime-dir" };
    log.debug("native library loaded", loaded);
    return lib;
  } catch (e) {
    if (e instanceof UnsafeDirectoryError) throw e;
    first = e as Error;
  }
  try {
    const lib = openFromMemory(bytes, symbols);
    loaded = { path: "memfd:continuum-native", origin: "memory" };
    log.warn("native library loaded from memory: the runtime directory is not usable", {
      dir: runtimeDirPath(),
      error: first.message,
    });
    return lib;
  } catch (e) {
    throw new Error(
      `cannot load the embedded native library: runtime directory ${runtimeDirPath()}: ${first.message}; ` +
        `from memory: ${(e as Error).message} (set CONTINUUM_RUNTIME_DIR to a private directory on a ` +
        "file system that allows executable mappings)",
    );
  }
}

// ----------------------------------------------------------------------- migrations

function listTree(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const rel = prefix + e.name;
    if (e.isDirectory) out.push(...listTree(`${dir}/${e.name}`, `${rel}/`));
    else out.push(rel);
  }
  return out.sort();
}

/**
 * Copies a directory tree of embedded files to DIR/NAME-HASH in the runtime directory
 * (once: the name is derived from the content) and returns that path.
 */
export function extractTree(src: string, name: string, dir?: string): string {
  const files = listTree(src);
  const contents = files.map((f) => Deno.readFileSync(`${src}/${f}`));
  const enc = new TextEncoder();
  const digest = sha256(
    ...files.flatMap((f, i) => [enc.encode(`${f}\0${contents[i].length}\0`), contents[i]]),
  );
  const root = prepareRuntimeDir(dir);
  const dest = `${root}/${name}-${digest.slice(0, 16)}`;
  if (files.every((f, i) => holds(`${dest}/${f}`, sha256(contents[i])))) return dest;
  const tmp = `${dest}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  try {
    Deno.mkdirSync(tmp, { mode: 0o700 });
    files.forEach((f, i) => {
      const path = `${tmp}/${f}`;
      Deno.mkdirSync(path.slice(0, path.lastIndexOf("/")), { recursive: true, mode: 0o700 });
      Deno.writeFileSync(path, contents[i], { createNew: true, mode: 0o400 });
    });
    const complete = () => files.every((f, i) => holds(`${dest}/${f}`, sha256(contents[i])));
    if (complete()) {
      // another process finished the same copy meanwhile
      Deno.removeSync(tmp, { recursive: true });
      return dest;
    }
    // a damaged copy under the final name is replaced whole
    try {
      Deno.removeSync(dest, { recursive: true });
    } catch { /* none */ }
    Deno.renameSync(tmp, dest);
  } catch (e) {
    try {
      Deno.removeSync(tmp, { recursive: true });
    } catch { /* not created */ }
    // another process may have finished the same copy first
    if (files.every((f, i) => holds(`${dest}/${f}`, sha256(contents[i])))) return dest;
    throw e;
  }
  return dest;
}

/**
 * The migrations folder drizzle reads (with node:fs). In the executable it is the
 * embedded copy; should node:fs not see the embedded file system, a copy extracted
 * to the runtime directory. Never throws: a problem surfaces when migrations run.
 */
export function migrationsDir(): string {
  const dir = assetPath(assetPaths.migrations);
  if (!isEmbedded()) return dir;
  try {
    readFileSync(`${dir}/meta/_journal.json`);
    return dir;
  } catch { /* not visible to node:fs: extract */ }
  try {
    return extractTree(dir, "migrations");
  } catch (e) {
    log.warn("cannot extract the embedded migrations", { error: (e as Error).message });
    return dir;
  }
}

// ------------------------------------------------------------------------------- UI

/** The UI bundle directory, when this build has one. */
export function uiDir(): string | undefined {
  const dir = assetPath(assetPaths.ui);
  try {
    return Deno.statSync(dir).isDirectory ? dir : undefined;
  } catch {
    return undefined;
  }
}
