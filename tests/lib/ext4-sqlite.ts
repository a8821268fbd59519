// The ransomware-style workload of the recovery-point tests: ext4 on a protected volume mounted
// from its NBD export without root (nbdfuse, fuse2fs), a SQLite database with a sentinel row and
// orders in a good phase, a damage phase that overwrites the files in place, and the operator's
// check that opens the database on a copy and reads the sentinel row.
import * as assert from "uvu/assert";
import { run, waitFor } from "./cluster.ts";

/** What the tests need on the machine. */
export const EXT4_SQLITE_TOOLS = [
  "qemu-img",
  "nbdfuse",
  "fuse2fs",
  "mkfs.ext4",
  "debugfs",
  "sqlite3",
  "fusermount3",
];

/** Mounts ext4 on the export (nbdfuse, fuse2fs), runs fn in it, unmounts (which flushes). */
export async function onFilesystem(
  uri: string,
  size: number,
  dir: string,
  fn: (fs: string) => Promise<void>,
  mkfs = false,
): Promise<void> {
  const nbdDir = `${dir}/nbd`, fsDir = `${dir}/fs`;
  await Deno.mkdir(nbdDir, { recursive: true });
  await Deno.mkdir(fsDir, { recursive: true });
  const nbdfuse = new Deno.Command("nbdfuse", { args: [nbdDir, uri], stdout: "null", stderr: "null" })
    .spawn();
  let mounted = false;
  try {
    await waitFor(async () => (await Deno.stat(`${nbdDir}/nbd`)).size === size, 15_000, "nbdfuse");
    if (mkfs) await run("mkfs.ext4", ["-F", "-q", `${nbdDir}/nbd`]);
    const fuse2fs = new Deno.Command("fuse2fs", {
      args: ["-f", `${nbdDir}/nbd`, fsDir, "-o", "fakeroot"],
      stdout: "null",
      stderr: "null",
    }).spawn();
    mounted = true;
    await waitFor(
      async () => (await run("mountpoint", ["-q", fsDir], { allowFail: true })).code === 0,
      15_000,
      "fuse2fs mount",
    );
    await fn(fsDir);
    await run("fusermount3", ["-u", fsDir]);
    mounted = false;
    assert.ok((await fuse2fs.status).success, "fuse2fs exited cleanly");
  } finally {
    if (mounted) await run("fusermount3", ["-u", fsDir], { allowFail: true });
    await run("fusermount3", ["-u", nbdDir], { allowFail: true });
    await nbdfuse.status;
  }
}

/** The good phase: a new ext4 with the database (its sentinel row) and notes, then 10 orders in two mounts. */
export async function goodPhase(uri: string, size: number, dir: string): Promise<void> {
  await onFilesystem(uri, size, dir, async (fs) => {
    await run("sqlite3", [
      `${fs}/app.db`,
      "CREATE TABLE sentinel(k TEXT PRIMARY KEY, v TEXT); INSERT INTO sentinel VALUES ('canary', 'alive'); " +
      "CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT);",
    ]);
    await Deno.writeTextFile(`${fs}/notes.txt`, "the data that must survive\n".repeat(2000));
  }, true);
  for (let round = 0; round < 2; round++) {
    await onFilesystem(uri, size, dir, async (fs) => {
      for (let i = 0; i < 5; i++) {
        await run("sqlite3", [
          `${fs}/app.db`,
          `INSERT INTO orders(item) VALUES ('round ${round} order ${i}');`,
        ]);
      }
    });
  }
}

/** The damage: the database and the notes overwritten in place with random bytes, as ransomware does. */
export async function damagePhase(uri: string, size: number, dir: string): Promise<void> {
  await onFilesystem(uri, size, dir, async (fs) => {
    for (const name of ["app.db", "notes.txt"]) {
      const n = (await Deno.stat(`${fs}/${name}`)).size;
      const f = await Deno.open(`${fs}/${name}`, { write: true });
      await f.write(crypto.getRandomValues(new Uint8Array(n)));
      await f.syncData();
      f.close();
    }
  });
}

/** The operator's check: the database on the copy ({uri}) opens and holds the sentinel row. */
export const SENTINEL_CHECK = [
  "sh",
  "-c",
  "set -e; d=$(mktemp -d); trap 'rm -rf \"$d\"' EXIT; " +
  'qemu-img convert -f raw -O raw "$1" "$d/img"; ' +
  'debugfs -R "dump /app.db $d/app.db" "$d/img" 2>/dev/null; ' +
  'test "$(sqlite3 "$d/app.db" "SELECT v FROM sentinel WHERE k = \'canary\'")" = alive',
  "sh",
  "{uri}",
];

/**
 * The orders and the sentinel of the database in an image (a file, or an NBD URI copied first),
 * as sqlite3 prints them: "10\nalive" after the good phase.
 */
export async function readDatabase(image: string, dir: string): Promise<string> {
  const d = await Deno.makeTempDir({ dir });
  try {
    let file = image;
    if (image.startsWith("nbd")) {
      file = `${d}/img`;
      await run("qemu-img", ["convert", "-f", "raw", "-O", "raw", image, file]);
    }
    await run("debugfs", ["-R", `dump /app.db ${d}/app.db`, file]);
    return (await run("sqlite3", [`${d}/app.db`, "SELECT count(*) FROM orders; SELECT v FROM sentinel;"]))
      .stdout.trim();
  } finally {
    await Deno.remove(d, { recursive: true });
  }
}
