// The executable's embedded-asset path, forced under `deno run`: the assets are copied
// to a "bundle" directory laid out as `deno compile --include` lays them out, and
// CONTINUUM_FORCE_EMBEDDED=1 + CONTINUUM_ASSET_ROOT make every process load from it the
// way the executable loads from itself: the native library written once to a private
// runtime directory and opened from there (or from memory), the migrations and the UI
// read from the bundle.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { readMigrationFiles } from "drizzle-orm/migrator";
import { startPair, tempDir, waitEqual } from "./lib/cluster.ts";
import { NbdClient } from "./lib/nbd-client.ts";
import { assetPaths, copyAssets, extractTree } from "../src/assets/assets.ts";

const t = suite("deploy: embedded assets under deno run");
const root = new URL("../", import.meta.url).pathname;
const ABC_XXH3 = "06b05ab6733a618578af5f94892f3950";
const newestMigration = Math.max(
  ...readMigrationFiles({ migrationsFolder: `${root}src/db/migrations` }).map((m) => m.folderMillis),
);

interface Probe {
  hash: string;
  loaded: { path: string; origin: string };
  migrationsFolder: string;
  ui: string | null;
  uiBytes: number | null;
  embedded: boolean;
  version: number | null;
}

const probeCode = `
import { loadNative, xxh3 } from "${root}src/native/mod.ts";
import { isEmbedded, nativeLibraryLoaded, uiDir } from "${root}src/assets/assets.ts";
import { migrationsFolder, openDatabase } from "${root}src/db/db.ts";
import { readBundle } from "${root}src/web/ui-static.ts";
loadNative();
const hash = [...xxh3(new TextEncoder().encode("abc"))].map((b) => b.toString(16).padStart(2, "0")).join("");
let version = null;
const db = Deno.env.get("PROBE_DB");
if (db) {
  const d = await openDatabase(db);
  version = d.version;
  d.close();
}
console.log(JSON.stringify({
  hash, loaded: nativeLibraryLoaded(), migrationsFolder, ui: uiDir() ?? null, embedded: isEmbedded(), version,
  uiBytes: (await readBundle())?.length ?? null,
}));
`;

/** Runs the probe in a fresh process with only the given Continuum variables set. */
async function probe(env: Record<string, string>): Promise<{ code: number; out?: Probe; stderr: string }> {
  const pass: Record<string, string> = { NO_COLOR: "1" };
  for (const k of ["PATH", "HOME", "DENO_DIR", "XDG_CACHE_HOME"]) {
    const v = Deno.env.get(k);
    if (v) pass[k] = v;
  }
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", probeCode],
    cwd: root,
    clearEnv: true,
    env: { ...pass, ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout).trim();
  const stderr = new TextDecoder().decode(out.stderr);
  const line = stdout.split("\n").pop() ?? "";
  return { code: out.code, out: line.startsWith("{") ? JSON.parse(line) : undefined, stderr };
}

async function bundle(name: string): Promise<{ dir: string; bundle: string; rt: string }> {
  const dir = await tempDir(name);
  const b = `${dir}/bundle`;
  const copied = copyAssets(b);
  // the test setup builds the UI bundle, so all three are embedded as compile.ts embeds them
  assert.equal(copied.sort(), [assetPaths.ui, assetPaths.migrations, assetPaths.nativeLibrary].sort());
  return { dir, bundle: b, rt: `${dir}/run/continuum` };
}

function forced(b: { bundle: string }, rt: string, extra: Record<string, string> = {}) {
  return {
    CONTINUUM_FORCE_EMBEDDED: "1",
    CONTINUUM_ASSET_ROOT: b.bundle,
    CONTINUUM_RUNTIME_DIR: rt,
    ...extra,
  };
}

const mode = (path: string) => (Deno.statSync(path).mode! & 0o777).toString(8);

