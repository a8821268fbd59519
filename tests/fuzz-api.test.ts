// Fuzzing the web API's request bodies (fast-check): random JSON values, mutations of
// valid bodies and raw bytes, sent to every route that takes a body, as an admin.
// Property: the server never answers 5xx, every refusal is JSON with a message, and
// it keeps serving. A planted bug (a route that trusts its body) shows the property
// can fail.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import fc from "fast-check";
import { Hono } from "hono";
import { tempDir } from "./lib/cluster.ts";
import { openDatabase } from "../src/db/db.ts";
import { setLogSink } from "../src/log.ts";
import { startWebServer, type WebServer } from "../src/web/web-server.ts";
import { ActionError, type TaskActions } from "../src/tasks/actions.ts";
import { gatewayStatus } from "./lib/status.ts";

const t = suite("fuzz: API bodies");
const RUNS = Number(Deno.env.get("FUZZ_RUNS") ?? 150);
const TOKEN = "file-token-for-fuzzing-0123456789";

const refuse = () => Promise.reject(new ActionError("refused by the fuzz stand-in", 409));
const actions: TaskActions = {
  start: refuse,
  pause: refuse,
  resume: refuse,
  failoverTest: refuse,
  endFailoverTest: refuse,
  failover: refuse,
  failback: refuse,
  recoveryCandidates: () => Promise.resolve({ candidates: [], chosen: null, explanation: "none" }),
  recover: refuse,
  schedule: refuse,
  listSchedules: () => Promise.resolve([]),
  cancelSchedule: () => Promise.resolve(),
};

/** Routes taking a body, with a valid body to mutate (the inventory they refer to may not exist). */
const ROUTES: [string, string, Record<string, unknown>][] = [
  ["POST", "/api/sites", { name: "dr9", role: "remote" }],
  ["POST", "/api/hosts", { name: "h9", site: "dr9", address: "10.0.0.9", agent: "a9" }],
  ["POST", "/api/volumes", { name: "v9", host: "h9", device: "/dev/sdz", size: 1048576 }],
  ["POST", "/api/tasks", {
    name: "t9",
    group: { local: { site: "prod", lsp: { host: "h9", device: "/dev/sdz" } }, remotes: [] },
    mirror: {},
    recovery: {},
  }],
  ["POST", "/api/tasks/t9/actions/recover", { strategy: "fast", mode: "policy", point: { seq: 1 } }],
  ["POST", "/api/tasks/t9/schedules", { action: "recover", at: Date.now() + 60_000 }],
  ["POST", "/api/users", { name: "u9", password: "a long enough password", role: "viewer" }],
  ["POST", "/api/tokens", { name: "automation", role: "viewer" }],
  ["PUT", "/api/tasks/t9", { description: "x" }],
  ["PUT", "/api/users/u9", { role: "admin" }],
  ["POST", "/api/session/password", { current: "a long admin password", password: "another long password" }],
  ["POST", "/api/setup", { token: "x", password: "a long enough password" }],
  ["POST", "/api/login", { user: "admin", password: "wrong" }],
];

function mutate(valid: Record<string, unknown>) {
  const keys = Object.keys(valid);
  return fc.oneof(
    fc.jsonValue(),
    fc.record({ k: fc.constantFrom(...keys), v: fc.jsonValue() }).map(({ k, v }) => ({ ...valid, [k]: v })),
    fc.constantFrom(...keys).map((k) => {
      const copy = { ...valid };
      delete copy[k];
      return copy;
    }),
    fc.string({ maxLength: 200 }),
  );
}

async function send(base: string, method: string, path: string, body: unknown, raw = false) {
  const r = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
    body: raw ? body as string : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, text };
}

/** The property over one server: no 5xx, refusals are JSON with an error message. */
async function property(base: string, routes: typeof ROUTES, runs: number, seed: number): Promise<void> {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 0, max: routes.length - 1 }).chain((i) =>
        fc.tuple(
          fc.constant(i),
          fc.oneof(
            mutate(routes[i][2]).map((b) => ({ b, raw: false })),
            fc.string().map((b) => ({ b, raw: true })),
          ),
        )
      ),
      async ([i, { b, raw }]) => {
        const [method, path] = routes[i];
        const r = await send(base, method, path, b, raw);
        if (r.status >= 500) throw new Error(`${method} ${path} → ${r.status}: ${r.text.slice(0, 200)}`);
        if (r.status >= 400) {
          const j = JSON.parse(r.text);
          if (typeof j.error !== "string" || j.error.length === 0) {
            throw new Error(`no error message: ${r.text}`);
          }
        }
      },
    ),
    { numRuns: runs, seed },
  );
}

let server: WebServer;

t.before(async () => {
  setLogSink(() => {});
  const dir = await tempDir("fuzz-api");
  const { db } = await openDatabase(`file:${dir}/web.db`);
  await Deno.writeTextFile(`${dir}/pw`, "a long admin password\n", { mode: 0o600 });
  server = await startWebServer({
    listen: { transport: "tcp", hostname: "127.0.0.1", port: 0 },
    db,
    fileToken: TOKEN,
    adminPasswordFile: `${dir}/pw`,
    status: () => gatewayStatus(),
    actions,
    loginLimit: { max: 1_000_000, windowMs: 60_000 },
  });
});

t.after(async () => {
  await server.close();
});

t("random and mutated bodies on every route: never 5xx, every refusal says what is wrong", async () => {
  await property(server.url, ROUTES, RUNS, 20261124);
  const r = await send(server.url, "GET", "/api/status", undefined);
  assert.is(r.status, 200, "still serving");
});

t("planted bug: a route that trusts its body is caught", async () => {
  const app = new Hono();
  app.post("/api/planted", async (c) => {
    const b = await c.req.json();
    return c.json({ length: b.name.length }); // throws on a body without a string name
  });
  app.onError((e, c) => c.json({ error: `internal error: ${e.message}` }, 500));
  const s = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  try {
    const base = `http://127.0.0.1:${s.addr.port}`;
    const failed = await property(base, [["POST", "/api/planted", { name: "x" }]], 200, 7).then(
      () => false,
      () => true,
    );
    assert.ok(failed, "the fuzzer found the planted bug");
  } finally {
    await s.shutdown();
  }
});

t.run();
