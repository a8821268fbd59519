// The inventory the loopback topologies of the tests share, registered through the API: a
// local site "prod" with the application host app1 (agent a1) and the gateway lgw, and a
// remote site "dr1" with the gateway rgw and the standby server.
import type { WebClient } from "./browser.ts";

export async function registerSitesAndHosts(c: WebClient): Promise<void> {
  await c.expect(201, "POST", "/api/sites", { name: "prod", role: "local" });
  await c.expect(201, "POST", "/api/sites", { name: "dr1", role: "remote" });
  await c.expect(201, "POST", "/api/hosts", { name: "app1", site: "prod", role: "application", agent: "a1" });
  await c.expect(201, "POST", "/api/hosts", { name: "lgw", site: "prod", role: "gateway" });
  await c.expect(201, "POST", "/api/hosts", { name: "rgw", site: "dr1", role: "gateway" });
  await c.expect(201, "POST", "/api/hosts", { name: "standby", site: "dr1", role: "application" });
}
