// A proposed group for a task (pure: no I/O): what the wizard pre-selects and what a script
// can create a task with, from the inventory and what the gateways say about themselves.
//   LSP     the given one, else the only application server's device at the local site that
//           no task uses;
//   LGP     the local gateway's mirror of that volume (its --mirror-dir/AGENT/NAME.img);
//   buffer  the local gateway's journal (every task shares it, each within its buffer bound);
//   RGP     each remote gateway's replica of the volume (its --replica-dir/AGENT/NAME.img);
//   RSP     at each remote center, a device of the LSP's size on the standby server of the
//           LSP's agent (a server whose agent id is the same), that no task uses.
// The gateways' copies are registered when the task is created (`adopt`): they exist once the
// volume is protected. A role without a proposal gets a note saying why.
import type { InventoryView } from "./discovery-plan.ts";
import { uniqueName } from "./discovery-plan.ts";
import {
  formatBytes,
  groupPartitions,
  type Issue,
  type PartitionRef,
  sameRef,
  type Volume,
} from "./model.ts";

/** What a gateway says about itself (host: its host in the inventory, when known). */
export interface GatewayView {
  site: string;
  host?: string;
  /** The local gateway's journal (the buffer). */
  journal?: string;
  /** Where the gateway keeps its copy of AGENT/NAME (mirror or replica). */
  copyPath?: (agent: string, name: string) => string;
}

export interface Proposal {
  local: { site: string; lsp?: PartitionRef; lgp?: PartitionRef; buffer?: PartitionRef };
  remotes: { site: string; rgp?: PartitionRef; rsp?: PartitionRef }[];
  /** Proposed partitions not registered yet (the gateways' copies): registered with the task. */
  adopt: Volume[];
  /** Why a role has no proposal, at the role's path (group.local.lsp, group.remotes.0.rsp, …). */
  notes: Issue[];
  /** Every role has a proposal. */
  complete: boolean;
}

export function propose(
  inv: InventoryView,
  req: { local: GatewayView; remotes: GatewayView[]; lsp?: PartitionRef },
): Proposal {
  const notes: Issue[] = [];
  const adopt: Volume[] = [];
  const hostOf = (name: string) => inv.hosts.find((h) => h.name === name);
  const usedRefs = inv.tasks.flatMap((t) => groupPartitions(t.group));
  const free = (v: Volume, asBuffer = false) =>
    !usedRefs.some((p) => sameRef(p.ref, v) && !(asBuffer && p.role === "buffer"));
  const at = (site: string, role: "application" | "gateway") =>
    inv.volumes.filter((v) => {
      const h = hostOf(v.host);
      return h?.site === site && h.role === role;
    });
  const ref = (v: { host: string; device: string }): PartitionRef => ({ host: v.host, device: v.device });
  const out: Proposal = {
    local: { site: req.local.site },
    remotes: req.remotes.map((r) => ({ site: r.site })),
    adopt,
    notes,
    complete: false,
  };

  const apps = at(req.local.site, "application").filter((v) => free(v));
  const lsp = req.lsp
    ? inv.volumes.find((v) => sameRef(v, req.lsp!))
    : apps.length === 1
    ? apps[0]
    : undefined;
  if (!lsp) {
    notes.push({
      path: "group.local.lsp",
      message: req.lsp
        ? `no volume registered on host "${req.lsp.host}" at ${req.lsp.device}`
        : apps.length
        ? `choose one of the ${apps.length} devices of the application servers at ${req.local.site}`
        : `no free device on an application server at ${req.local.site}: start its agent with ` +
          "--device-prefix for the directory of its devices, or register one",
    });
    return out;
  }
  out.local.lsp = ref(lsp);
  const lspHost = hostOf(lsp.host);
  const agent = lspHost?.agent ?? lsp.host;

  /** The gateway's copy of the LSP: registered already, else to adopt; else the only free volume that fits. */
  const copyOf = (gw: GatewayView, path: string, suffix: string): PartitionRef | undefined => {
    if (gw.host && gw.copyPath) {
      const device = gw.copyPath(agent, lsp.name);
      const have = inv.volumes.find((v) => v.host === gw.host && v.device === device);
      if (have) return ref(have);
      const taken = (n: string) => inv.volumes.some((v) => v.name === n) || adopt.some((v) => v.name === n);
      const v = {
        name: uniqueName(`${lsp.name}-${suffix}`, gw.host, taken),
        host: gw.host,
        device,
        size: lsp.size,
      };
      adopt.push(v);
      return ref(v);
    }
    const fits = at(gw.site, "gateway").filter((v) => v.size === lsp.size && free(v));
    if (fits.length === 1) return ref(fits[0]);
    notes.push({
      path,
      message: `the gateway at ${gw.site} is not known yet: register its host and a device of ${
        formatBytes(lsp.size)
      }`,
    });
    return undefined;
  };

  out.local.lgp = copyOf(req.local, "group.local.lgp", "lgp");
  const journal = req.local.host && req.local.journal
    ? inv.volumes.find((v) => v.host === req.local.host && v.device === req.local.journal)
    : undefined;
  const lgp = out.local.lgp;
  const buffers = journal
    ? [journal]
    : at(req.local.site, "gateway").filter((v) => free(v, true) && !(lgp && sameRef(v, lgp)));
  if (buffers.length === 1) out.local.buffer = ref(buffers[0]);
  else {
    notes.push({
      path: "group.local.buffer",
      message: buffers.length
        ? `choose one of the ${buffers.length} gateway devices at ${req.local.site}`
        : `the journal of the gateway at ${req.local.site} is not known yet`,
    });
  }

  req.remotes.forEach((gw, i) => {
    const r = out.remotes[i];
    r.rgp = copyOf(gw, `group.remotes.${i}.rgp`, `rgp-${gw.site}`);
    const fits = at(gw.site, "application").filter((v) => v.size === lsp.size && free(v));
    // the standby of the LSP's agent holds the copy: its own server's devices first
    const mine = fits.filter((v) => {
      const h = hostOf(v.host);
      return (h?.agent ?? h?.name) === agent;
    });
    const pick = (mine.length ? mine : fits).sort((a, b) => a.name.localeCompare(b.name))[0];
    if (pick) r.rsp = ref(pick);
    else {
      notes.push({
        path: `group.remotes.${i}.rsp`,
        message:
          `no free device of ${formatBytes(lsp.size)} on a standby server of ${agent} at ${gw.site}: ` +
          "start the standby agent there with --device-prefix for the directory of such a device",
      });
    }
  });
  out.complete = !!(out.local.lgp && out.local.buffer && out.remotes.every((r) => r.rgp && r.rsp));
  return out;
}
