import { setImmediate } from "node:timers";
import { Fifo } from "./fifo.ts";

// Buffered reading from a stream connection: small headers come out of one
// buffer; large payloads are read straight into their own allocation.
export interface Readable {
  read(p: Uint8Array): Promise<number | null>;
}

export class ConnReader {
  private buf: Uint8Array;
  private start = 0;
  private end = 0;

  constructor(private readonly conn: Readable, bufferSize = 256 * 1024) {
    this.buf = new Uint8Array(bufferSize);
  }

  get buffered(): number {
    return this.end - this.start;
  }

  /** Ensures at least n bytes are buffered (n ≤ buffer size). False on end of stream. */
  async fill(n: number): Promise<boolean> {
    if (n > this.buf.length) throw new Error(`ConnReader.fill(${n}) exceeds the buffer`);
    while (this.end - this.start < n) {
      if (this.start > 0 && this.buf.length - this.start < n) {
        this.buf.copyWithin(0, this.start, this.end);
        this.end -= this.start;
        this.start = 0;
      }
      const got = await this.conn.read(this.buf.subarray(this.end));
      if (got === null) return false;
      this.end += got;
    }
    return true;
  }

  /** A view of the next n buffered bytes, consumed; valid until the next fill. */
  take(n: number): Uint8Array {
    const v = this.buf.subarray(this.start, this.start + n);
    this.start += n;
    if (this.start === this.end) this.start = this.end = 0;
    return v;
  }

  /** Reads exactly n bytes into a new buffer (large payloads bypass the shared buffer). */
  async readExact(n: number): Promise<Uint8Array | undefined> {
    const out = new Uint8Array(n);
    return await this.readInto(out) ? out : undefined;
  }

  /** Fills dst completely. False on end of stream (dst partly filled). */
  async readInto(dst: Uint8Array): Promise<boolean> {
    const fromBuf = Math.min(this.buffered, dst.length);
    dst.set(this.take(fromBuf));
    let pos = fromBuf;
    while (pos < dst.length) {
      const got = await this.conn.read(dst.subarray(pos));
      if (got === null) return false;
      pos += got;
    }
    return true;
  }

  /** Reads and drops n bytes. False on end of stream. */
  async discard(n: number): Promise<boolean> {
    while (n > 0) {
      if (this.buffered === 0 && !await this.fill(1)) return false;
      const k = Math.min(n, this.buffered);
      this.take(k);
      n -= k;
    }
    return true;
  }
}

export interface Writable {
  /** Writes some of p; done with p once the promise settles (the caller reuses it). */
  write(p: Uint8Array): Promise<number>;
}

/**
 * Serialises writes to a connection (concurrent writers would interleave) and
 * coalesces small messages queued in the same turn into one system call.
 */
export class ConnWriter {
  private queue = new Fifo<Uint8Array>();
  private queuedBytes = 0;
  /** Bytes ever queued, and of those the ones written (or dropped: the connection failed), in order. */
  private queuedTotal = 0;
  private doneTotal = 0;
  private pumping = false;
  private failed: Error | undefined;
  private drainWaiters: (() => void)[] = [];
  private stage: Uint8Array | undefined;

  constructor(private readonly conn: Writable, private readonly coalesceLimit = 64 * 1024) {}

  get pending(): number {
    return this.queuedBytes;
  }

  get error(): Error | undefined {
    return this.failed;
  }

  send(b: Uint8Array): void {
    if (this.failed) return;
    this.queue.push(b);
    this.queuedBytes += b.length;
    this.queuedTotal += b.length;
    if (!this.pumping) {
      // start after this turn of the event loop, so everything sent during it goes out together
      this.pumping = true;
      setImmediate(() => this.pump());
    }
  }

  /** A test of whether everything queued so far is written (or dropped): its buffers may change then. */
  mark(): () => boolean {
    const upTo = this.queuedTotal;
    return () => this.doneTotal >= upTo;
  }

  /** Resolves when everything queued so far is written (or the connection failed). */
  drained(): Promise<void> {
    if (!this.pumping) return Promise.resolve();
    return new Promise((r) => this.drainWaiters.push(r));
  }

  private async pump(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        let chunk = this.queue.shift()!;
        if (chunk.length < this.coalesceLimit && this.queue.length > 0) {
          const parts = [chunk];
          let size = chunk.length;
          while (this.queue.length > 0 && size + this.queue.first!.length <= this.coalesceLimit) {
            const next = this.queue.shift()!;
            parts.push(next);
            size += next.length;
          }
          if (parts.length > 1) {
            // one buffer for every chunk: the write below is done with it before the next
            this.stage ??= new Uint8Array(this.coalesceLimit);
            chunk = this.stage.subarray(0, size);
            let at = 0;
            for (const p of parts) {
              chunk.set(p, at);
              at += p.length;
            }
          }
        }
        let at = 0;
        while (at < chunk.length) at += await this.conn.write(chunk.subarray(at));
        this.queuedBytes -= chunk.length;
        this.doneTotal += chunk.length;
      }
    } catch (e) {
      this.failed = e as Error;
      this.queue.clear();
      this.queuedBytes = 0;
      this.doneTotal = this.queuedTotal;
    } finally {
      this.pumping = false;
      const waiters = this.drainWaiters;
      this.drainWaiters = [];
      for (const w of waiters) w();
    }
  }
}
