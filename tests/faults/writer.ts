// The fault runner's verifying writer: ordered overwrites of a region through the
// agent's NBD socket, many in flight, a FLUSH every few writes and some FUA writes.
// Each write stamps its index and the scenario's tag into its 4 KiB block; the log
// records which writes were acknowledged and which a FLUSH or FUA made durable (see
// WriteLog in plan.ts). When the agent goes away the writer reconnects and goes on.
import { NbdClient } from "../lib/nbd-client.ts";
import { newWriteLog, type Rng, type WriteLog } from "./plan.ts";

export interface Writer {
  log: WriteLog;
  /** Stops writing, then FLUSHes (reconnecting if needed) so every acknowledged write is durable. */
  stop(timeoutMs?: number): Promise<{ finalFlush: boolean }>;
  count(): number;
  reconnects(): number;
}

export function startWriter(o: {
  socket: string;
  exportName: string;
  /** first block of the region (4 KiB blocks) and its length */
  regionStart: number;
  regionBlocks: number;
  tag: number;
  rng: Rng;
  inFlight?: number;
  flushEvery?: number;
  /** At most this many writes per second (0 or absent: as fast as the agent answers). */
  ratePerSec?: number;
}): Writer {
  const log = newWriteLog();
  let stopped = false;
  let reconnects = 0;
  let client: NbdClient | undefined;
  // acknowledged, not yet covered by a completed FLUSH
  let pending: number[] = [];
  const connect = async (deadline: number): Promise<NbdClient | undefined> => {
    while (Date.now() < deadline) {
      try {
        const c = await NbdClient.connect(o.socket);
        try {
          await c.go(o.exportName);
          return c;
        } catch {
          c.close();
        }
      } catch { /* the agent is not listening (yet) */ }
      await new Promise((r) => setTimeout(r, 100));
    }
    return undefined;
  };
  const flush = async (c: NbdClient): Promise<boolean> => {
    const covered = pending;
    pending = [];
    try {
      await c.flush();
      for (const i of covered) log.durable.add(i);
      return true;
    } catch {
      // not known durable; a later FLUSH covers them if they were acknowledged
      pending.push(...covered);
      return false;
    }
  };
  const started = performance.now();
  const loop = (async () => {
    const inFlight = new Set<Promise<unknown>>();
    while (!stopped) {
      client = await connect(Date.now() + 1000);
      if (!client) continue;
      const c = client;
      while (!stopped && !c.closedError) {
        while (inFlight.size >= (o.inFlight ?? 16)) await Promise.race(inFlight);
        if (stopped || c.closedError) break;
        const i = log.blocks.length;
        if (o.ratePerSec) {
          const due = started + (i - 1) * 1000 / o.ratePerSec;
          const wait = due - performance.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
          if (stopped || c.closedError) break;
        }
        const b = Math.floor(o.rng.next() * o.regionBlocks);
        log.blocks.push(b);
        const data = crypto.getRandomValues(new Uint8Array(4096));
        const v = new DataView(data.buffer);
        v.setUint32(0, i, true);
        v.setUint32(4, o.tag, true);
        const fua = o.rng.next() < 0.03;
        const p = c.write((o.regionStart + b) * 4096, data, fua).then(() => {
          log.acked.add(i);
          if (fua) log.durable.add(i);
          else pending.push(i);
        }, () => {
          log.failed.add(i);
        }).finally(() => inFlight.delete(p));
        inFlight.add(p);
        if (i % (o.flushEvery ?? 32) === 0) {
          const f = flush(c).finally(() => inFlight.delete(f));
          inFlight.add(f);
        }
      }
      await Promise.allSettled([...inFlight]);
      if (c.closedError) {
        // a FLUSH covers the writes its own connection saw acknowledged (NBD without MULTI_CONN):
        // what this one acknowledged and never flushed is not counted durable by a later connection
        pending = [];
        reconnects++;
        c.close();
        client = undefined;
      }
    }
  })();
  return {
    log,
    count: () => log.blocks.length - 1,
    reconnects: () => reconnects,
    async stop(timeoutMs = 60_000) {
      stopped = true;
      await loop;
      const deadline = Date.now() + timeoutMs;
      let ok = false;
      while (!ok && Date.now() < deadline) {
        const c = client && !client.closedError ? client : await connect(deadline);
        if (!c) break;
        client = c;
        ok = await flush(c);
        if (!ok) {
          c.close();
          client = undefined;
        }
      }
      if (client) {
        await client.disconnect().catch(() => {});
        client.close();
      }
      return { finalFlush: ok };
    },
  };
}