t(
  "forced embedded path: library written once to a private runtime dir, migrations and UI from the bundle",
  async () => {
    const b = await bundle("assets-forced");
    const r = await probe(forced(b, b.rt, { PROBE_DB: `${b.dir}/fresh.db` }));
    assert.is(r.code, 0, r.stderr);
    const p = r.out!;
    assert.ok(p.embedded);
    assert.is(p.hash, ABC_XXH3, "xxh3-128 of 'abc' through the extracted library");
    assert.is(p.loaded.origin, "runtime-dir");
    assert.match(p.loaded.path, new RegExp(`^${b.rt}/libcontinuum-[0-9a-f]{16}\\.so$`));
    assert.is(mode(b.rt), "700", "runtime dir is private");
    assert.is(mode(p.loaded.path), "500", "library is read/execute for its owner only");
    assert.is(p.migrationsFolder, `${b.bundle}/${assetPaths.migrations}`, "migrations read from the bundle");
    assert.is(p.version, newestMigration, "a fresh database got every migration from the bundle");
    assert.is(p.ui, `${b.bundle}/${assetPaths.ui}`, "the UI bundle is found");
    assert.is(
      p.uiBytes,
      Deno.statSync(`${root}${assetPaths.ui}/app.js`).size,
      "and the web server serves it",
    );
    assert.equal([...Deno.readDirSync(b.rt)].map((e) => e.name), [p.loaded.path.slice(b.rt.length + 1)]);

    // a second start reuses the file: written once
    const before = Deno.statSync(p.loaded.path);
    const again = await probe(forced(b, b.rt));
    assert.is(again.code, 0, again.stderr);
    assert.is(again.out!.loaded.path, p.loaded.path);
    const after = Deno.statSync(p.loaded.path);
    assert.is(after.ino, before.ino, "same file");
    assert.is(after.mtime?.getTime(), before.mtime?.getTime(), "not rewritten");
    await Deno.remove(b.dir, { recursive: true });
  },
);

t("a damaged copy in the runtime dir is replaced, not loaded", async () => {
  const b = await bundle("assets-damaged");
  const first = await probe(forced(b, b.rt));
  assert.is(first.code, 0, first.stderr);
  const lib = first.out!.loaded.path;
  Deno.chmodSync(lib, 0o600);
  Deno.writeFileSync(lib, new TextEncoder().encode("not a library"));
  const r = await probe(forced(b, b.rt));
  assert.is(r.code, 0, r.stderr);
  assert.is(r.out!.hash, ABC_XXH3);
  assert.is(r.out!.loaded.path, lib);
  assert.is(mode(lib), "500");
  await Deno.remove(b.dir, { recursive: true });
});

t("a runtime dir others can write to, or that is not ours, is refused with a clear message", async () => {
  const b = await bundle("assets-unsafe");
  await Deno.mkdir(b.rt, { recursive: true });
  Deno.chmodSync(b.rt, 0o777);
  const r = await probe(forced(b, b.rt));
  assert.is.not(r.code, 0);
  assert.match(r.stderr, `runtime directory ${b.rt} has mode 0777`);
  assert.match(r.stderr, "chmod 700");
  assert.equal([...Deno.readDirSync(b.rt)], [], "nothing written to it");
  if (Deno.uid() === 0) {
    Deno.chmodSync(b.rt, 0o700);
    Deno.chownSync(b.rt, 65534, 65534);
    const other = await probe(forced(b, b.rt));
    assert.is.not(other.code, 0);
    assert.match(other.stderr, `runtime directory ${b.rt} belongs to uid 65534`);
  }
  await Deno.remove(b.dir, { recursive: true });
});

t("no usable runtime dir: the library is loaded from memory", async () => {
  const b = await bundle("assets-memory");
  const r = await probe(forced(b, `/proc/continuum-test-${Deno.pid}/run`));
  assert.is(r.code, 0, r.stderr);
  assert.is(r.out!.loaded.origin, "memory");
  assert.is(r.out!.hash, ABC_XXH3);
  assert.match(r.stderr, "native library loaded from memory");
  await Deno.remove(b.dir, { recursive: true });
});

