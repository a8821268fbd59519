// Security checks on files and logs, against a running topology (agent, local gateway,
// remote gateway, standby agent), with the mirror and replica directories placed
// outside the data directories on purpose:
// - every key, secret, API token, database file, journal ring, dirty map, state file,
//   mirror and replica image the roles create is owner-only (files 0600 or stricter,
//   directories 0700), and a secret file others can read is refused at start;
// - no secret (agent and standby secret file contents, API tokens, private keys, as
//   text, hex or base64) appears in any role's output, including after refused
//   connections and forged heartbeats, which exercise the error paths.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { dropBulk, sendDatagrams } from "./lib/fuzz.ts";
import { Agent, RoleProcess, startTopology, tempDir, waitFor } from "./lib/cluster.ts";
import { NbdClient } from "./lib/nbd-client.ts";
import { LinkClient } from "./lib/link-client.ts";
import { encodeHeartbeat } from "../src/heartbeat/codec.ts";

const MiB = 1024 * 1024;
const enc = new TextEncoder();
const hexOf = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
const mode = (st: Deno.FileInfo) => (st.mode ?? 0) & 0o777;

const t = suite("security: file modes and secrets in logs");
let topo: Awaited<ReturnType<typeof startTopology>>;
let outside = "";

t.before(async () => {
  // mirror and replica images outside the (0700) data directories: their own modes must protect them
  outside = await tempDir("secfiles-out");
  await Deno.chmod(outside, 0o755);
  topo = await startTopology("secfiles", {
    size: 4 * MiB,
    sites: ["s1"],
    gatewayExtra: ["--mirror-dir", `${outside}/mirrors`],
    remoteExtra: ["--replica-dir", `${outside}/replicas`],
  });
  const c = await NbdClient.connect(topo.agent.socket);
  await c.go("vol0");
  await c.write(0, new Uint8Array(MiB).fill(0x5a));
  await c.flush();
  await c.disconnect();
  await topo.caughtUp();
});
t.after(async () => {
  await topo?.stop();
  await dropBulk(topo?.dir);
  await dropBulk(outside);
});

/** Every file and directory under dir (no symlinks followed). */
async function walk(dir: string): Promise<{ path: string; st: Deno.FileInfo }[]> {
  const out: { path: string; st: Deno.FileInfo }[] = [];
  for await (const e of Deno.readDir(dir)) {
    const path = `${dir}/${e.name}`;
    const st = await Deno.lstat(path);
    out.push({ path, st });
    if (st.isDirectory) out.push(...await walk(path));
  }
  return out;
}

t(
  "everything the roles create is owner-only: keys, tokens, databases, journals, state, images " +
    "(regression: mirror and replica images were created 0644 in 0755 directories)",
  async () => {
    const roleDirs = [
      `${topo.dir}/gateway`,
      `${topo.dir}/agent-a1`,
      `${topo.dir}/standby-s1`,
      topo.remotes.s1.home,
      topo.remotes.s1.keyDir,
      `${topo.dir}/local-keys`,
      `${outside}/mirrors`,
      `${outside}/replicas`,
    ];
    const bad: string[] = [];
    const seen = new Set<string>();
    for (const d of roleDirs) {
      const top = await Deno.lstat(d);
      assert.ok(top.isDirectory, `${d} exists`);
      if (mode(top) !== 0o700) bad.push(`${d}: directory ${mode(top).toString(8)}`);
      for (const { path, st } of await walk(d)) {
        const name = path.slice(path.lastIndexOf("/") + 1);
        seen.add(name);
        if (st.isDirectory) {
          if (mode(st) !== 0o700) bad.push(`${path}: directory ${mode(st).toString(8)}`);
        } else if (st.isFile) {
          // a certificate is public by design; every other file is owner-only
          const allowed = name === "cert.pem" ? 0o644 : 0o600;
          if ((mode(st) & ~allowed) !== 0) bad.push(`${path}: file ${mode(st).toString(8)}`);
          if (name !== "cert.pem" && (mode(st) & 0o077) !== 0) bad.push(`${path}: group/other bits`);
        }
      }
    }
    assert.equal(bad, [], `not owner-only:\n${bad.join("\n")}`);
    // the check saw what matters
    for (const f of ["api-token", "key.pem", "vol0.img"]) assert.ok(seen.has(f), `${f} was checked`);
    assert.ok([...seen].some((n) => /\.db$/.test(n)), "a database file was checked");
  },
);

