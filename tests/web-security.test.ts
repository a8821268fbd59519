// The web layer's security checks (issue 6 §4, issue 8 §3) against a real local gateway:
// nothing but the login page without a session or a token, scrypt-hashed passwords, cookie
// flags (Secure under TLS), CSRF on every change, viewers read-only, API tokens, the one-time
// setup link (no default password), the login rate limit, device paths kept inside the allowed
// device list, bad bodies answered with the field at fault, and no secret in the log.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { createClient } from "@libsql/client";
import { tempDir } from "./lib/cluster.ts";
import { ADMIN_PASSWORD, selfSignedCert, WebClient, WebGateway } from "./lib/browser.ts";
import { openDatabase } from "../src/db/db.ts";
import { setLogSink } from "../src/log.ts";
import { startWebServer } from "../src/web/web-server.ts";
import { readTls } from "../src/web/status-server.ts";
import { ActionError } from "../src/tasks/actions.ts";
import type { TaskActions } from "../src/tasks/actions.ts";
import { gatewayStatus } from "./lib/status.ts";

const t = suite("web security");
const VIEWER_PASSWORD = "viewer password 12345";
const gw = new WebGateway();
/** Every secret handed out or typed in during the run: none may reach the log. */
const secrets: string[] = [ADMIN_PASSWORD, VIEWER_PASSWORD];
let routes: { method: string; path: string }[] = [];
let admin: WebClient;

const MUTATING = new Set(["POST", "PUT", "PATCH", "DELETE"]);
const PUBLIC = new Set(["POST /api/login", "POST /api/setup"]);

/** A concrete URL for a route pattern. */
function concrete(path: string): string {
  return path.replace(":name", "x1").replace(":action", "start").replace(":id", "1");
}

t.before(async () => {
  await gw.start();
  secrets.push(gw.token);
  admin = new WebClient(gw.url);
  await admin.login("admin", ADMIN_PASSWORD);
  secrets.push(admin.cookie!.split("=")[1], admin.csrf!);
  const tokenClient = new WebClient(gw.url, { token: gw.token });
  routes = await tokenClient.expect(200, "GET", "/api/routes") as typeof routes;
});

t.after(async () => {
  await gw.stop();
});

t("the API lists its routes, and every one is refused without a session or a token", async () => {
  const keys = routes.map((r) => `${r.method} ${r.path}`);
  for (
    const want of [
      "GET /api/status",
      "GET /api/events",
      "GET /metrics",
      "POST /api/sites",
      "PUT /api/hosts/:name",
      "DELETE /api/volumes/:name",
      "POST /api/tasks/:name/actions/:action",
      "GET /api/tasks/:name/recovery-candidates",
      "POST /api/recoveries",
      "POST /api/services/:name/failover",
      "GET /api/audit",
      "POST /api/tokens",
      "DELETE /api/users/:name",
    ]
  ) assert.ok(keys.includes(want), `${want} is listed (${keys.length} routes)`);
  assert.ok(routes.length >= 40, `${routes.length} routes`);
  const anonymous = new WebClient(gw.url);
  const forged = new WebClient(gw.url, { token: "ctm_not-a-real-token" });
  const stale = new WebClient(gw.url);
  stale.cookie = "continuum_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
  stale.csrf = "x";
  for (const r of routes) {
    if (PUBLIC.has(`${r.method} ${r.path}`)) continue;
    const body = MUTATING.has(r.method) ? {} : undefined;
    for (
      const [who, c] of [["anonymous", anonymous], ["a forged token", forged], [
        "a stale cookie",
        stale,
      ]] as const
    ) {
      const a = await c.req(r.method, concrete(r.path), body);
      assert.is(a.status, 401, `${r.method} ${r.path} by ${who}: ${a.status} ${a.text}`);
      assert.type((a.body as { error?: string })?.error, "string", `${r.method} ${r.path}: JSON error`);
    }
  }
  // routes that do not exist are refused the same way (no probing without a login)
  assert.is((await anonymous.req("GET", "/api/nothing-here")).status, 401);
  assert.is((await anonymous.req("DELETE", "/api/tasks/x1/schedules/1")).status, 401);
});

