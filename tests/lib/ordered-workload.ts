// An ordered overwrite workload for write-order fidelity: one NBD connection, so
// the agent sequences writes in the order they are sent; every write stamps its
// index into its 4 KiB block, and blocks are overwritten many times. A copy is a
// prefix of the sequence when some K explains every block: each holds the last
// write to it among writes 1..K (or zeroes if none).
import { NbdClient } from "./nbd-client.ts";

export interface OrderedWorkload {
  /** Block written by write i (index 1..n). */
  blocks: number[];
  stop(): Promise<void>;
  count(): number;
}

/**
 * Starts the workload: 16 requests in flight, as fast as the volume takes them, or at most
 * `ratePerSecond` writes a second (for a test whose subject is not throughput, e.g. whether
 * one site keeps up while another is cut: the agent alone outruns what a site on the same
 * machine applies).
 */
export function startOrdered(
  socket: string,
  exportName: string,
  regionBlocks: number,
  offset = 0,
  ratePerSecond = Infinity,
): OrderedWorkload {
  const blocks: number[] = [0];
  let stopped = false;
  const done = (async () => {
    const c = await NbdClient.connect(socket);
    await c.go(exportName);
    const inFlight = new Set<Promise<unknown>>();
    const started = performance.now();
    try {
      while (!stopped && !c.closedError) {
        while (inFlight.size >= 16) await Promise.race(inFlight);
        const ahead = blocks.length - (performance.now() - started) / 1000 * ratePerSecond;
        if (ahead > 0) await new Promise((r) => setTimeout(r, ahead / ratePerSecond * 1000));
        const i = blocks.length;
        const b = Math.floor(Math.random() * regionBlocks);
        blocks.push(b);
        const data = crypto.getRandomValues(new Uint8Array(4096));
        new DataView(data.buffer).setUint32(0, i, true);
        const p = c.write(offset + b * 4096, data).catch(() => {}).finally(() => inFlight.delete(p));
        inFlight.add(p);
        if (i % 64 === 0) {
          const f = c.flush().catch(() => {}).finally(() => inFlight.delete(f));
          inFlight.add(f);
        }
      }
      await Promise.allSettled([...inFlight]);
    } finally {
      await c.disconnect();
    }
  })();
  return {
    blocks,
    count: () => blocks.length - 1,
    stop: async () => {
      stopped = true;
      await done;
    },
  };
}

/**
 * Returns K when the image region is exactly the state after writes 1..K, or a
 * description of why no such K exists.
 */
export async function prefixOf(
  path: string,
  blocks: number[],
  regionBlocks: number,
  offset = 0,
): Promise<{ k: number } | { error: string }> {
  const f = await Deno.open(path, { read: true });
  const img = new Uint8Array(regionBlocks * 4096);
  await f.seek(offset, Deno.SeekMode.Start);
  let at = 0;
  while (at < img.length) {
    const n = await f.read(img.subarray(at));
    if (n === null) break;
    at += n;
  }
  f.close();
  const seen = new Array<number>(regionBlocks);
  const view = new DataView(img.buffer);
  for (let b = 0; b < regionBlocks; b++) {
    const zero = img.subarray(b * 4096, b * 4096 + 4096).every((x) => x === 0);
    seen[b] = zero ? 0 : view.getUint32(b * 4096, true);
    if (seen[b] >= blocks.length || (seen[b] > 0 && blocks[seen[b]] !== b)) {
      return { error: `block ${b} holds write ${seen[b]}, which never went there` };
    }
  }
  const k = Math.max(0, ...seen);
  // every block holds the last write to it among 1..k
  const last = new Array<number>(regionBlocks).fill(0);
  for (let i = 1; i <= k; i++) last[blocks[i]] = i;
  for (let b = 0; b < regionBlocks; b++) {
    if (last[b] !== seen[b]) {
      return { error: `block ${b} holds write ${seen[b]} but writes up to ${k} end with ${last[b]} there` };
    }
  }
  return { k };
}
