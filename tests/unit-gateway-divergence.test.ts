// The local gateway's tracked divergence of an agent's volume when its link is down for a
// moment: a recovery fences the agent, the fence drops a link that was resending writes, and
// the agent connects again at once. The dirty map is read on the next link, not given up for
// a scan of the whole volume (a CI run of the tracked recovery test scanned for this).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { divergence, type GatewayRecoveryDeps } from "../src/local-gateway/recovery.ts";
import type { ChunkStore, Tracked } from "../src/recovery/chunk-ops.ts";
import type { VolumeInfo } from "../src/journal/journal.ts";
import { setLogSink } from "../src/log.ts";

setLogSink(() => {});
const t = suite("gateway: tracked divergence across a relink");
const MiB = 1024 * 1024;
const volume = { id: 1, agent: "a1", name: "vol0", size: 64 * MiB } as VolumeInfo;

/** A listener whose agent is linked or not; its store answers the dirty map `map`. */
function listener(map: Tracked) {
  const state = { linked: false, asked: 0 };
  const store = { divergence: () => (state.asked++, Promise.resolve(map)) } as unknown as ChunkStore;
  const deps = {
    listener: { chunks: () => state.linked ? { store: () => store } : undefined },
  } as unknown as GatewayRecoveryDeps;
  return { state, deps };
}

const relinked = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.min(ms, 10)));

t("a dirty map asked while the agent relinks is read on its next link", async () => {
  const { state, deps } = listener({ chunkSize: MiB, chunks: [3, 40], since: "the last sweep" });
  setTimeout(() => state.linked = true, 100);
  const d = await divergence(deps, relinked, volume, { kind: "lgp" }, "lsp", 4 * MiB);
  assert.equal(d.chunks, [0, 10], "the map's chunks, on the recovery's grid");
  assert.is(d.known, false, "from the mirror, the map is used only when asked for");
  assert.match(d.reason, /2 from the agent's dirty map/);
  assert.is(state.asked, 1);
});

t.run();