t("the login page and the UI bundle are readable without login, with security headers", async () => {
  for (const path of ["/", "/login", "/tasks/x1"]) {
    const r = await fetch(`${gw.url}${path}`);
    const html = await r.text();
    assert.is(r.status, 200, path);
    assert.match(html, /<script type="module" src="\/app\.js">/);
    assert.match(r.headers.get("content-security-policy") ?? "", /default-src 'none'/);
    assert.is(r.headers.get("x-frame-options"), "DENY");
  }
  const js = await fetch(`${gw.url}/app.js`);
  assert.is(js.status, 200, "the bundle is built (tests/lib/setup.ts) and served");
  assert.match(js.headers.get("content-type") ?? "", /javascript/);
  assert.ok((await js.arrayBuffer()).byteLength > 10_000);
  // the page shows no data: that comes from the API, which needs the login
  const refused = await fetch(`${gw.url}/api/status`);
  await refused.body?.cancel();
  assert.is(refused.status, 401);
  // every response carries the whole policy, a refusal too; no HSTS over plain HTTP
  for (const r of [js, refused]) {
    const csp = r.headers.get("content-security-policy") ?? "";
    for (
      const d of [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
      ]
    ) assert.ok(csp.includes(d), `${d} in ${csp}`);
    assert.is(r.headers.get("x-content-type-options"), "nosniff");
    assert.is(r.headers.get("referrer-policy"), "no-referrer");
    assert.is(r.headers.get("cross-origin-opener-policy"), "same-origin");
    assert.is(r.headers.get("cross-origin-resource-policy"), "same-origin");
    assert.match(r.headers.get("permissions-policy") ?? "", /camera=\(\)/);
    assert.is(r.headers.get("strict-transport-security"), null);
  }
  assert.is(refused.headers.get("cache-control"), "no-store");
});