t(
  "a secret file that group or others can read is refused at start, with the fix in the message",
  async () => {
    const dir = `${topo.dir}/loose`;
    await Deno.mkdir(dir);
    const secret = `${dir}/loose.secret`;
    await Deno.writeTextFile(secret, "0123456789abcdef0123456789abcdef\n");
    await Deno.chmod(secret, 0o644);
    await Deno.writeFile(`${dir}/v.img`, new Uint8Array(MiB));
    const a = new Agent({
      dir,
      id: "loose",
      secretFile: secret,
      gatewaySocket: topo.gw.socket,
      volumes: { v: `${dir}/v.img` },
    });
    await a.start(false);
    const st = await a.proc.exited;
    assert.is.not(st.code, 0, "the agent refused to start");
    assert.match(a.proc.log, /readable by group or others/);
    assert.match(a.proc.log, /chmod 600/);
    assert.not.match(a.proc.log, /0123456789abcdef0123456789abcdef/, "the secret itself is not printed");
  },
);

t(
  "no secret appears in any role's output, after normal work and after refused and forged input",
  async () => {
    // exercise the error paths: a wrong proof on the agent link, a forged and a garbage heartbeat
    const refused = await LinkClient.connect(
      topo.gw.socket,
      "a1",
      enc.encode("wrong-secret-wrong-secret-wrong!"),
    )
      .then(() => "welcomed", (e: Error) => e.message);
    assert.match(refused, /denied: authentication failed/);
    const ready = await topo.gw.proc.waitForLog("local gateway ready");
    const [host, port] = String(ready.heartbeats).split(":");
    const forged = encodeHeartbeat(
      { agentId: "a1", boot: 1n, seq: 1, sentAtMs: Date.now(), status: { healthy: true, detail: "x" } },
      enc.encode("wrong-secret-wrong-secret-wrong!"),
    );
    await sendDatagrams([forged, new Uint8Array(40).fill(7)], { host, port: Number(port) });
    await waitFor(
      () => topo.gw.proc.log.includes("authentication failed"),
      5_000,
      "the refusal to be logged",
    );
    await new Promise((r) => setTimeout(r, 300));

    const secrets: { what: string; text: string }[] = [];
    const add = (what: string, text: string) => {
      const s = text.trim();
      if (s.length < 16) return;
      secrets.push({ what, text: s });
      secrets.push({ what: `${what} (hex)`, text: hexOf(enc.encode(s)) });
      secrets.push({ what: `${what} (base64)`, text: btoa(s) });
    };
    add("agent secret", await Deno.readTextFile(`${topo.dir}/agent.secret`));
    add("standby secret", await Deno.readTextFile(`${topo.dir}/standby-s1.secret`));
    add("local API token", await Deno.readTextFile(`${topo.dir}/gateway/api-token`));
    add("remote API token", await Deno.readTextFile(`${topo.remotes.s1.home}/api-token`));
    for (const k of [`${topo.dir}/local-keys/key.pem`, `${topo.remotes.s1.keyDir}/key.pem`]) {
      const pem = await Deno.readTextFile(k);
      const body = pem.split("\n").filter((l) => l && !l.startsWith("-----")).join("");
      secrets.push({ what: `private key ${k}`, text: body });
    }
    const roles: RoleProcess[] = [topo.gw.proc, topo.agent.proc, topo.remotes.s1.proc, topo.standbys.s1.proc];
    const leaks: string[] = [];
    for (const p of roles) {
      const text = p.log;
      assert.ok(text.length > 0, `${p.name} wrote a log`);
      if (/PRIVATE KEY/.test(text)) leaks.push(`${p.name}: a PEM private key`);
      for (const s of secrets) if (text.includes(s.text)) leaks.push(`${p.name}: ${s.what}`);
    }
    assert.equal(leaks, [], `secrets in logs:\n${leaks.join("\n")}`);
    console.log(
      `  scanned ${roles.length} role logs (${roles.reduce((n, p) => n + p.log.length, 0)} bytes) ` +
        `for ${secrets.length} secret forms`,
    );
  },
);

t.run();
