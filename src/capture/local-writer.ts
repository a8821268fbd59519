// Applies operations to a local file or device strictly in the order they are
// enqueued: everything queued while one batch runs becomes the next batch, run
// with one native call. One batch at a time keeps overlapping writes in order
// without tracking ranges; a batch of many requests costs one thread hand-off.
import { setImmediate } from "node:timers";
import { applyBatch, type BatchOp, NativeError } from "../native/mod.ts";

interface Item {
  op: BatchOp | undefined; // undefined: a sync point only
  sync: boolean;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class LocalWriter {
  private queue: Item[] = [];
  private running = false;
  /** Operations completed since start (for status). */
  completed = 0;

  constructor(private readonly fd: number) {}

  /** Runs op after everything enqueued before it; sync makes it durable (fdatasync) before resolving. */
  run(op: BatchOp | undefined, sync = false): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ op, sync, resolve, reject });
      if (!this.running) {
        // run after this turn of the event loop, so every request parsed in it is one batch
        this.running = true;
        setImmediate(() => this.loop());
      }
    });
  }

  /** Resolves when everything enqueued so far is on stable storage. */
  sync(): Promise<void> {
    return this.run(undefined, true);
  }

  get depth(): number {
    return this.queue.length;
  }

  private async loop(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue;
      this.queue = [];
      const ops = batch.flatMap((i) => i.op ? [i.op] : []);
      const sync = batch.some((i) => i.sync);
      try {
        await applyBatch(this.fd, ops, sync);
        this.completed += ops.length;
        for (const i of batch) i.resolve();
      } catch {
        await this.attribute(batch, sync);
      }
    }
    this.running = false;
  }

  /** After a failed batch, reruns each operation alone (earlier ones again, which is idempotent) to fail only those that fail. */
  private async attribute(batch: Item[], sync: boolean): Promise<void> {
    for (const i of batch) {
      try {
        await applyBatch(this.fd, i.op ? [i.op] : [], i.sync || sync);
        if (i.op) this.completed++;
        i.resolve();
      } catch (e) {
        i.reject(e instanceof NativeError ? e : new Error(String(e)));
      }
    }
  }
}
