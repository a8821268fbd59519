// A real filesystem and a database on the protected volume: the gateway's mirror
// is a consistent ext4 image holding the same files.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import { run, startPair, waitEqual, waitFor, waitMirrorCaughtUp } from "./lib/cluster.ts";

const t = suite("capture: ext4 + SQLite through nbdfuse and fuse2fs");
const MiB = 1024 * 1024;

t("files and a SQLite database written on ext4 reach the mirror intact", async () => {
  if (
    !need("filesystem on the export", {
      fuse: true,
      tools: ["nbdfuse", "fuse2fs", "mkfs.ext4", "e2fsck", "debugfs", "sqlite3", "fusermount3"],
    })
  ) return;
  const pair = await startPair("fs", { vol0: 128 * MiB });
  const nbdDir = `${pair.dir}/nbd`;
  const fsDir = `${pair.dir}/fs`;
  await Deno.mkdir(nbdDir);
  await Deno.mkdir(fsDir);
  const nbdfuse = new Deno.Command("nbdfuse", {
    args: [nbdDir, pair.agent.uri("vol0")],
    stdout: "null",
    stderr: "piped",
  })
    .spawn();
  let fsMounted = false;
  try {
    await waitFor(
      async () => (await Deno.stat(`${nbdDir}/nbd`)).size === 128 * MiB,
      15_000,
      "nbdfuse to expose the export",
    );
    await run("mkfs.ext4", ["-F", "-q", `${nbdDir}/nbd`]);
    // foreground, so its exit (after the unmount flushed everything) can be awaited
    const fuse2fs = new Deno.Command("fuse2fs", {
      args: ["-f", `${nbdDir}/nbd`, fsDir, "-o", "fakeroot"],
      stdout: "null",
      stderr: "null",
    })
      .spawn();
    fsMounted = true;
    await waitFor(
      async () => (await run("mountpoint", ["-q", fsDir], { allowFail: true })).code === 0,
      15_000,
      "fuse2fs mount",
    );
    const text = "the data that must survive a disaster\n".repeat(1000);
    await Deno.writeTextFile(`${fsDir}/notes.txt`, text);
    const blob = crypto.getRandomValues(new Uint8Array(60000));
    await Deno.mkdir(`${fsDir}/dir`);
    await Deno.writeFile(`${fsDir}/dir/blob.bin`, blob);
    await run("sqlite3", [
      `${fsDir}/app.db`,
      "PRAGMA journal_mode=DELETE; CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT); " +
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 5000) " +
      "INSERT INTO orders(item) SELECT 'item-' || i FROM n;",
    ]);
    await run("fusermount3", ["-u", fsDir]);
    fsMounted = false;
    assert.ok((await fuse2fs.status).success, "fuse2fs exited cleanly");
    await run("fusermount3", ["-u", nbdDir]);
    await nbdfuse.status;

    await waitMirrorCaughtUp(pair.gw, "a1", "vol0");
    const mirror = pair.gw.mirrorPath("a1", "vol0");
    await waitEqual(mirror, pair.paths.vol0, 30_000);
    const fsck = await run("e2fsck", ["-fn", mirror], { allowFail: true });
    assert.is(fsck.code, 0, `e2fsck found problems in the mirror: ${fsck.stdout}`);
    const cat = await run("debugfs", ["-R", "cat /notes.txt", mirror]);
    assert.is(cat.stdout, text);
    const out = `${pair.dir}/blob.out`;
    await run("debugfs", ["-R", `dump /dir/blob.bin ${out}`, mirror]);
    assert.equal(await Deno.readFile(out), blob);
    const dbOut = `${pair.dir}/app.db.out`;
    await run("debugfs", ["-R", `dump /app.db ${dbOut}`, mirror]);
    const q = await run("sqlite3", [
      dbOut,
      "PRAGMA integrity_check; SELECT count(*), max(item) FROM orders;",
    ]);
    assert.is(q.stdout.trim(), "ok\n5000|item-999");
  } finally {
    if (fsMounted) await run("fusermount3", ["-u", fsDir], { allowFail: true });
    await run("fusermount3", ["-u", nbdDir], { allowFail: true });
    try {
      nbdfuse.kill("SIGKILL");
    } catch { /* exited */ }
    await nbdfuse.status;
    await nbdfuse.stderr.cancel();
    await pair.stop();
  }
});

t.run();
