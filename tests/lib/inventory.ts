// The inventory the loopback topologies of the tests share, registered through the API: a
// local site "prod" with the application host app1 (agent a1) and the gateway lgw, and a
// remote site "dr1" with the gateway rgw and the standby server. The gateway discovers its
// --remote sites by itself, so a site may be there already (with the same role).
import * as assert from "uvu/assert";
import type { WebClient } from "./browser.ts";

/** Registers a site, or finds it registered (discovered) with this role. */
export async function ensureSite(c: WebClient, name: string, role: "local" | "remote"): Promise<void> {
  const a = await c.req("POST", "/api/sites", { name, role });
  if (a.status === 201) return;
  assert.is(a.status, 409, `POST /api/sites ${name}: ${a.text}`);
  assert.is((await c.expect(200, "GET", `/api/sites/${name}`) as { role: string }).role, role);
}

export async function registerSitesAndHosts(c: WebClient): Promise<void> {
  await ensureSite(c, "prod", "local");
  await ensureSite(c, "dr1", "remote");
  await c.expect(201, "POST", "/api/hosts", { name: "app1", site: "prod", role: "application", agent: "a1" });
  await c.expect(201, "POST", "/api/hosts", { name: "lgw", site: "prod", role: "gateway" });
  await c.expect(201, "POST", "/api/hosts", { name: "rgw", site: "dr1", role: "gateway" });
  await c.expect(201, "POST", "/api/hosts", { name: "standby", site: "dr1", role: "application" });
}
