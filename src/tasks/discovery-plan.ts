// What the gateway found by itself, as changes to the inventory (pure: no I/O). The discovery
// (discovery.ts) observes sites (its own, its --remote sites), hosts (its own gateway, each
// remote gateway, the server of every agent and standby agent that connects) and their devices
// (an agent's --device-prefix files and block devices; a gateway's journal, mirrors and
// replicas); planDiscovery matches each observed thing with what the inventory holds and says
// what to create and what to mark seen. Matching never renames or moves what an operator
// registered: an observed host is the registered host of the same site, role and agent id,
// a device is the registered volume of the same host and path.
import { NAME_RE } from "../names.ts";
import { type Host, type Site, type Task, type Volume, volumeSchema } from "./model.ts";

export interface ObservedDevice {
  path: string;
  size: number;
  /** The volume name to register it under when it is new (made unique if taken). */
  name: string;
}

export interface ObservedHost {
  site: string;
  role: Host["role"];
  /** An application host's agent id. */
  agent?: string;
  /** Seen now: reachable (a gateway) or connected (an agent). */
  seen: boolean;
  devices: ObservedDevice[];
}

export interface Observation {
  sites: { name: string; role: Site["role"]; seen: boolean }[];
  hosts: ObservedHost[];
}

export interface InventoryView {
  sites: (Site & { discovered?: boolean })[];
  hosts: (Host & { discovered?: boolean })[];
  volumes: (Volume & { discovered?: boolean })[];
  tasks: Pick<Task, "name" | "group">[];
}

export type Table = "sites" | "hosts" | "partitions";

export interface DiscoveryPlan {
  sites: Site[];
  hosts: Host[];
  volumes: Volume[];
  /** Things that exist: mark them discovered, and seen now when `seen`. */
  touch: { table: Table; name: string; seen: boolean }[];
  /** Discovered volumes no task uses whose device changed size. */
  resize: { name: string; size: number }[];
  /** What could not be matched, for the discovery's status. */
  conflicts: string[];
}

/** The gateway host of a site: a discovered one first, else the first registered (by name). */
export function gatewayHostOf(hosts: InventoryView["hosts"], site: string): string | undefined {
  const at = hosts.filter((h) => h.site === site && h.role === "gateway")
    .sort((a, b) =>
      Number(b.discovered ?? false) - Number(a.discovered ?? false) || a.name.localeCompare(b.name)
    );
  return at[0]?.name;
}

/** The registered application host of a site that runs `agent` (its agent id, else its name). */
export function agentHostOf(hosts: InventoryView["hosts"], site: string, agent: string): string | undefined {
  return hosts.filter((h) => h.site === site && h.role === "application" && (h.agent ?? h.name) === agent)
    .map((h) => h.name).sort()[0];
}

/** A name the inventory allows: letters, digits, '.', '_', '-', at most 64. */
export function safeName(text: string): string {
  const s = text.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+/, "").slice(0, 64);
  return NAME_RE.test(s) ? s : "device";
}

/** `want`, else `prefix-want`, else with -2, -3… : the first name `taken` does not hold. */
export function uniqueName(want: string, prefix: string, taken: (n: string) => boolean): string {
  for (const base of [safeName(want), safeName(`${prefix}-${want}`)]) if (!taken(base)) return base;
  const base = safeName(`${prefix}-${want}`).slice(0, 60);
  for (let i = 2;; i++) if (!taken(`${base}-${i}`)) return `${base}-${i}`;
}

/** The volume name of a device path: its file name without the extension. */
export function deviceName(path: string): string {
  const file = path.split("/").pop() ?? "";
  return safeName(file.replace(/\.[A-Za-z0-9]{1,8}$/, "") || file);
}

export function planDiscovery(inv: InventoryView, obs: Observation): DiscoveryPlan {
  const plan: DiscoveryPlan = { sites: [], hosts: [], volumes: [], touch: [], resize: [], conflicts: [] };
  const siteNames = new Set(inv.sites.map((s) => s.name));
  const hosts = [...inv.hosts];
  const volumes = [...inv.volumes];
  const inTask = (host: string, device: string) =>
    inv.tasks.some((t) => {
      const g = t.group;
      const refs = [g.local.lsp, g.local.lgp, g.local.buffer, ...g.remotes.flatMap((r) => [r.rgp, r.rsp])];
      return refs.some((r) => r.host === host && r.device === device);
    });
  const usable = new Set<string>();
  for (const o of obs.sites) {
    const have = inv.sites.find((s) => s.name === o.name);
    if (!have) {
      plan.sites.push({ name: o.name, role: o.role, description: "" });
      siteNames.add(o.name);
      usable.add(o.name);
      if (o.seen) plan.touch.push({ table: "sites", name: o.name, seen: true });
    } else if (have.role !== o.role) {
      plan.conflicts.push(
        `site ${o.name} is registered as a ${have.role} center, but this gateway knows it as a ${o.role} one`,
      );
    } else {
      usable.add(o.name);
      plan.touch.push({ table: "sites", name: o.name, seen: o.seen });
    }
  }
  for (const o of obs.hosts) {
    if (!usable.has(o.site)) continue;
    let name = o.role === "gateway"
      ? gatewayHostOf(hosts, o.site)
      : agentHostOf(hosts, o.site, o.agent ?? "");
    if (name) plan.touch.push({ table: "hosts", name, seen: o.seen });
    else {
      const local = obs.sites.find((s) => s.name === o.site)?.role === "local";
      const want = o.role === "gateway" ? `${o.site}-gateway` : local ? o.agent! : `${o.agent}-${o.site}`;
      name = uniqueName(want, o.site, (n) => hosts.some((h) => h.name === n));
      const h: Host = { name, site: o.site, role: o.role, ...(o.agent ? { agent: o.agent } : {}) };
      plan.hosts.push(h);
      hosts.push({ ...h, discovered: true });
      if (o.seen) plan.touch.push({ table: "hosts", name, seen: true });
    }
    for (const d of o.devices) {
      const have = volumes.find((v) => v.host === name && v.device === d.path);
      if (have) {
        plan.touch.push({ table: "partitions", name: have.name, seen: o.seen });
        if (have.discovered && have.size !== d.size && !inTask(have.host, have.device)) {
          plan.resize.push({ name: have.name, size: d.size });
        }
        continue;
      }
      const v: Volume = {
        name: uniqueName(d.name, name, (n) => volumes.some((x) => x.name === n)),
        host: name,
        device: d.path,
        size: d.size,
      };
      if (!volumeSchema.safeParse(v).success) {
        plan.conflicts.push(
          `${name} reports ${JSON.stringify(d.path)} (${d.size} bytes), which is not a usable device`,
        );
        continue;
      }
      plan.volumes.push(v);
      volumes.push({ ...v, discovered: true });
      if (o.seen) plan.touch.push({ table: "partitions", name: v.name, seen: true });
    }
  }
  return plan;
}
