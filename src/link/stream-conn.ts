// Adapts a web-stream duplex (the site link's connections) to the read/write
// interface ConnReader and ConnWriter use.
import type { Readable, Writable } from "../io/conn-reader.ts";

export interface StreamDuplex {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  close(): void;
}

export class StreamConn implements Readable, Writable {
  private reader: ReadableStreamDefaultReader<Uint8Array>;
  private writer: WritableStreamDefaultWriter<Uint8Array>;
  private leftover: Uint8Array | undefined;

  constructor(private readonly d: StreamDuplex) {
    this.reader = d.readable.getReader();
    this.writer = d.writable.getWriter();
  }

  async read(p: Uint8Array): Promise<number | null> {
    let chunk = this.leftover;
    this.leftover = undefined;
    if (!chunk) {
      const r = await this.reader.read();
      if (r.done) return null;
      chunk = r.value;
    }
    const n = Math.min(p.length, chunk.length);
    p.set(chunk.subarray(0, n));
    if (n < chunk.length) this.leftover = chunk.subarray(n);
    return n;
  }

  async write(p: Uint8Array): Promise<number> {
    await this.writer.write(p);
    return p.length;
  }

  close(): void {
    this.d.close();
  }
}
