// Copies a volume from a source copy to a target copy, chunk by chunk: `full`
// moves every chunk, `fast` hashes both sides and moves only the chunks that
// differ. It reports progress, checkpoints so an interrupted run resumes where it
// stopped (the first window after a resume is compared even in `full`, so work
// already done is not moved again), and verifies the result by hash.
import type { ChunkStore } from "./chunk-ops.ts";

export type Strategy = "full" | "fast";

export interface Progress {
  phase: "copying" | "verifying" | "done";
  chunks: number;
  done: number;
  bytesCompared: number;
  bytesMoved: number;
  rateBps: number;
  etaMs: number | null;
}

export interface EngineOptions {
  source: ChunkStore;
  target: ChunkStore;
  strategy: Strategy;
  chunkSize: number;
  /** Chunk to start from (a checkpoint). */
  from?: number;
  /** Counters carried over from before a resume. */
  bytesCompared?: number;
  bytesMoved?: number;
  /** Persist a checkpoint: every chunk before `next` is done and synced on the target. */
  checkpoint?: (next: number, compared: number, moved: number) => Promise<void>;
  progress?: (p: Progress) => void;
  /** Chunks compared per round trip. */
  window?: number;
  /** Reads / writes in flight. */
  parallel?: number;
  verify?: boolean;
  signal?: { aborted: boolean };
}

export interface Outcome {
  chunks: number;
  bytesCompared: number;
  bytesMoved: number;
  seconds: number;
  verified: boolean;
}

function equalAt(a: Uint8Array, b: Uint8Array, i: number): boolean {
  for (let k = 16 * i; k < 16 * i + 16; k++) if (a[k] !== b[k]) return false;
  return true;
}

export async function recover(o: EngineOptions): Promise<Outcome> {
  const [sourceSize, targetSize] = await Promise.all([o.source.size(), o.target.size()]);
  if (sourceSize !== targetSize) {
    throw new Error(
      `the source holds ${sourceSize} bytes and the target ${targetSize}: copies of one volume must be the same size`,
    );
  }
  const cs = o.chunkSize;
  const chunks = Math.ceil(targetSize / cs);
  const window = o.window ?? Math.max(1, Math.floor((16 << 20) / cs));
  const started = performance.now();
  let compared = o.bytesCompared ?? 0, moved = o.bytesMoved ?? 0;
  const startMoved = moved, startCompared = compared;
  const resumed = (o.from ?? 0) > 0;
  const len = (i: number) => Math.min(cs, targetSize - i * cs);
  const report = (phase: Progress["phase"], done: number) => {
    const secs = (performance.now() - started) / 1000;
    const rate = secs > 0 ? (compared - startCompared) / secs : 0;
    const left = (chunks - done) * cs;
    o.progress?.({
      phase,
      chunks,
      done,
      bytesCompared: compared,
      bytesMoved: moved,
      rateBps: secs > 0 ? (moved - startMoved) / secs : 0,
      etaMs: rate > 0 ? Math.round(left / rate * 1000) : null,
    });
  };
  const copy = async (list: number[]) => {
    let next = 0;
    const worker = async () => {
      while (next < list.length) {
        if (o.signal?.aborted) throw new Error("recovery cancelled");
        const j = list[next++];
        const data = await o.source.read(cs, j);
        await o.target.write(cs, j, data);
        moved += data.length;
      }
    };
    await Promise.all(Array.from({ length: Math.min(o.parallel ?? 4, list.length) }, worker));
  };

  let firstWindow = true;
  for (let i = o.from ?? 0; i < chunks; i += window) {
    if (o.signal?.aborted) throw new Error("recovery cancelled");
    const count = Math.min(window, chunks - i);
    let list: number[];
    if (o.strategy === "fast" || (resumed && firstWindow)) {
      const [th, sh] = await Promise.all([o.target.hashes(cs, i, count), o.source.hashes(cs, i, count)]);
      list = [];
      for (let k = 0; k < count; k++) if (!equalAt(th, sh, k)) list.push(i + k);
    } else {
      list = Array.from({ length: count }, (_, k) => i + k);
    }
    firstWindow = false;
    await copy(list);
    for (let k = 0; k < count; k++) compared += len(i + k);
    await o.target.sync();
    await o.checkpoint?.(i + count, compared, moved);
    report("copying", i + count);
  }

  let verified = false;
  if (o.verify ?? true) {
    // the target must hash like the source, chunk for chunk; a difference found now is copied again once
    for (let round = 0; round < 2 && !verified; round++) {
      report("verifying", chunks);
      const redo: number[] = [];
      for (let i = 0; i < chunks; i += window) {
        const count = Math.min(window, chunks - i);
        const [th, sh] = await Promise.all([o.target.hashes(cs, i, count), o.source.hashes(cs, i, count)]);
        for (let k = 0; k < count; k++) if (!equalAt(th, sh, k)) redo.push(i + k);
      }
      if (redo.length === 0) verified = true;
      else if (round === 0) {
        await copy(redo);
        await o.target.sync();
      } else {
        throw new Error(
          `${redo.length} chunks still differ from the source after copying them again (is the source changing?)`,
        );
      }
    }
  }
  report("done", chunks);
  return {
    chunks,
    bytesCompared: compared,
    bytesMoved: moved,
    seconds: (performance.now() - started) / 1000,
    verified,
  };
}
