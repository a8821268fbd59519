// Running under a service manager: SIGTERM during a write workload stops a role
// cleanly (exit 0, nothing acknowledged lost, a restart resumes); readiness and
// shutdown are reported over NOTIFY_SOCKET; every misconfiguration found at start
// ends the process with a clear message and a non-zero exit; the gateway's database
// is migrated from the previous schema version and refused when it is newer.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { createClient } from "@libsql/client";
import { readMigrationFiles } from "drizzle-orm/migrator";
import {
  Agent,
  freePort,
  Gateway,
  keygen,
  RoleProcess,
  startPair,
  tempDir,
  testRing,
  waitEqual,
  waitFor,
  writeSecret,
} from "./lib/cluster.ts";
import { missingWrites, startWorkload } from "./lib/workload.ts";
import { migrationsFolder, openDatabase } from "../src/db/db.ts";
import { notifyAddress } from "../src/cli/notify.ts";

const t = suite("deploy: lifecycle under a service manager");
const MiB = 1024 * 1024;
const root = new URL("../", import.meta.url).pathname;

/** Starts a role and waits for it to exit (a failed start); kills it after timeoutMs. */
async function startExpectingExit(name: string, dir: string, args: string[], timeoutMs = 30_000) {
  const p = new RoleProcess(name, args, `${dir}/${name}.log`);
  const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
  const st = await p.exited;
  clearTimeout(timer);
  const stderrLine = p.log.split("\n").find((l) => l.startsWith("continuum: ")) ?? "";
  return { code: st.code, signal: st.signal, log: p.log, message: stderrLine };
}

// ------------------------------------------------------------- sd_notify receiver

const libc = Deno.dlopen("libc.so.6", {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
});

/** A NOTIFY_SOCKET stand-in: a bound Unix datagram socket, polled without blocking. */
class NotifyReceiver {
  readonly messages: string[] = [];
  private fd: number;
  private timer: ReturnType<typeof setInterval>;

  constructor(readonly address: string) {
    const a = notifyAddress(address);
    if (typeof a === "string") throw new Error(a);
    this.fd = libc.symbols.socket(1, 2, 0);
    if (this.fd < 0 || libc.symbols.bind(this.fd, a.addr, a.len) !== 0) {
      throw new Error(`cannot bind ${address}`);
    }
    const buf = new Uint8Array(4096);
    this.timer = setInterval(() => {
      for (;;) {
        const n = Number(libc.symbols.recv(this.fd, buf, BigInt(buf.length), 0x40 /* MSG_DONTWAIT */));
        if (n <= 0) break;
        this.messages.push(new TextDecoder().decode(buf.subarray(0, n)));
      }
    }, 20);
  }

  close(): void {
    clearInterval(this.timer);
    libc.symbols.close(this.fd);
  }
}

/** Runs fn with an environment variable set: the role processes it starts inherit it. */
async function withEnv<T>(name: string, value: string, fn: () => Promise<T>): Promise<T> {
  Deno.env.set(name, value);
  try {
    return await fn();
  } finally {
    Deno.env.delete(name);
  }
}

// ------------------------------------------------------------------------ SIGTERM

t(
  "SIGTERM to the agent during a write workload: exit 0, no acknowledged write lost, restart resumes",
  async () => {
    const pair = await startPair("lifecycle-sigterm-agent", { vol0: 64 * MiB });
    try {
      const w = startWorkload({ socket: pair.agent.socket, exportName: "vol0", blocks: 16384 });
      await waitFor(() => w.written() > 3000, 30_000, "the workload to get going");
      const st = await pair.agent.proc.stop(); // SIGTERM, SIGKILL only after 20 s
      const r = await w.done;
      assert.is(st.signal, null, "not killed");
      assert.is(st.code, 0, "exit code 0 after SIGTERM");
      assert.match(pair.agent.proc.log, /"msg":"stopping"/);
      assert.ok(r.acked.size > 1000, `enough acknowledged writes to matter (${r.acked.size})`);
      assert.equal(await missingWrites(pair.paths.vol0, r.acked), [], "every acknowledged write on the disk");
      await pair.agent.start();
      await waitEqual(pair.paths.vol0, pair.gw.mirrorPath("a1", "vol0"), 60_000);
      assert.equal(await missingWrites(pair.gw.mirrorPath("a1", "vol0"), r.acked), [], "and in the mirror");
    } finally {
      await pair.stop();
    }
  },
);

