// What a remote site tells its local sites about itself for their inventories (discovery.ts):
// its standby agents (connected or not, and how long ago they were heard from) with the
// devices each may serve, its journal and its replica images. Agents report their devices in a
// control message {type: "devices", devices: [{path, size}]} (src/capture/devices.ts,
// src/wire/control.ts); the remote gateway keeps the last report of each standby agent
// (StandbyDevices) and answers a local site's {type: "inventory"} request with its inventory(),
// which the local site's link checks against the answer's schema (src/wire/control.ts). Times
// travel as ages (ms ago), so the two sites' clocks need not agree.
import { resolve } from "node:path";
import type { DeviceInfo } from "../capture/devices.ts";

/** A journal's ring as a device: its path and the bytes it holds records in (whole sectors). */
export function ringDevice(ring: { path: string; dataSize: number }): DeviceInfo {
  return { path: ring.path, size: ring.dataSize - ring.dataSize % 512 };
}

/** A gateway's images of the journal's volumes (its mirrors or replicas) as devices. */
export function imageDevices(
  volumes: { agent: string; name: string; mirrorPath: string; size: number }[],
): (DeviceInfo & { agent: string; name: string })[] {
  return volumes.map((v) => ({ agent: v.agent, name: v.name, path: v.mirrorPath, size: v.size }));
}

export interface SiteAgent {
  agent: string;
  connected: boolean;
  /** How long ago it was last connected (0 while it is). */
  agoMs: number;
  devices: DeviceInfo[];
}

/** A remote site's answer to {type: "inventory"}. */
export interface SiteInventory {
  site: string;
  journal: DeviceInfo;
  /** Where the site keeps the replica of AGENT/NAME: `${replicaDir}/AGENT/NAME.img`. */
  replicaDir: string;
  replicas: (DeviceInfo & { agent: string; name: string })[];
  agents: SiteAgent[];
}

/** The remote gateway's record of its standby agents' device reports. */
export class StandbyDevices {
  /** Each standby agent's last report, and when it was last connected (monotonic: only ages leave here). */
  private reports = new Map<string, { devices: DeviceInfo[]; lastSeen: number }>();

  /** A standby agent's device report (its `devices` control message). */
  report(agent: string, devices: DeviceInfo[]): void {
    this.reports.set(agent, { devices, lastSeen: performance.now() });
  }

  /** The answer to a local site's inventory request. */
  inventory(o: {
    site: string;
    connected: string[];
    journal: DeviceInfo;
    replicaDir: string;
    replicas: (DeviceInfo & { agent: string; name: string })[];
  }): SiteInventory & { ok: true } {
    const now = performance.now();
    for (const agent of o.connected) {
      const r = this.reports.get(agent);
      if (r) r.lastSeen = now;
      else this.reports.set(agent, { devices: [], lastSeen: now });
    }
    const agents: SiteAgent[] = [...this.reports].map(([agent, r]) => ({
      agent,
      connected: o.connected.includes(agent),
      agoMs: now - r.lastSeen,
      devices: r.devices,
    }));
    // paths as this site's processes see them: a relative --data-dir means nothing elsewhere
    return {
      ok: true,
      site: o.site,
      journal: { ...o.journal, path: resolve(o.journal.path) },
      replicaDir: resolve(o.replicaDir),
      replicas: o.replicas.map((r) => ({ ...r, path: resolve(r.path) })),
      agents,
    } satisfies SiteInventory & { ok: true };
  }
}