t("login: scrypt-hashed password, HttpOnly SameSite=Strict cookie, wrong passwords refused", async () => {
  const db = createClient({ url: `file:${gw.dir}/gateway/gateway.db` });
  try {
    const rows = (await db.execute("SELECT name, role, password_hash FROM users")).rows;
    assert.is(rows.length, 1);
    assert.is(rows[0].name, "admin");
    const hash = String(rows[0].password_hash);
    assert.match(hash, /^scrypt\$32768\$8\$1\$[A-Za-z0-9+/=]{20,}\$[A-Za-z0-9+/=]{40,}$/);
    assert.not.ok(hash.includes(ADMIN_PASSWORD));
    // sessions and tokens are stored as hashes only
    const sessions = (await db.execute("SELECT id_hash FROM sessions")).rows.map((r) => String(r.id_hash));
    assert.ok(sessions.length >= 1);
    assert.not.ok(sessions.includes(admin.cookie!.split("=")[1]));
  } finally {
    db.close();
  }
  const c = new WebClient(gw.url);
  const a = await c.login("admin", ADMIN_PASSWORD);
  secrets.push(c.cookie!.split("=")[1], c.csrf!);
  const cookie = a.headers.get("set-cookie")!;
  assert.match(cookie, /^continuum_session=[A-Za-z0-9_-]{43};/);
  assert.match(cookie, /; HttpOnly/);
  assert.match(cookie, /; SameSite=Strict/);
  assert.match(cookie, /; Path=\//);
  assert.not.match(cookie, /Secure/, "no Secure flag over plain HTTP");
  const me = await c.expect(200, "GET", "/api/session") as { user: string; role: string; csrf: string };
  assert.equal([me.user, me.role], ["admin", "admin"]);
  assert.is(me.csrf, c.csrf);

  const wrong = await new WebClient(gw.url).req("POST", "/api/login", {
    name: "admin",
    password: "x".repeat(12),
  });
  assert.is(wrong.status, 401);
  assert.is((wrong.body as { error: string }).error, "wrong user name or password");
  assert.is(wrong.headers.get("set-cookie"), null);
  const nobody = await new WebClient(gw.url).req("POST", "/api/login", {
    name: "root",
    password: "x".repeat(12),
  });
  assert.is(nobody.status, 401);
  assert.is((nobody.body as { error: string }).error, "wrong user name or password", "same answer");

  // logout ends the session for good
  await c.expect(200, "POST", "/api/logout", {});
  assert.is((await c.req("GET", "/api/session")).status, 401);
});

t("every change made with a session needs its CSRF token and this origin", async () => {
  const c = new WebClient(gw.url);
  await c.login("admin", ADMIN_PASSWORD);
  secrets.push(c.cookie!.split("=")[1], c.csrf!);
  const site = { name: "csrf-site", role: "local" };
  const none = await c.req("POST", "/api/sites", site, { "x-csrf-token": "" });
  assert.is(none.status, 403);
  assert.match((none.body as { error: string }).error, /CSRF token missing/);
  const wrong = await c.req("POST", "/api/sites", site, { "x-csrf-token": "A".repeat(43) });
  assert.is(wrong.status, 403);
  assert.match((wrong.body as { error: string }).error, /CSRF token wrong/);
  const other = new WebClient(gw.url);
  await other.login("admin", ADMIN_PASSWORD);
  secrets.push(other.cookie!.split("=")[1], other.csrf!);
  const foreign = await c.req("POST", "/api/sites", site, { "x-csrf-token": other.csrf! });
  assert.is(foreign.status, 403, "another session's token does not do");
  const cross = await c.req("POST", "/api/sites", site, { origin: "http://evil.example" });
  assert.is(cross.status, 403);
  assert.match((cross.body as { error: string }).error, /cross-site/);
  const fetchSite = await c.req("POST", "/api/sites", site, { "sec-fetch-site": "cross-site" });
  assert.is(fetchSite.status, 403);
  assert.is((await admin.req("GET", "/api/sites/csrf-site")).status, 404, "nothing was created");
  await c.expect(201, "POST", "/api/sites", site);
  await c.expect(200, "DELETE", "/api/sites/csrf-site");

  // each state-changing route: refused before it runs (403, not 2xx, 4xx from the route, or 401)
  for (const r of routes) {
    if (!MUTATING.has(r.method) || PUBLIC.has(`${r.method} ${r.path}`)) continue;
    const a = await c.req(r.method, concrete(r.path), {}, { "x-csrf-token": "" });
    assert.is(a.status, 403, `${r.method} ${r.path} without CSRF: ${a.status} ${a.text}`);
  }
  // bearer tokens carry no cookie: no CSRF token needed
  const bot = new WebClient(gw.url, { token: gw.token });
  await bot.expect(201, "POST", "/api/sites", { name: "bot-site", role: "remote" });
  await bot.expect(200, "DELETE", "/api/sites/bot-site");
  assert.is(
    (await c.expect(200, "GET", "/api/session") as { user: string }).user,
    "admin",
    "session still fine",
  );
});

t("a viewer can read everything an operator sees and change nothing", async () => {
  const created = await admin.expect(201, "POST", "/api/users", {
    name: "watcher",
    password: VIEWER_PASSWORD,
    role: "viewer",
  }) as { name: string; role: string; passwordHash?: string };
  assert.is(created.role, "viewer");
  assert.is(created.passwordHash, undefined, "no hash in the answer");
  await admin.expect(201, "POST", "/api/sites", { name: "prod", role: "local" });
  const v = new WebClient(gw.url);
  await v.login("watcher", VIEWER_PASSWORD);
  secrets.push(v.cookie!.split("=")[1], v.csrf!);
  for (
    const path of [
      "/api/status",
      "/api/sites",
      "/api/hosts",
      "/api/volumes",
      "/api/tasks",
      "/api/audit",
      "/metrics",
    ]
  ) {
    assert.is((await v.req("GET", path)).status, 200, `viewer reads ${path}`);
  }
  assert.is((await v.req("GET", "/api/users")).status, 403, "the user list is the admins'");
  assert.is((await v.req("GET", "/api/tokens")).status, 403);
  for (const r of routes) {
    const key = `${r.method} ${r.path}`;
    if (!MUTATING.has(r.method) || PUBLIC.has(key)) continue;
    if (key === "POST /api/logout" || key === "POST /api/session/password") continue; // their own
    const a = await v.req(r.method, concrete(r.path), { name: "x1", role: "local" });
    assert.is(a.status, 403, `viewer ${key}: ${a.status} ${a.text}`);
    assert.match((a.body as { error: string }).error, /viewer|admin role/);
  }
  assert.is((await v.req("PUT", "/api/users/watcher", { role: "admin" })).status, 403, "no self-promotion");
  assert.is(
    (await admin.expect(200, "GET", "/api/sites/prod") as { role: string }).role,
    "local",
    "unchanged",
  );
  // a viewer may change their own password (knowing the current one)
  const bad = await v.req("POST", "/api/session/password", {
    current: "wrong password!",
    password: "new password 678",
  });
  assert.is(bad.status, 403);
  assert.match((bad.body as { error: string }).error, /^current:/);
  secrets.push("new password 678");
  await v.expect(200, "POST", "/api/session/password", {
    current: VIEWER_PASSWORD,
    password: "new password 678",
  });
  await new WebClient(gw.url).login("watcher", "new password 678");
});

t(
  "API tokens for automation: shown once, role enforced, revocable; the token file stays an admin token",
  async () => {
    const made = await admin.expect(201, "POST", "/api/tokens", { name: "monitoring", role: "viewer" }) as {
      token: string;
    };
    assert.match(made.token, /^ctm_[A-Za-z0-9_-]{43}$/);
    secrets.push(made.token);
    const list = await admin.expect(200, "GET", "/api/tokens") as { name: string; token?: string }[];
    assert.ok(list.some((x) => x.name === "monitoring"));
    assert.ok(list.every((x) => x.token === undefined), "the value is never listed again");
    const mon = new WebClient(gw.url, { token: made.token });
    await mon.expect(200, "GET", "/api/status");
    await mon.expect(200, "GET", "/metrics");
    assert.is((await mon.req("POST", "/api/sites", { name: "nope", role: "local" })).status, 403);
    const ops = await admin.expect(201, "POST", "/api/tokens", { name: "ops", role: "admin" }) as {
      token: string;
    };
    secrets.push(ops.token);
    const bot = new WebClient(gw.url, { token: ops.token });
    await bot.expect(201, "POST", "/api/sites", { name: "dr1", role: "remote" });
    assert.is((await admin.req("POST", "/api/tokens", { name: "api-token", role: "admin" })).status, 400);
    const stream = await fetch(`${gw.url}/api/events?filter=status`, {
      headers: { authorization: `Bearer ${made.token}` },
    });
    assert.is(stream.status, 200);
    await admin.expect(200, "DELETE", "/api/tokens/monitoring");
    assert.is((await mon.req("GET", "/api/status")).status, 401, "a deleted token is dead at once");
    // and its open event stream ends (at the next event)
    const ended = (async () => {
      for await (const _ of stream.body!) { /* drain */ }
      return true;
    })();
    const timeout = new Promise((r) => setTimeout(() => r(false), 10_000));
    assert.ok(await Promise.race([ended, timeout]), "the deleted token's event stream ended");
    // the DATA-DIR/api-token file (other tests and ctl use it)
    const file = new WebClient(gw.url, { token: gw.token });
    assert.is((await file.expect(200, "GET", "/api/session") as { user: string }).user, "api-token");
    await file.expect(200, "GET", "/api/status");
  },
);

t("device paths cannot leave the allowed device list", async () => {
  await admin.expect(201, "POST", "/api/hosts", { name: "app1", site: "prod", role: "application" });
  const bad: [string, RegExp][] = [
    ["/dev/../etc/shadow", /'\.\.' segment/],
    ["/dev/sda/../../etc/passwd", /'\.\.' segment/],
    ["/etc/shadow", /outside the allowed device list/],
    ["/devices/sda", /outside the allowed device list/],
    ["/dev", /outside the allowed device list/],
    ["/dev/", /outside the allowed device list|normalised/],
    ["dev/sda", /absolute path/],
    ["../dev/sda", /absolute path/],
    ["/dev/./sda", /normalised/],
    ["/dev//sda", /normalised/],
    ["/dev/sda\n", /control characters/],
    ["/dev/sda\u0000", /control characters/],
    ["/" + "a".repeat(5000), /at most 4096/],
  ];
  for (const [device, why] of bad) {
    const a = await admin.req("POST", "/api/volumes", { name: "v1", host: "app1", device, size: 1048576 });
    assert.is(a.status, 400, `${JSON.stringify(device)}: ${a.status} ${a.text}`);
    const b = a.body as { error: string; issues: { path: string; message: string }[] };
    assert.match(b.error, /^device: /, JSON.stringify(device));
    assert.match(b.error, why, `${JSON.stringify(device)}: ${b.error}`);
    assert.is(b.issues[0].path, "device");
  }
  await admin.expect(201, "POST", "/api/volumes", {
    name: "v1",
    host: "app1",
    device: "/dev/vg0/lsp",
    size: 1048576,
  });
  // nor through a PUT, a task's group, or a name in the URL
  const put = await admin.req("PUT", "/api/volumes/v1", {
    host: "app1",
    device: "/dev/../root/x",
    size: 1048576,
  });
  assert.is(put.status, 400);
  const task = await admin.req("POST", "/api/tasks", {
    name: "t1",
    group: {
      local: {
        site: "prod",
        lsp: { host: "app1", device: "/dev/vg0/../../etc/shadow" },
        lgp: { host: "app1", device: "/dev/b" },
        buffer: { host: "app1", device: "/dev/c" },
      },
      remotes: [{
        site: "dr1",
        rgp: { host: "app1", device: "/dev/d" },
        rsp: { host: "app1", device: "/dev/e" },
      }],
    },
  });
  assert.is(task.status, 400);
  assert.match(
    (task.body as { error: string }).error,
    /group\.local\.lsp\.device: must not contain a '\.\.' segment/,
  );
  for (const path of ["/api/volumes/..%2F..%2Fetc%2Fpasswd", "/api/volumes/%2E%2E", "/api/hosts/a%00b"]) {
    const a = await admin.req("GET", path);
    assert.ok(a.status === 400 || a.status === 404, `${path}: ${a.status}`);
    assert.not.match(a.text, /root:/);
  }
  const rec = await admin.req("POST", "/api/recoveries", { volume: "a1/../../etc", mode: "policy" });
  assert.is(rec.status, 400);
});

t("bad bodies: 400 (or 413/415) JSON whose message names the field", async () => {
  const cases: [unknown, string | undefined, number, RegExp][] = [
    ["{not json", "application/json", 400, /^body: not valid JSON/],
    ["", "application/json", 400, /^body: a JSON object is required/],
    ['{"name":"s","role":"local"}', "text/plain", 415, /Content-Type: application\/json/],
    [[1, 2], undefined, 400, /^body: /],
    [{ name: "s" }, undefined, 400, /^role: is required/],
    [{ name: 5, role: "local" }, undefined, 400, /^name: must be a string/],
    [{ name: "a b", role: "local" }, undefined, 400, /^name: must be 1 to 64 characters/],
    [{ name: "s", role: "moon" }, undefined, 400, /^role: must be "local" or "remote"/],
    [{ name: "s", role: "local", admin: true }, undefined, 400, /unknown field\(s\): admin/],
  ];
  for (const [body, type, status, msg] of cases) {
    const a = await admin.req("POST", "/api/sites", body, type ? { "content-type": type } : {});
    assert.is(a.status, status, `${JSON.stringify(body)}: ${a.text}`);
    assert.match((a.body as { error: string }).error, msg, `${JSON.stringify(body)}: ${a.text}`);
  }
  const v = await admin.req("POST", "/api/volumes", {
    name: "v2",
    host: "app1",
    device: "/dev/x",
    size: 1000,
  });
  assert.is(v.status, 400);
  assert.match((v.body as { error: string }).error, /^size: must be a multiple of 512 bytes/);
  const big = await admin.req("POST", "/api/sites", {
    name: "s",
    role: "local",
    description: "x".repeat(2 << 20),
  });
  assert.is(big.status, 413);
  // the same without a declared length (chunked): refused as it streams in, not read whole
  const chunk = new TextEncoder().encode("x".repeat(64 * 1024));
  let sent = 0;
  const streamed = await fetch(`${gw.url}/api/sites`, {
    method: "POST",
    headers: { "content-type": "application/json", cookie: admin.cookie!, "x-csrf-token": admin.csrf! },
    body: new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent >= 4 << 20) return c.close();
        sent += chunk.length;
        c.enqueue(chunk);
      },
    }),
  });
  assert.is(streamed.status, 413);
  assert.match((await streamed.json()).error, /too large/);
  const action = await admin.req("POST", "/api/tasks/x1/actions/recover", { mode: "manual" });
  assert.is(action.status, 400);
  assert.match((action.body as { error: string }).error, /^source: is required in manual mode/);
  const user = await admin.req("POST", "/api/users", { name: "u2", password: "short", role: "viewer" });
  assert.is(user.status, 400);
  assert.match((user.body as { error: string }).error, /^password: must be at least 10 characters/);
});