t(
  "SIGTERM to the gateway during a write workload: exit 0, journal closed, the agent resumes after restart",
  async () => {
    const pair = await startPair("lifecycle-sigterm-gw", { vol0: 64 * MiB });
    try {
      const w = startWorkload({
        socket: pair.agent.socket,
        exportName: "vol0",
        blocks: 16384,
        maxWrites: 8000,
      });
      await waitFor(() => w.written() > 3000, 30_000, "the workload to get going");
      const st = await pair.gw.proc.stop();
      assert.is(st.signal, null, "not killed");
      assert.is(st.code, 0, "exit code 0 after SIGTERM");
      await pair.gw.start();
      const r = await w.done;
      assert.is(r.error?.message, undefined, "block mode: writes waited for the gateway");
      await waitEqual(pair.paths.vol0, pair.gw.mirrorPath("a1", "vol0"), 60_000);
      assert.equal(await missingWrites(pair.paths.vol0, r.acked), []);
      assert.equal(await missingWrites(pair.gw.mirrorPath("a1", "vol0"), r.acked), []);
    } finally {
      await pair.stop();
    }
  },
);

// ---------------------------------------------------------------------- readiness

t("readiness over NOTIFY_SOCKET (path): READY=1 once serving, STOPPING=1 on SIGTERM", async () => {
  const dir = await tempDir("lifecycle-notify");
  const rx = new NotifyReceiver(`${dir}/notify.sock`);
  const secret = `${dir}/agent.secret`;
  await writeSecret(secret);
  try {
    const gw = await withEnv(
      "NOTIFY_SOCKET",
      rx.address,
      () => new Gateway({ dir, agents: { a1: secret } }).start(),
    );
    await waitFor(() => rx.messages.some((m) => m.includes("READY=1")), 10_000, "READY=1");
    const ready = rx.messages.find((m) => m.includes("READY=1"))!;
    assert.match(ready, /^READY=1\nSTATUS=local-gateway serving\n$/);
    assert.ok(gw.proc.records().some((r) => r.msg === "local gateway ready"), "ready was logged before");
    const st = await gw.proc.stop();
    assert.is(st.code, 0);
    await waitFor(() => rx.messages.some((m) => m.startsWith("STOPPING=1")), 5_000, "STOPPING=1");
  } finally {
    rx.close();
  }
});

t("readiness over NOTIFY_SOCKET (abstract @name) from an agent", async () => {
  const dir = await tempDir("lifecycle-notify-abstract");
  const rx = new NotifyReceiver(`@continuum-test-${Deno.pid}-${Date.now()}`);
  const secret = `${dir}/agent.secret`;
  await writeSecret(secret);
  const gw = await new Gateway({ dir, agents: { a1: secret } }).start();
  try {
    const vol = `${dir}/vol0.img`;
    await Deno.writeFile(vol, new Uint8Array(4 * MiB));
    const agent = await withEnv(
      "NOTIFY_SOCKET",
      rx.address,
      () =>
        new Agent({ dir, id: "a1", secretFile: secret, gatewaySocket: gw.socket, volumes: { vol0: vol } })
          .start(),
    );
    await waitFor(
      () => rx.messages.some((m) => m.startsWith("READY=1\nSTATUS=agent serving")),
      10_000,
      "READY=1",
    );
    assert.is((await agent.proc.stop()).code, 0);
  } finally {
    rx.close();
    await gw.proc.stop();
  }
});

// ---------------------------------------------------------------- misconfigurations

t("misconfiguration: an agent volume that does not exist", async () => {
  const dir = await tempDir("lifecycle-missing-volume");
  await writeSecret(`${dir}/s`);
  const r = await startExpectingExit("agent", dir, [
    "--role",
    "agent",
    "--data-dir",
    `${dir}/agent`,
    "--gateway",
    `unix:${dir}/none.sock`,
    "--secret-file",
    `${dir}/s`,
    "--nbd-listen",
    "off",
    "--volume",
    `vol0=${dir}/no-such-device`,
  ]);
  assert.is(r.code, 1, r.log);
  assert.is(r.message, `continuum: volume ${dir}/no-such-device does not exist`);
});

t(
  "misconfiguration: a volume whose size changed since the gateway registered it stops the agent",
  async () => {
    const pair = await startPair("lifecycle-resized", { vol0: 8 * MiB });
    try {
      await pair.agent.proc.stop();
      const f = await Deno.open(pair.paths.vol0, { write: true });
      await f.truncate(16 * MiB);
      f.close();
      const r = await startExpectingExit("agent-resized", pair.dir, [
        ...pair.agent.proc.args,
      ], 30_000);
      assert.match(r.log, "a protected volume cannot change size", "the gateway's reason reaches the agent");
      assert.is.not(r.signal, "SIGKILL", "the agent ended by itself instead of serving a refused volume");
      assert.is.not(r.code, 0);
      assert.match(r.message, /vol0.*16777216 bytes.*8388608 bytes/);
    } finally {
      await pair.stop();
    }
  },
);

