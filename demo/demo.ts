// `deno task demo`: every role on this machine, in ./demo-data. Prints one
// key=value line per endpoint and path, then how to write to the volume.
// Ctrl-C stops everything cleanly.
import { ensureSetup } from "../tests/lib/setup.ts";

const root = new URL("../", import.meta.url).pathname;
const data = `${root}demo-data`;
const GiB = 1024 ** 3;

async function sparse(path: string, size: number): Promise<void> {
  const f = await Deno.open(path, { create: true, write: true });
  if ((await f.stat()).size < size) await f.truncate(size);
  f.close();
}

async function secret(path: string): Promise<void> {
  try {
    await Deno.stat(path);
  } catch {
    const b = crypto.getRandomValues(new Uint8Array(32));
    await Deno.writeTextFile(path, btoa(String.fromCharCode(...b)) + "\n", { mode: 0o600 });
  }
}

/** A role started by the demo: its log goes to demo-data/NAME.log and is watched for readiness. */
class RoleChild {
  readonly child: Deno.ChildProcess;
  private lines: string[] = [];

  constructor(readonly name: string, args: string[]) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${root}main.ts`, ...args],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.pump();
  }

  private async pump(): Promise<void> {
    const file = await Deno.open(`${data}/${this.name}.log`, { create: true, append: true });
    const dec = new TextDecoder();
    for await (const chunk of this.child.stderr) {
      await file.write(chunk);
      this.lines.push(...dec.decode(chunk, { stream: true }).split("\n"));
    }
    file.close();
  }

  async ready(msg: string): Promise<void> {
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      for (const l of this.lines) {
        if (!l.startsWith("{")) continue;
        const r = JSON.parse(l);
        if (r.msg === msg) return;
        if (r.level === "error") throw new Error(`${this.name}: ${r.msg} ${r.error ?? ""}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${this.name} did not start; see ${data}/${this.name}.log`);
  }

  async stop(): Promise<void> {
    try {
      this.child.kill("SIGTERM");
    } catch { /* exited */ }
    await this.child.status;
  }
}

/** Runs `continuum keygen` once per site (kept across demo runs); returns the fingerprint. */
async function siteKey(dir: string, name: string): Promise<string> {
  let exists = false;
  try {
    await Deno.stat(`${dir}/key.pem`);
    exists = true;
  } catch { /* first run */ }
  const args = [
    "run",
    "-A",
    `${root}main.ts`,
    "keygen",
    ...(exists ? ["--show"] : ["--name", name]),
    "--dir",
    dir,
  ];
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" }).output();
  const m = /^fingerprint=(\S+)$/m.exec(new TextDecoder().decode(out.stdout));
  if (!m) throw new Error(`keygen for ${name} failed: ${new TextDecoder().decode(out.stderr)}`);
  return m[1];
}

await ensureSetup();
await Deno.mkdir(data, { recursive: true });
const lsp = `${data}/lsp-vol0.img`;
await sparse(lsp, GiB);
await secret(`${data}/agent.secret`);
const localFp = await siteKey(`${data}/keys-local`, "local");
const sites = [];
for (const s of [{ name: "dr1", port: 7901, http: 7881 }, { name: "dr2", port: 7902, http: 7882 }]) {
  sites.push({ ...s, fp: await siteKey(`${data}/keys-${s.name}`, s.name) });
}
const roles: RoleChild[] = [];
const rsp: Record<string, string> = {};

for (const site of sites) {
  await secret(`${data}/standby-${site.name}.secret`);
  const remote = new RoleChild(`remote-gateway-${site.name}`, [
    "--role",
    "remote-gateway",
    "--id",
    site.name,
    "--data-dir",
    `${data}/remote-${site.name}`,
    "--key-dir",
    `${data}/keys-${site.name}`,
    "--listen",
    `127.0.0.1:${site.port}`,
    "--trust",
    `local=${localFp}`,
    "--agent-listen",
    `unix:${data}/remote-${site.name}.sock`,
    "--agent-secret",
    `app1=${data}/standby-${site.name}.secret`,
    "--http-listen",
    `127.0.0.1:${site.http}`,
    "--buffer-size",
    "512M",
  ]);
  roles.push(remote);
  await remote.ready("remote gateway ready");
  rsp[site.name] = `${data}/rsp-${site.name}-vol0.img`;
  await sparse(rsp[site.name], GiB);
  const standby = new RoleChild(`standby-agent-${site.name}`, [
    "--role",
    "agent",
    "--standby",
    "--id",
    "app1",
    "--data-dir",
    `${data}/standby-${site.name}`,
    "--volume",
    `vol0=${rsp[site.name]}`,
    "--gateway",
    `unix:${data}/remote-${site.name}.sock`,
    "--secret-file",
    `${data}/standby-${site.name}.secret`,
    "--nbd-listen",
    "off",
  ]);
  roles.push(standby);
  await standby.ready("agent ready");
}

// the web UI's first user: a random password kept in the demo's data (reused by later runs,
// whose database already holds the user)
const passwordFile = `${data}/admin-password`;
try {
  await Deno.stat(passwordFile);
} catch {
  const pw = Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0"))
    .join("");
  await Deno.writeTextFile(passwordFile, `${pw}\n`, { mode: 0o600 });
}
const gateway = new RoleChild("local-gateway", [
  "--admin-password-file",
  passwordFile,
  "--role",
  "local-gateway",
  "--data-dir",
  `${data}/local-gateway`,
  "--key-dir",
  `${data}/keys-local`,
  "--agent-listen",
  "127.0.0.1:7800",
  "--agent-secret",
  `app1=${data}/agent.secret`,
  "--http-listen",
  "127.0.0.1:7880",
  "--buffer-size",
  "512M",
  ...sites.flatMap((s) => [
    "--remote",
    `${s.name}=127.0.0.1:${s.port}`,
    "--remote-fingerprint",
    `${s.name}=${s.fp}`,
  ]),
]);
roles.push(gateway);
await gateway.ready("local gateway ready");
const agent = new RoleChild("agent", [
  "--role",
  "agent",
  "--id",
  "app1",
  "--data-dir",
  `${data}/agent`,
  "--volume",
  `vol0=${lsp}`,
  "--gateway",
  "127.0.0.1:7800",
  "--secret-file",
  `${data}/agent.secret`,
  "--nbd-listen",
  "127.0.0.1:10809",
]);
roles.push(agent);
await agent.ready("agent ready");

const socket = `${data}/agent/nbd.sock`;
const lines: Record<string, string> = {
  "nbd-uri": `nbd+unix:///vol0?socket=${socket}`,
  "nbd-tcp-uri": "nbd://127.0.0.1:10809/vol0",
  "lsp-image": lsp,
  "lgp-image": `${data}/local-gateway/mirrors/app1/vol0.img`,
  gateway: "127.0.0.1:7800",
  "gateway-status": "http://127.0.0.1:7880/api/status",
  "web-url": "http://127.0.0.1:7880/",
  "web-login": "admin",
  "web-password": (await Deno.readTextFile(passwordFile)).trim(),
  "api-token-file": `${data}/local-gateway/api-token`,
};
for (const s of sites) {
  lines[`rgp-image.${s.name}`] = `${data}/remote-${s.name}/replicas/app1/vol0.img`;
  lines[`rsp-image.${s.name}`] = rsp[s.name];
  lines[`remote-status.${s.name}`] = `http://127.0.0.1:${s.http}/api/status`;
}
lines.logs = data;
for (const [k, v] of Object.entries(lines)) console.log(`${k}=${v}`);
const images = [
  "lsp-image",
  "lgp-image",
  ...sites.flatMap((s) => [`rgp-image.${s.name}`, `rsp-image.${s.name}`]),
]
  .map((k) => lines[k]).join(" ");
console.log(`
Write to the protected volume, then compare every copy:
  qemu-io -f raw '${lines["nbd-uri"]}' -c 'write -P 0xab 0 1M' -c flush
  sha256sum ${images}
Status (the API needs the token):
  curl -H "Authorization: Bearer $(cat ${lines["api-token-file"]})" ${lines["gateway-status"]}
Ctrl-C stops everything.`);

await new Promise<void>((resolve) => {
  Deno.addSignalListener("SIGINT", () => resolve());
  Deno.addSignalListener("SIGTERM", () => resolve());
});
console.log("\nstopping…");
for (const role of roles.reverse()) await role.stop();
console.log("stopped");
