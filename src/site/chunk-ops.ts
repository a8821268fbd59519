// Chunk operations on this site's copies, for a recovery at the local site (src/recovery/): the
// replica (rgp) is read here, a recovery point's image is rebuilt from the retention, and the
// standby's copy (rsp) is on its own server: the operation is relayed to its agent. Each
// resolves with the reply frame; a failure is a reply with its reason.
import { type ChunkRequest, FileChunks, serveChunkOp } from "../recovery/chunk-ops.ts";
import type { PointImages } from "../retention/point-images.ts";
import { parsePoint } from "../retention/site.ts";
import { FrameType, mixedFrame } from "../wire/frames.ts";
import type { SiteContext } from "./context.ts";
import type { StandbyLink } from "./standby-link.ts";

export interface SiteChunksOptions extends SiteContext {
  pointImages: PointImages;
  link: StandbyLink;
}

export function siteChunkOps(o: SiteChunksOptions) {
  return async (req: ChunkRequest, payload: Uint8Array): Promise<Uint8Array> => {
    const refused = (error: string) => mixedFrame(FrameType.ChunkReply, { id: req.id, ok: false, error });
    const [agent, name] = String(req.volume).split("/");
    const v = o.journal.volumes().find((x) => x.agent === agent && x.name === name);
    if (!v) return refused(`no volume ${req.volume} here`);
    try {
      if (req.point !== undefined) {
        // a recovery from a point reads the point's image, rebuilt from the retention
        if (req.kind !== "rgp") return refused("points are served from the replica (rgp)");
        const image = await o.pointImages.get(req.volume, parsePoint(req.point));
        return await serveChunkOp(new FileChunks(image.fd, image.size, false), req, payload);
      }
      if (req.kind === "rsp") {
        const link = o.link.chunks(agent);
        if (!link) return refused(`standby ${agent} not connected`);
        const r = await link.call({ ...req }, payload);
        return mixedFrame(FrameType.ChunkReply, { ...r.header, id: req.id }, r.payload);
      }
      if (req.kind !== "rgp") return refused(`no ${req.kind} copy here`);
    } catch (e) {
      return refused((e as Error).message);
    }
    return await serveChunkOp(new FileChunks(o.applier.imageFd(v.id), v.size, false), req, payload);
  };
}