t("misconfiguration: a remote gateway key that others can read, or that is garbage", async () => {
  const dir = await tempDir("lifecycle-bad-key");
  const keys = `${dir}/keys`;
  await keygen(keys, "dr");
  const args = [
    "--role",
    "remote-gateway",
    "--data-dir",
    `${dir}/remote`,
    "--key-dir",
    keys,
    "--listen",
    `127.0.0.1:${freePort()}`,
    "--agent-listen",
    `unix:${dir}/standby.sock`,
    "--http-listen",
    `127.0.0.1:${freePort()}`,
    ...testRing("256M"),
  ];
  Deno.chmodSync(`${keys}/key.pem`, 0o644);
  const open = await startExpectingExit("remote-open", dir, args);
  assert.is(open.code, 1, open.log);
  assert.is(
    open.message,
    `continuum: refusing to use ${keys}/key.pem: mode 0644 lets other users read or change the private key; ` +
      `run: chmod 600 ${keys}/key.pem`,
  );
  Deno.chmodSync(`${keys}/key.pem`, 0o600);
  await Deno.writeTextFile(`${keys}/key.pem`, "not a key\n");
  const garbage = await startExpectingExit("remote-garbage", dir, args);
  assert.is(garbage.code, 1, garbage.log);
  assert.is(garbage.message, `continuum: ${keys}/key.pem holds no PKCS#8 "PRIVATE KEY" block`);
});

t("misconfiguration: a port already in use", async () => {
  const dir = await tempDir("lifecycle-port");
  const secret = `${dir}/agent.secret`;
  await writeSecret(secret);
  const port = freePort();
  const first = await new Gateway({
    dir: `${dir}`,
    agents: { a1: secret },
    extra: ["--agent-listen", `127.0.0.1:${port}`],
  }).start();
  try {
    const second = await startExpectingExit("gateway-2", dir, [
      "--role",
      "local-gateway",
      "--data-dir",
      `${dir}/gateway-2`,
      "--agent-listen",
      `127.0.0.1:${port}`,
      "--heartbeat-listen",
      `127.0.0.1:${freePort()}`,
      "--http-listen",
      `127.0.0.1:${freePort()}`,
      ...testRing("256M"),
      "--agent-secret",
      `a1=${secret}`,
    ]);
    assert.is(second.code, 1, second.log);
    assert.is(
      second.message,
      `continuum: cannot listen on 127.0.0.1:${port}: address in use (another Continuum running?)`,
    );
    // the HTTP port too
    const third = await startExpectingExit("gateway-3", dir, [
      "--role",
      "local-gateway",
      "--data-dir",
      `${dir}/gateway-3`,
      "--agent-listen",
      `unix:${dir}/gw3.sock`,
      "--heartbeat-listen",
      `127.0.0.1:${freePort()}`,
      "--http-listen",
      `127.0.0.1:${first.httpPort}`,
      ...testRing("256M"),
    ]);
    assert.is(third.code, 1, third.log);
    assert.is(
      third.message,
      `continuum: cannot listen on 127.0.0.1:${first.httpPort} for HTTP: address in use (another Continuum running?)`,
    );
  } finally {
    await first.proc.stop();
  }
});

t("misconfiguration: an unknown flag or role exits with code 2", async () => {
  const dir = await tempDir("lifecycle-usage");
  const flag = await startExpectingExit("usage-flag", dir, ["--role", "agent", "--no-such-flag"]);
  assert.is(flag.code, 2);
  assert.match(flag.message, /^continuum: .*no-such-flag/);
  const role = await startExpectingExit("usage-role", dir, ["--role", "switch"]);
  assert.is(role.code, 2);
  assert.is(role.message, 'continuum: unknown role "switch" (one of agent, local-gateway, remote-gateway)');
  const cfg = await startExpectingExit("usage-config", dir, [
    "--role",
    "agent",
    "--config",
    `${dir}/none.json`,
  ]);
  assert.is(cfg.code, 2);
  assert.match(cfg.message, `continuum: cannot read config file ${dir}/none.json`);
});

// ----------------------------------------------------------------- schema version

const known = readMigrationFiles({ migrationsFolder });
const newest = Math.max(...known.map((m) => m.folderMillis));

/**
 * Runs database set-up in its own process: @libsql/client keeps a closed client's
 * file open, and a connection of this process closed later by the garbage collector
 * could then hold a lock while a role process opens the same file.
 */
