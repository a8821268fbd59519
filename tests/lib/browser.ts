// Web tests' helpers: a local gateway started for the web layer (stdout and stderr kept apart,
// so the JSON log on stderr can be scanned for secrets), an HTTP client with a cookie jar and
// the session's CSRF token, a self-signed certificate, and headless Chromium through
// playwright-core.
import { freePort, mainTs, tempDir, terminate, testRing, waitFor } from "./cluster.ts";
import { inCI, which } from "./env.ts";
import type { Page } from "playwright-core";

export const ADMIN_PASSWORD = "correct horse battery staple";

export interface WebGatewayOptions {
  dir?: string;
  /** Create the user admin from a password file (default), or print a setup link (false). */
  adminPassword?: string | false;
  tls?: { cert: string; key: string };
  extra?: string[];
}

/** A local gateway without agents, for the web layer: its stdout and stderr are kept apart. */
export class WebGateway {
  dir = "";
  port = 0;
  stdout = "";
  stderr = "";
  token = "";
  private child?: Deno.ChildProcess;
  private done?: Promise<unknown>;

  constructor(readonly o: WebGatewayOptions = {}) {}

  get url(): string {
    return `${this.o.tls ? "https" : "http"}://127.0.0.1:${this.port}`;
  }

  async start(): Promise<this> {
    this.dir ||= this.o.dir ?? await tempDir("web");
    this.port ||= freePort();
    const args = [
      "run",
      "-A",
      mainTs,
      "--role",
      "local-gateway",
      "--data-dir",
      `${this.dir}/gateway`,
      "--agent-listen",
      `unix:${this.dir}/gw.sock`,
      "--http-listen",
      `127.0.0.1:${this.port}`,
      "--heartbeat-listen",
      "127.0.0.1:0",
      ...testRing("80M"),
      ...(this.o.tls ? ["--tls-cert", this.o.tls.cert, "--tls-key", this.o.tls.key] : []),
      ...(this.o.extra ?? []),
    ];
    if (this.o.adminPassword !== false) {
      const file = `${this.dir}/admin.password`;
      await Deno.writeTextFile(file, `${this.o.adminPassword ?? ADMIN_PASSWORD}\n`, { mode: 0o600 });
      args.push("--admin-password-file", file);
    }
    this.child = new Deno.Command(Deno.execPath(), {
      args,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const pump = async (s: ReadableStream<Uint8Array>, which: "stdout" | "stderr") => {
      const dec = new TextDecoder();
      const file = await Deno.open(`${this.dir}/gateway.${which}`, { create: true, append: true });
      for await (const chunk of s) {
        this[which] += dec.decode(chunk, { stream: true });
        await file.write(chunk);
      }
      file.close();
    };
    this.done = Promise.all([pump(this.child.stdout, "stdout"), pump(this.child.stderr, "stderr")]);
    let exited = false;
    this.child.status.then(() => exited = true);
    await waitFor(
      () => {
        if (exited) throw new Error(`the gateway exited: ${this.stderr.slice(-2000)}`);
        return this.stderr.includes('"local gateway ready"');
      },
      30_000,
      "the gateway to start",
    );
    this.token = (await Deno.readTextFile(`${this.dir}/gateway/api-token`)).trim();
    return this;
  }

  /** The setup link printed on stdout (first start without a password file). */
  setupUrl(): string | undefined {
    return /^setup-url=(\S+)$/m.exec(this.stdout)?.[1];
  }

  async stop(): Promise<void> {
    if (!this.child) return;
    await terminate(this.child);
    await this.done;
    this.child = undefined;
  }
}

export interface Answer {
  status: number;
  headers: Headers;
  body: unknown;
  text: string;
}

/** A client of the web API: keeps the session cookie and its CSRF token, or sends a bearer token. */
export class WebClient {
  cookie?: string;
  csrf?: string;
  setCookie?: string;

  constructor(
    readonly base: string,
    readonly o: { token?: string; client?: Deno.HttpClient } = {},
  ) {}

  async req(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<Answer> {
    const h: Record<string, string> = { ...headers };
    if (this.o.token) h.authorization = `Bearer ${this.o.token}`;
    if (this.cookie) h.cookie = this.cookie;
    if (this.csrf && method !== "GET" && !("x-csrf-token" in h)) h["x-csrf-token"] = this.csrf;
    let payload: string | undefined;
    if (body !== undefined) {
      payload = typeof body === "string" ? body : JSON.stringify(body);
      h["content-type"] ??= "application/json";
    }
    const r = await fetch(`${this.base}${path}`, {
      method,
      headers: h,
      body: payload,
      ...(this.o.client ? { client: this.o.client } : {}),
    });
    const text = await r.text();
    let parsed: unknown = undefined;
    try {
      parsed = JSON.parse(text);
    } catch { /* not JSON */ }
    const sc = r.headers.get("set-cookie");
    if (sc) this.setCookie = sc;
    return { status: r.status, headers: r.headers, body: parsed, text };
  }

  /** Logs in; keeps the cookie and CSRF token. Throws unless the answer is 200. */
  async login(name: string, password: string): Promise<Answer> {
    const a = await this.req("POST", "/api/login", { name, password });
    if (a.status !== 200) throw new Error(`login as ${name}: ${a.status} ${a.text}`);
    this.cookie = a.headers.get("set-cookie")!.split(";")[0];
    this.csrf = (a.body as { csrf: string }).csrf;
    return a;
  }

  /** A request that must answer `status`; returns the body. */
  async expect(status: number, method: string, path: string, body?: unknown): Promise<unknown> {
    const a = await this.req(method, path, body);
    if (a.status !== status) {
      throw new Error(`${method} ${path}: expected ${status}, got ${a.status} ${a.text}`);
    }
    return a.body;
  }
}

/** A self-signed certificate for localhost and 127.0.0.1 (openssl), key mode 0600. */
export async function selfSignedCert(dir: string): Promise<{ cert: string; key: string }> {
  const cert = `${dir}/web-cert.pem`, key = `${dir}/web-key.pem`;
  const out = await new Deno.Command("openssl", {
    args: [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      key,
      "-out",
      cert,
      "-days",
      "2",
      "-subj",
      "/CN=localhost",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
      "-addext",
      "basicConstraints=critical,CA:FALSE",
      "-addext",
      "extendedKeyUsage=serverAuth",
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`openssl: ${new TextDecoder().decode(out.stderr)}`);
  await Deno.chmod(key, 0o600);
  return { cert, key };
}

/** Reads one server-sent event stream until `until` returns true for the events seen (or timeout). */
export async function readEvents(
  base: string,
  headers: Record<string, string>,
  path: string,
  until: (events: { id?: string; data: Record<string, unknown> }[]) => boolean,
  timeoutMs = 20_000,
): Promise<{ id?: string; data: Record<string, unknown> }[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  const seen: { id?: string; data: Record<string, unknown> }[] = [];
  try {
    const r = await fetch(`${base}${path}`, { headers, signal: ac.signal });
    if (r.status !== 200) throw new Error(`${path}: ${r.status} ${await r.text()}`);
    if (!r.headers.get("content-type")?.startsWith("text/event-stream")) {
      throw new Error(`${path}: content-type ${r.headers.get("content-type")}`);
    }
    const dec = new TextDecoder();
    let buf = "";
    for await (const chunk of r.body!) {
      buf += dec.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const id = /^id: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (data) seen.push({ id, data: JSON.parse(data) });
      }
      if (until(seen)) return seen;
    }
    throw new Error(`${path}: the stream ended`);
  } catch (e) {
    if (ac.signal.aborted) {
      throw new Error(
        `${path}: timed out after ${timeoutMs} ms; saw ${seen.map((e) => e.data.kind).join(",")}`,
      );
    }
    throw e;
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
}

export const CHROMIUM = "/usr/bin/chromium";

/**
 * Whether the browser tests can run: Chromium installed. Without it they are skipped with the
 * reason printed, unless CI=true, where that is a failure.
 */
export function haveChromium(name: string): boolean {
  let ok = false;
  try {
    ok = Deno.statSync(CHROMIUM).isFile;
  } catch { /* missing */ }
  if (ok) return true;
  const why = `needs ${CHROMIUM} (Debian package chromium)${
    which("apt-get") ? ": apt-get install chromium" : ""
  }`;
  if (inCI) throw new Error(`${name}: ${why} (prerequisites are required when CI=true)`);
  console.log(`\nSKIP ${name}: ${why}`);
  return false;
}

/** Headless Chromium (Debian's) driven by playwright-core. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  return await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
}

/** Logs in as admin on the UI's login page and waits for the dashboard. */
export async function logInAsAdmin(page: Page, base: string): Promise<void> {
  await page.goto(`${base}/login`);
  await page.getByLabel("User name").fill("admin");
  await page.getByLabel("Password").fill(ADMIN_PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
}

/** A browser test's failure: a screenshot of the page (if any) and the page's problems, with the error. */
export async function failureWithScreenshot(
  e: unknown,
  page: { screenshot(o: { path: string; fullPage: boolean }): Promise<unknown> } | undefined,
  out: string,
  problems: string[],
): Promise<Error> {
  await page?.screenshot({ path: `${out}/failure.png`, fullPage: true }).catch(() => {}); // best effort
  return new Error(
    `${(e as Error).message}\n(screenshot ${out}/failure.png)${
      problems.length ? `\n${problems.join("\n")}` : ""
    }`,
  );
}
