// Rolls a copy back to a recovery point: the point's image is rebuilt from the retention (base
// plus log), then the recovery engine moves only the chunks that differ into the copy (a standby
// before its promotion) and verifies the whole copy by hash, like every recovery.
import { type ChunkStore, FileChunks } from "../recovery/chunk-ops.ts";
import { type Outcome, recover } from "../recovery/engine.ts";
import { Volume } from "../volume/volume.ts";
import type { Point } from "./points.ts";
import type { VolumeLog } from "./volume-log.ts";

export async function rollBack(o: {
  log: VolumeLog;
  point: Point;
  /** Where the point's image is rebuilt (removed afterwards). */
  dir: string;
  target: ChunkStore;
  chunkSize?: number;
}): Promise<Outcome> {
  await Deno.mkdir(o.dir, { recursive: true, mode: 0o700 });
  const path = `${o.dir}/rollback-${crypto.randomUUID().slice(0, 8)}.img`;
  try {
    await o.log.materialize(o.point, path);
    const image = Volume.open(path, { readOnly: true });
    try {
      return await recover({
        sources: [{ name: `point ${o.point.seq}`, store: new FileChunks(image.fd, image.size, false) }],
        target: o.target,
        strategy: "fast",
        chunkSize: o.chunkSize ?? 1 << 20,
        verify: "full",
      });
    } finally {
      image.close();
    }
  } finally {
    // the temporary image of the point, removed on every path (it may not exist if making it failed)
    await Deno.remove(path).catch(() => {});
  }
}
