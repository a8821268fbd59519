// The inventory the loopback topologies of the tests share, registered through the API: a
// local site "prod" with the application host app1 (agent a1) and the gateway lgw, and a
// remote site "dr1" with the gateway rgw and the standby server. The gateway discovers its
// --remote sites by itself, so a site may be there already (with the same role). A second remote
// site "dr2" has the gateway rgw2 and the standby2 server.
import * as assert from "uvu/assert";
import type { WebClient } from "./browser.ts";

/** Registers a site, or finds it registered (discovered) with this role. */
export async function ensureSite(c: WebClient, name: string, role: "local" | "remote"): Promise<void> {
  const a = await c.req("POST", "/api/sites", { name, role });
  if (a.status === 201) return;
  assert.is(a.status, 409, `POST /api/sites ${name}: ${a.text}`);
  assert.is((await c.expect(200, "GET", `/api/sites/${name}`) as { role: string }).role, role);
}

/**
 * Registers a device as a volume, or finds it registered: the gateway registers the copies it
 * discovers by itself (a site's replica once the site announced it), under the name discovery
 * gave it, and such a device is taken as it is.
 */
export async function ensureVolume(
  c: WebClient,
  name: string,
  host: string,
  device: string,
  size: number,
): Promise<void> {
  const r = await c.req("POST", "/api/volumes", { name, host, device, size });
  if (r.status === 201) return;
  assert.is(r.status, 409, `POST /api/volumes ${name}: ${r.text}`);
  assert.match((r.body as { error: string }).error, new RegExp(`^device: ${host}:.* is already volume "`));
}

export async function registerSitesAndHosts(c: WebClient): Promise<void> {
  await ensureSite(c, "prod", "local");
  await ensureSite(c, "dr1", "remote");
  await c.expect(201, "POST", "/api/hosts", { name: "app1", site: "prod", role: "application", agent: "a1" });
  await c.expect(201, "POST", "/api/hosts", { name: "lgw", site: "prod", role: "gateway" });
  await c.expect(201, "POST", "/api/hosts", { name: "rgw", site: "dr1", role: "gateway" });
  await c.expect(201, "POST", "/api/hosts", { name: "standby", site: "dr1", role: "application" });
}

/** The hosts of a remote site of the tests' topologies: dr1's rgw and standby, dr2's rgw2 and standby2. */
function siteHosts(site: string): { rgw: string; standby: string } {
  const n = site === "dr1" ? "" : site.replace(/^dr/, "");
  return { rgw: `rgw${n}`, standby: `standby${n}` };
}

/**
 * Registers a topology's copies as volumes (vol0, lgp0, buf0, and an RGP and RSP per site) and
 * creates task "db" over them (not started).
 */
export async function registerDbTask(
  c: WebClient,
  topo: { dir: string; copies(): Record<string, string> },
  size: number,
  o: { sites?: string[]; mirror?: Record<string, unknown> } = {},
): Promise<void> {
  const sites = o.sites ?? ["dr1"];
  await registerSitesAndHosts(c);
  for (const site of sites.filter((s) => s !== "dr1")) {
    const h = siteHosts(site);
    await ensureSite(c, site, "remote");
    await c.expect(201, "POST", "/api/hosts", { name: h.rgw, site, role: "gateway" });
    await c.expect(201, "POST", "/api/hosts", { name: h.standby, site, role: "application" });
  }
  const files = topo.copies();
  const ring = `${topo.dir}/gateway/journal.ring`;
  const volumes: [string, string, string, number][] = [
    ["vol0", "app1", files.lsp, size],
    ["lgp0", "lgw", files.lgp, size],
    ["buf0", "lgw", ring, 256 * 1024 * 1024],
    ...sites.flatMap((site, i): [string, string, string, number][] => [
      [`rgp${i}`, siteHosts(site).rgw, files[`rgp-${site}`], size],
      [`rsp${i}`, siteHosts(site).standby, files[`rsp-${site}`], size],
    ]),
  ];
  for (const [name, host, device, sz] of volumes) await ensureVolume(c, name, host, device, sz);
  await c.expect(201, "POST", "/api/tasks", {
    name: "db",
    group: {
      local: {
        site: "prod",
        lsp: { host: "app1", device: files.lsp },
        lgp: { host: "lgw", device: files.lgp },
        buffer: { host: "lgw", device: ring },
      },
      remotes: sites.map((site) => ({
        site,
        rgp: { host: siteHosts(site).rgw, device: files[`rgp-${site}`] },
        rsp: { host: siteHosts(site).standby, device: files[`rsp-${site}`] },
      })),
    },
    ...(o.mirror ? { mirror: o.mirror } : {}),
  });
}
