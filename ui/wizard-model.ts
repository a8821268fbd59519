// The task wizard's model (no rendering): the roles of a group (slots), the partitions each
// may take with why some cannot, the labels of the fields the API's issue paths name, and which
// step shows which field.
import { bytes } from "./format.ts";
import type { Host, PartitionRef, ProposalView, Stored, TaskView, Volume } from "./types.ts";

export const STEPS = ["Centers", "Hosts and devices", "Group", "Strategies", "Review"];

export interface Slot {
  /** lsp, lgp, buffer, rgp@SITE, rsp@SITE */
  key: string;
  /** The API's path of the partition: group.local.lsp, group.remotes.0.rgp, … */
  path: string;
  label: string;
  site: string;
  role: Host["role"];
  /** A data partition: the size of the LSP. */
  data: boolean;
}

export function slotsFor(local: string, remotes: string[]): Slot[] {
  return [
    {
      key: "lsp",
      path: "group.local.lsp",
      label: "LSP — application server's partition",
      site: local,
      role: "application",
      data: true,
    },
    {
      key: "lgp",
      path: "group.local.lgp",
      label: "LGP — local gateway's mirror",
      site: local,
      role: "gateway",
      data: true,
    },
    {
      key: "buffer",
      path: "group.local.buffer",
      label: "Buffer — local gateway's journal",
      site: local,
      role: "gateway",
      data: false,
    },
    ...remotes.flatMap((r, i): Slot[] => [
      {
        key: `rgp@${r}`,
        path: `group.remotes.${i}.rgp`,
        label: `RGP at ${r} — remote gateway's replica`,
        site: r,
        role: "gateway",
        data: true,
      },
      {
        key: `rsp@${r}`,
        path: `group.remotes.${i}.rsp`,
        label: `RSP at ${r} — standby server's partition`,
        site: r,
        role: "application",
        data: true,
      },
    ]),
  ];
}

export const refKey = (r: PartitionRef) => `${r.host}\u0000${r.device}`;

export interface Option {
  key: string;
  host: string;
  device: string;
  size: number;
  label: string;
  /** Why it cannot be chosen (used by another task, another size). */
  disabled?: string;
}

/**
 * The partitions a slot may take: the registered volumes on hosts of its site and role, and the
 * gateways' copies the proposal makes (not registered yet). Those another task uses (a shared
 * buffer aside) or of another size than the LSP (`lspSize`) are listed but cannot be chosen.
 */
export function optionsFor(
  slot: Slot,
  o: {
    hosts: Host[];
    volumes: (Volume & Partial<Stored>)[];
    tasks: TaskView[];
    proposal?: ProposalView;
    lspSize?: number;
  },
): Option[] {
  const host = new Map(o.hosts.map((h) => [h.name, h]));
  const fits = (v: { host: string }) =>
    host.get(v.host)?.site === slot.site && host.get(v.host)?.role === slot.role;
  const usedBy = (v: PartitionRef) =>
    o.tasks.find((t) => {
      const g = t.group;
      const refs = [g.local.lsp, g.local.lgp, ...g.remotes.flatMap((r) => [r.rgp, r.rsp])];
      // the buffer is the gateway's journal, which tasks share
      if (slot.key !== "buffer") refs.push(g.local.buffer);
      return refs.some((r) => r.host === v.host && r.device === v.device);
    })?.name;
  const adopt = slot.data && slot.role === "gateway" ? o.proposal?.adopt ?? [] : [];
  const list = [
    ...o.volumes.filter(fits).map((v) => ({ ...v, made: false, found: v.discovered === true })),
    ...adopt.filter(fits).filter((a) => !o.volumes.some((v) => v.host === a.host && v.device === a.device))
      .map((v) => ({ ...v, made: true, found: true })),
  ];
  return list.map((v) => {
    const used = usedBy(v);
    const otherSize = slot.data && slot.key !== "lsp" && o.lspSize !== undefined && v.size !== o.lspSize;
    return {
      key: refKey(v),
      host: v.host,
      device: v.device,
      size: v.size,
      label: `${v.host}:${v.device} (${bytes(v.size)})${
        v.made ? ", made by the gateway" : v.found ? ", discovered" : ""
      }`,
      disabled: used
        ? `used by task ${used}`
        : otherSize
        ? `${bytes(v.size)}: the LSP has ${bytes(o.lspSize)}`
        : undefined,
    };
  });
}

/** The proposal's partition for each slot. */
export function proposedPicks(p: ProposalView, remotes: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  const set = (k: string, r?: PartitionRef) => r && (out[k] = refKey(r));
  set("lsp", p.group.local.lsp);
  set("lgp", p.group.local.lgp);
  set("buffer", p.group.local.buffer);
  for (const r of p.group.remotes) {
    if (!remotes.includes(r.site)) continue;
    set(`rgp@${r.site}`, r.rgp);
    set(`rsp@${r.site}`, r.rsp);
  }
  return out;
}

/** The labels of the wizard's fields, by the API's issue path. */
export function fieldLabels(slots: Slot[]): Record<string, string> {
  return {
    name: "Task name",
    description: "Description",
    service: "Protected service",
    "group.local.site": "Local center",
    "group.remotes": "Remote centers",
    ...Object.fromEntries(slots.map((s) => [s.path, s.label])),
    "mirror.ackPoint": "Acknowledge a write once it is",
    "mirror.congestion": "When a slow center fills the buffer",
    "mirror.bufferBound": "Buffer bound",
    "mirror.bandwidthLimit": "Bandwidth limit per remote center",
    "mirror.compression": "Compression",
    "mirror.retentionHours": "Keep recovery points for (hours)",
    "mirror.retentionBytes": "Recovery points space per remote center",
    "recovery.strategy": "Strategy",
    "recovery.mode": "Source chosen by",
    "recovery.source": "Default source",
    "recovery.schedule": "Time of day",
  };
}

/** The step whose page shows the field of an issue path. */
export function stepOf(path: string): number {
  if (path.startsWith("group.local.site") || /^group\.remotes(\.\d+\.site)?$/.test(path)) return 0;
  if (path.startsWith("group.")) return 2;
  if (path.startsWith("mirror") || path.startsWith("recovery")) return 3;
  return 4;
}

/** How many partitions a group of `remotes` remote centers has, and which. */
export function partitionsNeeded(remotes: string[]): string {
  const n = 3 + 2 * remotes.length;
  const at = remotes.length ? `, and an RGP and an RSP at ${remotes.join(", ")}` : "";
  return `${n} partitions: the LSP, LGP and buffer at the local center${at}`;
}