t("HTTPS with a given certificate: the cookie is Secure, HSTS is set", async () => {
  const dir = await tempDir("web-tls");
  const pem = await selfSignedCert(dir);
  const tls = new WebGateway({ dir, tls: pem });
  await tls.start();
  const client = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(pem.cert)] });
  try {
    assert.match(tls.url, /^https:/);
    const c = new WebClient(tls.url, { client });
    const a = await c.login("admin", ADMIN_PASSWORD);
    secrets.push(c.cookie!.split("=")[1], c.csrf!);
    const cookie = a.headers.get("set-cookie")!;
    for (const attr of [/; HttpOnly(;|$)/, /; SameSite=Strict(;|$)/, /; Max-Age=\d+(;|$)/, /; Secure(;|$)/]) {
      assert.match(cookie, attr);
    }
    assert.match(a.headers.get("strict-transport-security") ?? "", /max-age=/);
    await c.expect(200, "GET", "/api/status");
    // plain HTTP to the TLS port gets nothing
    const plain = await fetch(`http://127.0.0.1:${tls.port}/api/status`).then(
      (r) => r.status,
      () => "refused",
    );
    assert.is.not(plain, 200);
    assert.not.ok(tls.stderr.includes(c.cookie!.split("=")[1]));
  } finally {
    client.close();
    await tls.stop();
  }
  // a key others can read is refused
  await Deno.chmod(pem.key, 0o644);
  assert.throws(() => readTls({ certFile: pem.cert, keyFile: pem.key }), /readable by group or others/);
});

