// Recovery of this site's copies (the agents' volumes, LSP, and the mirror, LGP) from any copy:
// the RecoveryService (src/recovery/service.ts) over the copies the local gateway reaches — its
// mirror images, the agents behind their links, and each remote site's replica (RGP) and
// standby (RSP) behind the site's link — with what each copy says of itself, the divergence
// tracked since a failover, and the fences a rebuild needs.
import { eq } from "drizzle-orm";
import { type Db, serialized } from "../db/db.ts";
import { volumes as volumesTable } from "../db/schema.ts";
import type { Audit } from "../audit/audit.ts";
import type { Changes } from "../io/changes.ts";
import type { Journal, VolumeInfo } from "../journal/journal.ts";
import type { GatewayListener } from "../link/gateway-listener.ts";
import { logger } from "../log.ts";
import type { MirrorApplier } from "../mirror/applier.ts";
import type { FailoverController } from "../failover/controller.ts";
import { checkSitePoint } from "../points/points.ts";
import { FileChunks, relinking } from "../recovery/chunk-ops.ts";
import { type Part, union } from "../recovery/divergence.ts";
import { type CopyInfo, type Divergence, RecoveryService, type SourceRef } from "../recovery/service.ts";
import type { RemoteSites } from "./sites.ts";

const log = logger("recovery");

export interface GatewayRecoveryDeps {
  db: Db;
  journal: Journal;
  audit: Audit;
  mirror: MirrorApplier;
  sites: RemoteSites;
  controller: FailoverController;
  listener: GatewayListener;
  /** Notified when an agent or a site connects. */
  linked: Changes;
}

/** The recovery service of this gateway's copies (not started). */
export async function openRecovery(d: GatewayRecoveryDeps): Promise<RecoveryService> {
  const { db, journal, mirror, sites, listener } = d;
  // a mirror left inconsistent by an interrupted recovery stays so across restarts
  const mirrorStates = new Map<number, string>();
  for (const row of await db.select().from(volumesTable)) {
    if (row.state === "inconsistent") mirrorStates.set(row.id, row.state);
  }
  const relinked = (ms: number) => d.linked.next(ms);
  return new RecoveryService({
    db,
    journal,
    audit: d.audit,
    linked: d.linked,
    checkPoint: (site, volume, point) =>
      checkSitePoint((s, msg, ms) => sites.request(s, msg, ms), site, volume, point),
    store: (v, kind, site, writable, point) => {
      const key = `${v.agent}/${v.name}`;
      if (kind === "lgp") return new FileChunks(mirror.imageFd(v.id), v.size, writable === true);
      if (kind === "lsp") {
        if (!listener.chunks(v.agent)) return undefined;
        return relinking(() => listener.store(v.agent, key, "lsp"), relinked);
      }
      return sites.chunks(site, key, kind, point);
    },
    copies: (v) => copies(v, mirror, sites, mirrorStates),
    throughput: (ref) => ref.kind === "lgp" ? 1e9 : sites.throughput(ref.site),
    divergence: (v, source, target, chunkSize) => divergence(d, relinked, v, source, target, chunkSize),
    mirrorCaughtUp: () => mirror.caughtUp(),
    fence: (agent, reason) => d.controller.fence(agent, reason),
    unfence: (agent, cause) => d.controller.unfence(agent, cause),
    isFenced: (agent) => d.controller.isFenced(agent),
    contentReplaced: (v) => sites.contentReplaced(v),
    mirrorState: (v, state) => {
      if (state) {
        mirrorStates.set(v.id, state);
        // the state in memory holds for this run; only a restart would miss a lost write
        serialized(db, () => db.update(volumesTable).set({ state }).where(eq(volumesTable.id, v.id))).catch(
          (e) =>
            log.error("cannot record a mirror's state", { volume: `${v.agent}/${v.name}`, state, error: e }),
        );
      }
      return mirrorStates.get(v.id) ?? "consistent";
    },
  });
}

/** What each copy of a volume says of itself: the mirror here, and every site's replica and standby. */
async function copies(
  v: VolumeInfo,
  mirror: MirrorApplier,
  sites: RemoteSites,
  mirrorStates: Map<number, string>,
): Promise<{ ref: SourceRef; info: CopyInfo | undefined }[]> {
  const out: { ref: SourceRef; info: CopyInfo | undefined }[] = [{
    ref: { kind: "lgp" },
    info: {
      state: mirrorStates.get(v.id) ?? "consistent",
      lastSeq: mirror.applied(v.id),
      lastTime: mirror.appliedAt(v.id),
    },
  }];
  const volume = `${v.agent}/${v.name}`;
  for (const site of sites.names()) {
    // a site that cannot answer has its copies listed as unreachable
    const answer = sites.connected(site)
      ? await sites.request(site, { type: "copies", volume }, 10_000).catch((e) => {
        log.warn("a site did not say what its copies hold", { site, volume, error: e });
        return undefined;
      })
      : undefined;
    const copies = answer?.ok ? answer : undefined;
    out.push({ ref: { kind: "rgp", site }, info: copies?.rgp });
    out.push({ ref: { kind: "rsp", site }, info: copies?.rsp ?? undefined });
  }
  return out;
}

/** The chunks a source and a target may differ in since their common point, or why that is unknown. */
export async function divergence(
  d: GatewayRecoveryDeps,
  relinked: (ms: number) => Promise<void>,
  v: VolumeInfo,
  source: SourceRef,
  target: "lsp" | "lgp",
  chunkSize: number,
): Promise<Divergence> {
  const key = `${v.agent}/${v.name}`;
  // asked on the agent's next link when its link is down: the recovery's fence drops a link
  // that was resending writes, and the agent connects again at once
  const agentMap = async (): Promise<Part> => {
    const m = await relinking(() => d.listener.chunks(v.agent)?.store(key, "lsp"), relinked).divergence!();
    return { what: `the agent's dirty map (since ${m.since})`, chunkSize: m.chunkSize, chunks: m.chunks };
  };
  if (source.kind === "lgp") {
    // the map covers what the agent wrote that the gateway may lack, not damage done to
    // the disk from outside: used only when asked for
    const u = union([await agentMap()], chunkSize);
    return { chunks: u.chunks, known: false, reason: u.reason };
  }
  // failback: what the site wrote since its promotion, and what this site wrote that it never got
  const site = source.site!;
  const rsp = d.sites.chunks(site, key, "rsp");
  if (!rsp) return { known: false, reason: `site ${site} is not connected` };
  let theirs: Part;
  try {
    const m = await rsp.divergence!();
    theirs = { what: `${site}'s writes since ${m.since}`, chunkSize: m.chunkSize, chunks: m.chunks };
  } catch (e) {
    return { known: false, reason: `${site} tracks no divergence: ${(e as Error).message}` };
  }
  const parts = [theirs, ...await d.sites.unreceived(site, v.id, chunkSize)];
  if (target === "lsp") parts.push(await agentMap());
  const u = union(parts, chunkSize);
  // the promotion is the common point only while the service runs there (a failback); later the
  // site's map is that of a past promotion and says nothing of what happened since
  const failedOver = d.controller.status().some((s) =>
    s.agent === v.agent && s.site === site && s.state !== "protected"
  );
  return {
    chunks: u.chunks,
    known: failedOver,
    reason: failedOver ? u.reason : `${u.reason}; the service is not failed over to ${site}`,
  };
}
