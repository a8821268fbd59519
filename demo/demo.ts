// `deno task demo [--sites N]`: every role on this machine, in ./demo-data: the local gateway,
// the application server's agent and N remote sites (default 2), each a remote gateway with a
// standby agent. The agents start with their identity only; the devices they may serve are the
// image files in their --device-prefix directories, which they report to their gateways. The
// demo then creates and starts one protection task for app1/vol0 with every site through the
// web API (as the UI does), so the web page shows a protected task at once; app1's second
// image is left for a task made in the UI. With --sites 0 there is nothing to replicate to, so
// no task: the agent protects vol0 by its --volume flag (journal and mirror only).
// Prints one key=value line per endpoint and path, then how to use them. Ctrl-C stops all.
//   --data-dir DIR   instead of ./demo-data
//   --free-ports     any free ports instead of the usual ones (tests run beside a demo)
import { ensureSetup } from "../tests/lib/setup.ts";
import { freePort } from "../tests/lib/cluster.ts";

const root = new URL("../", import.meta.url).pathname;
const GiB = 1024 ** 3;
const SIZES = { vol0: GiB, vol1: GiB / 2 };

/** The demo's command line; exits with a message on a bad one. */
function options(args: string[]) {
  const o = { sites: 2, data: `${root}demo-data`, freePorts: false };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const value = () => {
      const v = args[++i];
      if (v === undefined) usage(`${a} needs a value`);
      return v;
    };
    if (a === "--sites") {
      const v = value();
      if (!/^\d$/.test(v) || Number(v) > 8) usage(`--sites ${v}: give a whole number from 0 to 8`);
      o.sites = Number(v);
    } else if (a === "--data-dir") o.data = value().replace(/\/+$/, "");
    else if (a === "--free-ports") o.freePorts = true;
    else usage(`unknown option ${a}`);
  }
  if (!o.data.startsWith("/")) o.data = `${Deno.cwd()}/${o.data}`;
  return o;
}

function usage(problem: string): never {
  console.error(
    `demo: ${problem}\nusage: deno task demo [--sites N (0-8, default 2)] [--data-dir DIR] [--free-ports]`,
  );
  Deno.exit(2);
}

const opts = options(Deno.args);
const data = opts.data;
const port = (usual: number) => opts.freePorts ? freePort() : usual;

async function sparse(path: string, size: number): Promise<void> {
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  const f = await Deno.open(path, { create: true, write: true });
  if ((await f.stat()).size < size) await f.truncate(size);
  f.close();
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

async function secret(path: string): Promise<void> {
  if (await exists(path)) return;
  const b = crypto.getRandomValues(new Uint8Array(32));
  await Deno.writeTextFile(path, btoa(String.fromCharCode(...b)) + "\n", { mode: 0o600 });
}

/** A role started by the demo: its log goes to DATA/NAME.log and is watched for readiness. */
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
    const deadline = Date.now() + 60_000;
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
  const args = [
    "run",
    "-A",
    `${root}main.ts`,
    "keygen",
    ...(await exists(`${dir}/key.pem`) ? ["--show"] : ["--name", name]),
    "--dir",
    dir,
  ];
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" }).output();
  const m = /^fingerprint=(\S+)$/m.exec(new TextDecoder().decode(out.stdout));
  if (!m) throw new Error(`keygen for ${name} failed: ${new TextDecoder().decode(out.stderr)}`);
  return m[1];
}

/** The web API as the UI uses it, with the gateway's admin token. */
function webApi(base: string, token: string) {
  return async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const r = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return JSON.parse(text) as T;
  };
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`demo: timed out waiting for ${what}${last ? ` (${(last as Error).message})` : ""}`);
}

/** Task "demo" for app1/vol0 at every site, created and started through the API; returns its state. */
async function demoTask(api: ReturnType<typeof webApi>, device: string, sites: string[]): Promise<string> {
  type Task = { name: string; state: string; problems: { message: string }[] };
  const have = (await api<Task[]>("GET", "/api/tasks")).find((t) => t.name === "demo");
  if (!have) {
    // the agent's devices and the sites' standbys are in the inventory once discovered
    const lsp = await until(
      "the agent's devices in the inventory",
      async () =>
        (await api<{ host: string; device: string }[]>("GET", "/api/volumes")).find((v) =>
          v.device === device
        ),
    );
    const q = `host=${encodeURIComponent(lsp.host)}&device=${encodeURIComponent(device)}&remotes=${
      sites.join(",")
    }`;
    const proposal = await until("the standbys' devices in the inventory", async () => {
      const p = await api<{ complete: boolean; group: unknown }>("GET", `/api/discovery/proposal?${q}`);
      return p.complete ? p : undefined;
    });
    await api("POST", "/api/tasks", {
      name: "demo",
      description: `app1/vol0, replicated to ${sites.join(" and ")} (made by the demo)`,
      group: proposal.group,
    });
  }
  if (!have || have.state === "configured") await api("POST", "/api/tasks/demo/actions/start", {});
  return await until("task demo to be protected", async () => {
    const t = await api<Task>("GET", "/api/tasks/demo");
    return t.state === "protected" ? t.state : undefined;
  }, 120_000).catch((e) => `not protected yet (${(e as Error).message})`);
}