t("no default password: a one-time setup link, used once, that expires", async () => {
  const fresh = new WebGateway({ adminPassword: false });
  await fresh.start();
  try {
    const link = fresh.setupUrl();
    assert.ok(link, `a setup-url= line on stdout: ${fresh.stdout}`);
    const m = /^http:\/\/127\.0\.0\.1:\d+\/setup#([A-Za-z0-9_-]{43})$/.exec(link!);
    assert.ok(m, link);
    const token = m![1];
    secrets.push(token);
    assert.not.ok(fresh.stderr.includes(token), "the setup token is not in the log");
    assert.is(fresh.stdout.split(token).length, 2, "printed once");
    const c = new WebClient(fresh.url);
    for (const [name, password] of [["admin", "admin"], ["admin", "password"], ["admin", "continuum"]]) {
      assert.is((await c.req("POST", "/api/login", { name, password })).status, 401, `${name}/${password}`);
    }
    assert.is((await c.req("GET", "/api/users")).status, 401);
    assert.is(
      (await c.req("POST", "/api/setup", { token: "A".repeat(43), password: "a good password" })).status,
      403,
    );
    const weak = await c.req("POST", "/api/setup", { token, password: "short" });
    assert.is(weak.status, 400, "a weak password does not use the link up");
    assert.match((weak.body as { error: string }).error, /^password: /);
    const ok = await c.req("POST", "/api/setup", { token, name: "boss", password: "a good password" });
    assert.is(ok.status, 201, ok.text);
    assert.match(ok.headers.get("set-cookie")!, /; HttpOnly(;|$)/);
    assert.match(ok.headers.get("set-cookie")!, /; SameSite=Strict(;|$)/);
    secrets.push("a good password");
    const again = await new WebClient(fresh.url).req("POST", "/api/setup", {
      token,
      password: "another password",
    });
    assert.is(again.status, 409, again.text);
    await new WebClient(fresh.url).login("boss", "a good password");
  } finally {
    await fresh.stop();
  }
  assert.not.ok(fresh.stderr.includes("a good password"));

  // expiry: a gateway's web server with a 300 ms link
  const dir = await tempDir("web-setup");
  const { db, close } = await openDatabase(`file:${dir}/web.db`);
  const lines: string[] = [], logged: string[] = [];
  setLogSink((l) => logged.push(l));
  const server = await startWebServer({
    listen: { transport: "tcp", hostname: "127.0.0.1", port: 0 },
    db,
    status: () => gatewayStatus(),
    actions: refusing,
    setupTtlMs: 300,
    printSetup: (l) => lines.push(l),
  });
  try {
    const token = /#(.+)$/.exec(lines[0])![1];
    await new Promise((r) => setTimeout(r, 500));
    const late = await new WebClient(server.url).req("POST", "/api/setup", {
      token,
      password: "a good password",
    });
    assert.is(late.status, 410);
    assert.match((late.body as { error: string }).error, /expired/);
    const after = await new WebClient(server.url).req("POST", "/api/setup", {
      token,
      password: "a good password",
    });
    assert.is(after.status, 410, "and stays dead");
    assert.ok(logged.some((l) => l.includes("no user yet")));
    assert.not.ok(logged.some((l) => l.includes(token)), "the token is not in the log");
  } finally {
    await server.close();
    close();
  }
});