t("a bundle without the library fails with a clear message", async () => {
  const b = await bundle("assets-missing");
  await Deno.remove(`${b.bundle}/${assetPaths.nativeLibrary}`);
  const r = await probe(forced(b, b.rt));
  assert.is.not(r.code, 0);
  assert.match(
    r.stderr,
    `the embedded native library ${b.bundle}/${assetPaths.nativeLibrary} cannot be read`,
  );
  await Deno.remove(b.dir, { recursive: true });
});

t("without the switch, deno run uses the build output and the source tree", async () => {
  const dir = await tempDir("assets-plain");
  const r = await probe({ PROBE_DB: `${dir}/plain.db` });
  assert.is(r.code, 0, r.stderr);
  assert.not.ok(r.out!.embedded);
  assert.is(r.out!.loaded.origin, "build");
  assert.is(r.out!.loaded.path, `${root}${assetPaths.nativeLibrary}`);
  assert.is(r.out!.migrationsFolder, `${root}${assetPaths.migrations}`);
  assert.is(r.out!.version, newestMigration);
  // CONTINUUM_NATIVE_LIB still wins, embedded or not
  const o = await probe({
    CONTINUUM_FORCE_EMBEDDED: "1",
    CONTINUUM_NATIVE_LIB: `${root}${assetPaths.nativeLibrary}`,
  });
  assert.is(o.code, 0, o.stderr);
  assert.is(o.out!.loaded.origin, "override");
  await Deno.remove(dir, { recursive: true });
});

t(
  "embedded migrations can be extracted to the runtime dir (fallback when node:fs cannot see them)",
  async () => {
    const b = await bundle("assets-extract");
    const src = `${b.bundle}/${assetPaths.migrations}`;
    const dest = extractTree(src, "migrations", b.rt);
    assert.match(dest, new RegExp(`^${b.rt}/migrations-[0-9a-f]{16}$`));
    assert.equal(
      readMigrationFiles({ migrationsFolder: dest }),
      readMigrationFiles({ migrationsFolder: src }),
      "drizzle reads the same migrations",
    );
    const journal = `${dest}/meta/_journal.json`;
    assert.is(mode(journal), "400");
    const ino = Deno.statSync(journal).ino;
    assert.is(extractTree(src, "migrations", b.rt), dest, "same content, same place");
    assert.is(Deno.statSync(journal).ino, ino, "not rewritten");
    await Deno.remove(b.dir, { recursive: true });
  },
);

t("a gateway and an agent run on the forced embedded path and replicate a write", async () => {
  const b = await bundle("assets-roles");
  // the role processes inherit these (this process loads nothing native itself)
  const vars = forced(b, b.rt);
  for (const [k, v] of Object.entries(vars)) Deno.env.set(k, v);
  try {
    const pair = await startPair("assets-roles-pair", { vol0: 8 * 1024 * 1024 });
    try {
      const c = await NbdClient.connect(pair.agent.socket);
      await c.go("vol0");
      await c.write(4096, crypto.getRandomValues(new Uint8Array(64 * 1024)));
      await c.flush();
      await c.disconnect();
      c.close();
      await waitEqual(pair.paths.vol0, pair.gw.mirrorPath("a1", "vol0"), 30_000);
      const libs = [...Deno.readDirSync(b.rt)].filter((e) => /^libcontinuum-[0-9a-f]{16}\.so$/.test(e.name));
      assert.is(libs.length, 1, "both roles share the one extracted library");
    } finally {
      await pair.stop();
    }
    await Deno.remove(pair.dir, { recursive: true });
  } finally {
    for (const k of Object.keys(vars)) Deno.env.delete(k);
  }
  await Deno.remove(b.dir, { recursive: true });
});

t.run();
