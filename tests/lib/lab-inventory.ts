// The failover lab's inventory, registered through the API: a local site "prod" with the
// application host app1 (agent app1) and its gateway lgw, a remote site "dr1" with its gateway
// rgw and the standby server, and the lab's five copies of vol0 as volumes. Returns a task group
// over them (the gateway must allow the lab's files: --device-prefix). What the gateway discovered
// by itself meanwhile (the linked site, the agents that connected, their devices) is taken as is.
import type { FailoverLab } from "./failover-lab.ts";
import type { WebClient } from "./browser.ts";
import type { Group } from "../../src/tasks/model.ts";

const MiB = 1024 * 1024;

/** The slots of the group and their device: LSP, LGP, buffer, RGP and RSP at dr1. */
export function labDevices(lab: FailoverLab): Record<"lsp" | "lgp" | "buffer" | "rgp" | "rsp", string> {
  return {
    lsp: lab.lsp,
    lgp: `${lab.dir}/gateway/mirrors/app1/vol0.img`,
    buffer: `${lab.dir}/gateway/journal.ring`,
    rgp: `${lab.dir}/remote/replicas/app1/vol0.img`,
    rsp: lab.rsp,
  };
}

/** Creates an inventory item unless it exists already (e.g. discovered). */
async function ensure(c: WebClient, path: string, body: Record<string, unknown>): Promise<void> {
  const r = await c.req("POST", path, body);
  if (r.status !== 201 && !(r.status === 409 && /exists already/.test(JSON.stringify(r.body)))) {
    throw new Error(
      `POST ${path}: expected 201 (or 409 for a discovered item), got ${r.status} ${JSON.stringify(r.body)}`,
    );
  }
}

export async function registerLabInventory(lab: FailoverLab, c: WebClient): Promise<Group> {
  await ensure(c, "/api/sites", { name: "prod", role: "local" });
  await ensure(c, "/api/sites", { name: "dr1", role: "remote" });
  const hosts = [["app1", "prod", "application"], ["lgw", "prod", "gateway"], ["rgw", "dr1", "gateway"], [
    "standby",
    "dr1",
    "application",
  ]];
  for (const [name, site, role] of hosts) await ensure(c, "/api/hosts", { name, site, role });
  const d = labDevices(lab);
  for (
    const [name, host, device, size] of [
      ["vol0", "app1", d.lsp, 16 * MiB],
      ["lgp0", "lgw", d.lgp, 16 * MiB],
      ["buf0", "lgw", d.buffer, 128 * MiB],
      ["rgp0", "rgw", d.rgp, 16 * MiB],
      ["rsp0", "standby", d.rsp, 16 * MiB],
    ] as const
  ) await ensure(c, "/api/volumes", { name, host, device, size });
  return {
    local: {
      site: "prod",
      lsp: { host: "app1", device: d.lsp },
      lgp: { host: "lgw", device: d.lgp },
      buffer: { host: "lgw", device: d.buffer },
    },
    remotes: [{ site: "dr1", rgp: { host: "rgw", device: d.rgp }, rsp: { host: "standby", device: d.rsp } }],
  };
}