async function inChild(code: string): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`set-up failed: ${new TextDecoder().decode(out.stderr)}`);
}

/** A database as the previous release left it: every migration but the newest applied. */
async function previousVersionDb(path: string, dir: string): Promise<void> {
  const journal = JSON.parse(await Deno.readTextFile(`${migrationsFolder}/meta/_journal.json`));
  const entries = journal.entries.slice(0, -1);
  assert.ok(entries.length >= 1, "there is a previous schema version");
  const old = `${dir}/old-migrations`;
  await Deno.mkdir(`${old}/meta`, { recursive: true });
  for (const e of entries) await Deno.copyFile(`${migrationsFolder}/${e.tag}.sql`, `${old}/${e.tag}.sql`);
  await Deno.writeTextFile(`${old}/meta/_journal.json`, JSON.stringify({ ...journal, entries }));
  await inChild(`
    import { createClient } from "@libsql/client";
    import { drizzle } from "drizzle-orm/libsql";
    import { migrate } from "drizzle-orm/libsql/migrator";
    const client = createClient({ url: ${JSON.stringify(`file:${path}`)} });
    await migrate(drizzle(client), { migrationsFolder: ${JSON.stringify(old)} });
    client.close();
  `);
}

/** A database written by a newer Continuum: one migration more, dated `future`. */
async function newerVersionDb(path: string, future: number): Promise<void> {
  await inChild(`
    import { createClient } from "@libsql/client";
    import { openDatabase } from "${root}src/db/db.ts";
    (await openDatabase(${JSON.stringify(path)})).close();
    const client = createClient({ url: ${JSON.stringify(`file:${path}`)} });
    await client.execute({
      sql: "INSERT INTO __drizzle_migrations (hash, created_at) VALUES (?, ?)",
      args: ["from-a-newer-continuum", ${future}],
    });
    client.close();
  `);
}

async function appliedVersions(path: string): Promise<number[]> {
  const client = createClient({ url: `file:${path}` });
  const r = await client.execute("SELECT created_at FROM __drizzle_migrations ORDER BY created_at");
  client.close();
  return r.rows.map((row) => Number(row.created_at));
}

t("a database of the previous schema version is migrated at start", async () => {
  const dir = await tempDir("lifecycle-schema-old");
  const path = `${dir}/gateway.db`;
  await previousVersionDb(path, dir);
  assert.is(Math.max(...await appliedVersions(path)), known[known.length - 2].folderMillis);
  const opened = await openDatabase(path);
  assert.is(opened.version, newest);
  opened.close();
  assert.equal(await appliedVersions(path), known.map((m) => m.folderMillis), "every migration applied once");

  // and a gateway started on such a data dir migrates it and serves
  const secret = `${dir}/agent.secret`;
  await writeSecret(secret);
  await Deno.mkdir(`${dir}/gw/gateway`, { recursive: true, mode: 0o700 });
  await previousVersionDb(`${dir}/gw/gateway/gateway.db`, `${dir}/gw`);
  const gw = await new Gateway({ dir: `${dir}/gw`, agents: { a1: secret } }).start();
  await gw.proc.stop();
  assert.equal(await appliedVersions(`${dir}/gw/gateway/gateway.db`), known.map((m) => m.folderMillis));
});

t("a database of a newer schema version is refused, by the gateway and by openDatabase", async () => {
  const dir = await tempDir("lifecycle-schema-new");
  await Deno.mkdir(`${dir}/gateway`, { recursive: true, mode: 0o700 });
  const path = `${dir}/gateway/gateway.db`;
  const future = newest + 86_400_000;
  await newerVersionDb(path, future);
  const expected = (url: string) =>
    `database ${url} has schema version ${future}, newer than this Continuum knows (${newest}); ` +
    "run the newer Continuum executable, or restore a backup made by this version";
  const r = await startExpectingExit("gateway", dir, [
    "--role",
    "local-gateway",
    "--data-dir",
    `${dir}/gateway`,
    "--agent-listen",
    `unix:${dir}/gw.sock`,
    "--http-listen",
    `127.0.0.1:${freePort()}`,
    ...testRing("256M"),
  ]);
  assert.is(r.code, 1, r.log);
  assert.is(r.message, `continuum: ${expected(`file:${path}`)}`);
  try {
    await openDatabase(path);
    assert.unreachable("a newer database was opened");
  } catch (e) {
    assert.is((e as Error).message, expected(path));
  }
  assert.equal(await appliedVersions(path), [...known.map((m) => m.folderMillis), future], "left untouched");
});

t.run();
