// A write workload that knows exactly which writes a FLUSH acknowledged: each
// write goes to its own 4 KiB block with random content, many in flight; after a
// FLUSH completes, every write that completed before it was sent is "flushed".
import { NbdClient } from "./nbd-client.ts";

export interface WorkloadResult {
  /** offset → content of writes covered by a completed FLUSH */
  flushed: Map<number, Uint8Array>;
  /** offset → content of every write the server acknowledged */
  acked: Map<number, Uint8Array>;
  error?: Error;
}

export interface WorkloadOptions {
  socket: string;
  exportName: string;
  blocks: number;
  inFlight?: number;
  flushEvery?: number;
  /** Stop after this many writes (or when stop() is called, or the connection fails). */
  maxWrites?: number;
}

export function startWorkload(
  o: WorkloadOptions,
): { done: Promise<WorkloadResult>; stop: () => void; written: () => number } {
  let stopped = false;
  let count = 0;
  const result: WorkloadResult = { flushed: new Map(), acked: new Map() };
  const done = (async () => {
    let client: NbdClient;
    try {
      client = await NbdClient.connect(o.socket);
      await client.go(o.exportName);
    } catch (e) {
      result.error = e as Error;
      return result;
    }
    const order = [...Array(o.blocks).keys()].sort(() => Math.random() - 0.5);
    const inFlight = new Set<Promise<void>>();
    let sinceFlush: [number, Uint8Array][] = [];
    let flushing: Promise<void> | undefined;
    try {
      for (const block of order) {
        if (stopped || client.closedError || result.error || (o.maxWrites && count >= o.maxWrites)) break;
        while (inFlight.size >= (o.inFlight ?? 16)) await Promise.race(inFlight);
        const off = block * 4096;
        const data = crypto.getRandomValues(new Uint8Array(4096));
        count++;
        const p: Promise<void> = client.write(off, data).then(() => {
          result.acked.set(off, data);
          sinceFlush.push([off, data]);
        }, (e) => {
          result.error ??= e;
        }).finally(() => inFlight.delete(p));
        inFlight.add(p);
        if (count % (o.flushEvery ?? 32) === 0 && !flushing) {
          const covered = sinceFlush;
          sinceFlush = [];
          const f: Promise<void> = client.flush().then(() => {
            for (const [off, d] of covered) result.flushed.set(off, d);
          }, (e) => {
            result.error ??= e;
          }).finally(() => {
            if (flushing === f) flushing = undefined;
          });
          flushing = f;
          inFlight.add(f);
          f.finally(() => inFlight.delete(f));
        }
      }
      await Promise.allSettled([...inFlight]);
      if (!client.closedError && !result.error) {
        const covered = sinceFlush;
        await client.flush();
        for (const [off, d] of covered) result.flushed.set(off, d);
        await client.disconnect();
      }
    } catch (e) {
      result.error = e as Error;
    }
    if (client.closedError) result.error = client.closedError;
    client.close();
    return result;
  })();
  return { done, stop: () => stopped = true, written: () => count };
}

/** Offsets whose 4 KiB content in the file differs from what was flushed. */
export async function missingWrites(path: string, writes: Map<number, Uint8Array>): Promise<number[]> {
  const f = await Deno.open(path, { read: true });
  const bad: number[] = [];
  const buf = new Uint8Array(4096);
  try {
    for (const [off, data] of writes) {
      await f.seek(off, Deno.SeekMode.Start);
      let n = 0;
      while (n < 4096) {
        const r = await f.read(buf.subarray(n));
        if (r === null) break;
        n += r;
      }
      if (n < 4096 || !buf.every((b, i) => b === data[i])) bad.push(off);
    }
  } finally {
    f.close();
  }
  return bad;
}