t("failed logins are rate-limited per address and per user", async () => {
  const c = new WebClient(gw.url);
  let last;
  for (let i = 0; i < 6; i++) {
    last = await c.req("POST", "/api/login", { name: "watcher", password: `guess number ${i}` });
    if (last.status === 429) break;
    assert.is(last.status, 401);
  }
  assert.is(last!.status, 429);
  assert.match((last!.body as { error: string }).error, /too many failed logins: try again in \d+ s/);
  assert.ok(Number(last!.headers.get("retry-after")) >= 1);
  // even the right password waits now
  const right = await c.req("POST", "/api/login", { name: "admin", password: ADMIN_PASSWORD });
  assert.is(right.status, 429);
  const metrics = await new WebClient(gw.url, { token: gw.token }).req("GET", "/metrics");
  assert.match(metrics.text, /^continuum_web_login_failures_total [1-9]\d*$/m);
});

t("the state holding passwords, sessions and tokens is the owner's alone", async () => {
  const mode = async (p: string) => (await Deno.stat(p)).mode! & 0o777;
  assert.is(await mode(`${gw.dir}/gateway`), 0o700);
  for (const f of ["gateway.db", "api-token"]) {
    assert.is(await mode(`${gw.dir}/gateway/${f}`) & 0o077, 0, `${f} is not readable by others`);
  }
});

t("no secret reaches the gateways' logs", () => {
  assert.ok(gw.stderr.includes('"failed login"'), "the log is being written");
  for (const s of secrets) {
    assert.ok(s.length >= 10);
    assert.not.ok(gw.stderr.includes(s), `a secret (${s.slice(0, 4)}…) is in the log`);
    assert.not.ok(gw.stdout.includes(s), `a secret (${s.slice(0, 4)}…) is on stdout`);
  }
});

/** Task actions for a web server without a gateway behind it. */
const refusing = new Proxy({}, {
  get: () => () => Promise.reject(new ActionError("not here", 503)),
}) as TaskActions;

t.run();
