// Copies of a replica image taken while the replica applier holds it at one sequence (the copy
// is that consistent prefix): a retention log's base, and a failover test's copy (now, or at a
// recovery point rebuilt from the retention).
import type { VolumeInfo } from "../journal/journal.ts";
import type { MirrorApplier } from "../mirror/applier.ts";
import type { siteRetention } from "../retention/site.ts";
import { copyImage } from "../volume/copy.ts";
import type { SiteContext } from "./context.ts";

/** A retention's base: the replica once it applied everything journaled, with its sequence and time. */
export async function replicaBase(applier: MirrorApplier, v: VolumeInfo, into: string) {
  await applier.caughtUp();
  return await applier.hold(async () => {
    await copyImage(v.mirrorPath, into);
    return { seq: applier.applied(v.id), time: applier.appliedAt(v.id) };
  });
}

export interface TestSnapshotOptions extends SiteContext {
  points: ReturnType<typeof siteRetention>;
}

/** A failover test's copy of a volume (AGENT/NAME) into `into`, now or at a point. */
export function testSnapshot(o: TestSnapshotOptions) {
  return async (key: string, into: string, point?: number | string) => {
    const [agent, name] = key.split("/");
    const v = o.journal.volumes().find((x) => x.agent === agent && x.name === name);
    if (!v) throw new Error(`site ${o.site} holds no replica of ${key}`);
    if (o.replicas.promoted.has(agent)) {
      throw new Error(`the service of ${agent} runs at site ${o.site} (promoted): there is nothing to test`);
    }
    if (point !== undefined) return await o.points.copyAt(key, point, into);
    return await o.applier.hold(async () => {
      const state = o.replicas.get(v.id);
      if (state !== "consistent") {
        throw new Error(
          `the replica of ${key} at site ${o.site} is ${state}: a test needs a consistent copy`,
        );
      }
      await copyImage(v.mirrorPath, into);
      return { seq: o.applier.applied(v.id), size: v.size, time: o.applier.appliedAt(v.id) };
    });
  };
}
