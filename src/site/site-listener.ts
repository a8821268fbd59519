// Where the local sites connect (src/replication/site-link.ts SiteServer): each site stream's
// records go to a Receiver that journals them and acknowledges once they are where each
// volume's acknowledgement point says (the replica synced; the standby applied, at rsp; the
// retention durable); hash requests are answered from the replica; chunk operations and control
// requests go to their handlers (src/site/chunk-ops.ts, src/site/site-requests.ts).
import * as native from "../native/mod.ts";
import { Receiver, type ReceiverOptions } from "../replication/receiver.ts";
import { SiteServer } from "../replication/site-link.ts";
import type { Retention } from "../retention/retention.ts";
import type { siteRetention } from "../retention/site.ts";
import type { Identity } from "../transport/identity.ts";
import type { Answerers, SiteAnswerBodies, SiteRequest } from "../wire/control.ts";
import type { ChunkRequest } from "../recovery/chunk-ops.ts";
import type { SiteContext } from "./context.ts";

export interface SiteListenerOptions extends SiteContext {
  hostname: string;
  port: number;
  identity: Identity;
  /** Fingerprint → name of the local sites allowed to stream here. */
  trusted: ReadonlyMap<string, string>;
  retention: Retention;
  points: ReturnType<typeof siteRetention>;
  /** Registers (or finds) a volume a site announced, with its task's retention. */
  register: ReceiverOptions["register"];
  chunkOp: (req: ChunkRequest, payload: Uint8Array) => Promise<Uint8Array>;
  requests: Answerers<SiteRequest, SiteAnswerBodies>;
}

export async function listenForSites(o: SiteListenerOptions): Promise<SiteServer> {
  const { journal, applier, replicas, feeders, points } = o;
  const sites = new SiteServer({
    hostname: o.hostname,
    port: o.port,
    identity: o.identity,
    trusted: o.trusted,
    site: o.site,
    newReceiver: (send) =>
      new Receiver({
        journal,
        register: o.register,
        copyState: (v) => replicas.get(v.id) as "empty" | "consistent" | "inconsistent",
        setState: (v, s) => replicas.set(v.id, s),
        replicaPos: () => applier.syncedPos,
        standbyPos: (agent, ack) => feeders.released(agent, ack),
        onHello: (acks) => feeders.acks(acks),
        promoted: (agent) => replicas.promoted.has(agent),
        retain: points.take,
        retained: () => o.retention.synced,
        checkpoint: points.mark,
        send,
        moves: [(signal) => feeders.changed(signal), (signal) => o.retention.syncedMoved(signal)],
      }),
    hashes: async (v, chunk) => {
      await applier.caughtUp();
      return await native.hashRange(applier.imageFd(v.id), 0, v.size, chunk);
    },
    onChunkOp: o.chunkOp,
    requests: o.requests,
  });
  await sites.start();
  return sites;
}