await ensureSetup();
await Deno.mkdir(data, { recursive: true });
const sites = Array.from({ length: opts.sites }, (_, i) => ({
  name: `dr${i + 1}`,
  port: port(7901 + i),
  http: port(7881 + i),
}));
const local = { agents: port(7800), heartbeats: port(7810), http: port(7880), nbd: port(10809) };
const disks = (owner: string) => `${data}/disks/${owner}`;
// a demo-data of the flag-driven demo: its images move to where the agents now find them
const moved: [string, string][] = [
  [`${data}/lsp-vol0.img`, `${disks("app1")}/vol0.img`],
  ...sites.map((s): [string, string] => [`${data}/rsp-${s.name}-vol0.img`, `${disks(s.name)}/vol0.img`]),
];
for (const [from, to] of moved) {
  if (await exists(from) && !await exists(to)) {
    await Deno.mkdir(to.slice(0, to.lastIndexOf("/")), { recursive: true });
    await Deno.rename(from, to);
  }
}
for (const owner of ["app1", ...sites.map((s) => s.name)]) {
  for (const [name, size] of Object.entries(SIZES)) await sparse(`${disks(owner)}/${name}.img`, size);
}
const lsp = `${disks("app1")}/vol0.img`;
await secret(`${data}/agent.secret`);
const localFp = opts.sites ? await siteKey(`${data}/keys-local`, "local") : undefined;
const roles: RoleChild[] = [];
const stopAll = async () => {
  for (const role of roles.reverse()) await role.stop();
};

try {
  for (const site of sites) {
    const fp = await siteKey(`${data}/keys-${site.name}`, site.name);
    Object.assign(site, { fp });
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
    // the standby server of app1 at this site: its identity, and where its devices are
    const standby = new RoleChild(`standby-agent-${site.name}`, [
      "--role",
      "agent",
      "--standby",
      "--id",
      "app1",
      "--data-dir",
      `${data}/standby-${site.name}`,
      "--device-prefix",
      disks(site.name),
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
  if (!await exists(passwordFile)) {
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
    ...(localFp ? ["--key-dir", `${data}/keys-local`] : []),
    "--agent-listen",
    `127.0.0.1:${local.agents}`,
    "--heartbeat-listen",
    `127.0.0.1:${local.heartbeats}`,
    "--agent-secret",
    `app1=${data}/agent.secret`,
    "--http-listen",
    `127.0.0.1:${local.http}`,
    "--buffer-size",
    "512M",
    ...sites.flatMap((s) => [
      "--remote",
      `${s.name}=127.0.0.1:${s.port}`,
      "--remote-fingerprint",
      `${s.name}=${(s as typeof s & { fp: string }).fp}`,
    ]),
  ]);
  roles.push(gateway);
  await gateway.ready("local gateway ready");
  // the application server: its identity and where its devices are (vol0 by flag without a site)
  const agent = new RoleChild("agent", [
    "--role",
    "agent",
    "--id",
    "app1",
    "--data-dir",
    `${data}/agent`,
    "--device-prefix",
    disks("app1"),
    ...(opts.sites ? [] : ["--volume", `vol0=${lsp}`]),
    "--gateway",
    `127.0.0.1:${local.agents}`,
    "--heartbeat-to",
    `127.0.0.1:${local.heartbeats}`,
    "--secret-file",
    `${data}/agent.secret`,
    "--nbd-listen",
    `127.0.0.1:${local.nbd}`,
  ]);
  roles.push(agent);
  await agent.ready("agent ready");

  const web = `http://127.0.0.1:${local.http}`;
  const tokenFile = `${data}/local-gateway/api-token`;
  const state = opts.sites
    ? await demoTask(webApi(web, (await Deno.readTextFile(tokenFile)).trim()), lsp, sites.map((s) => s.name))
    : undefined;

  const socket = `${data}/agent/nbd.sock`;
  const lines: Record<string, string> = {
    "nbd-uri": `nbd+unix:///vol0?socket=${socket}`,
    "nbd-tcp-uri": `nbd://127.0.0.1:${local.nbd}/vol0`,
    "lsp-image": lsp,
    "lgp-image": `${data}/local-gateway/mirrors/app1/vol0.img`,
    gateway: `127.0.0.1:${local.agents}`,
    "gateway-status": `${web}/api/status`,
    "web-url": `${web}/`,
    "web-login": "admin",
    "web-password": (await Deno.readTextFile(passwordFile)).trim(),
    "api-token-file": tokenFile,
    ...(state ? { task: `demo (${state})`, "second-volume": `${disks("app1")}/vol1.img` } : {}),
  };
  for (const s of sites) {
    lines[`rgp-image.${s.name}`] = `${data}/remote-${s.name}/replicas/app1/vol0.img`;
    lines[`rsp-image.${s.name}`] = `${disks(s.name)}/vol0.img`;
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
  sha256sum ${images}`);
  console.log(
    opts.sites
      ? `Task "demo" protects app1/vol0 at ${
        sites.map((s) => s.name).join(" and ")
      }. Make a second one in the web UI:
  open ${lines["web-url"]}, log in as admin with the password above, click New task, then Next on
  each step (the sites, app1's second volume vol1 and every copy are discovered and pre-selected),
  type a task name, Create task, and Start on its page.`
      : "No remote site (--sites 0): no task can be made; vol0 is journaled and mirrored by the local gateway.",
  );
  console.log(`Status (the API needs the token):
  curl -H "Authorization: Bearer $(cat ${lines["api-token-file"]})" ${lines["gateway-status"]}
Ctrl-C stops everything.`);
} catch (e) {
  console.error((e as Error).message);
  await stopAll();
  Deno.exit(1);
}

await new Promise<void>((resolve) => {
  Deno.addSignalListener("SIGINT", () => resolve());
  Deno.addSignalListener("SIGTERM", () => resolve());
});
console.log("\nstopping…");
await stopAll();
console.log("stopped");
