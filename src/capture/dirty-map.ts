// A persistent bitmap of volume chunks that may differ between two copies (native/dirty.c;
// the agent's own map lives inside its data plane). A site's sender keeps one per volume of
// the chunks a pull-ahead skipped, and one of those a promoted copy at the site lacks.
// Changes are applied in the order they are made, each durable when its promise settles.
import { cstr, fromCstr, native, NativeError } from "../native/ffi.ts";

export class DirtyMap {
  readonly chunks: number;
  private last: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly ptr: Deno.PointerValue,
    readonly chunkSize: number,
    readonly volumeSize: number,
    /** True when the map was missing or unreadable: every chunk is suspect. */
    readonly fresh: boolean,
  ) {
    this.chunks = Math.ceil(volumeSize / chunkSize);
  }

  /**
   * Opens the map at path. A missing map, or one made for another size or chunk size, is
   * started with every bit set: without it nothing proves the copies agree.
   */
  static async open(path: string, volumeSize: number, chunkSize: number): Promise<DirtyMap> {
    const fresh = new Int32Array(1);
    const err = new Uint8Array(512);
    const ptr = await native().cn_dirty_open(
      cstr(path),
      BigInt(volumeSize),
      BigInt(chunkSize),
      new Uint8Array(fresh.buffer),
      err,
      BigInt(err.length),
    );
    if (!ptr) throw new Error(fromCstr(err) || `cannot open the dirty map ${path}`);
    return new DirtyMap(ptr, chunkSize, volumeSize, fresh[0] === 1);
  }

  /** Runs changes one after the other: a clear never overtakes an earlier mark. */
  private chain(op: string, fn: () => Promise<number>): Promise<boolean> {
    const p = this.last.then(async () => {
      const r = await fn();
      if (r < 0) throw new NativeError(op, -r, `dirty map write failed: errno ${-r}`);
      return r === 1;
    });
    this.last = p.then(() => {}, () => {});
    return p;
  }

  /** Sets the chunks of a byte range; resolves once they are durable, with whether that took a write. */
  mark(offset: number, length: number): Promise<boolean> {
    return this.chain("mark", () => native().cn_dirty_mark(this.ptr, BigInt(offset), BigInt(length)));
  }

  /** Sets chunks by index, all durable with one write; resolves with whether that took one. */
  markChunks(chunks: readonly number[]): Promise<boolean> {
    if (chunks.length === 0) return Promise.resolve(false);
    const list = Uint32Array.from(chunks);
    return this.chain(
      "mark",
      () => native().cn_dirty_mark_chunks(this.ptr, new Uint8Array(list.buffer), list.length),
    );
  }

  /** Sets every chunk (a full resynchronisation is needed). */
  async markAll(): Promise<void> {
    await this.chain("mark", () => native().cn_dirty_mark_all(this.ptr));
  }

  /** Clears chunks (both copies are known equal); settle() waits for it to be written. */
  clear(chunks: number[]): void {
    if (chunks.length === 0) return;
    const list = Uint32Array.from(chunks);
    this.chain("clear", () => native().cn_dirty_clear(this.ptr, new Uint8Array(list.buffer), list.length))
      .catch(() => {/* a stale set bit is harmless: it only makes a chunk be copied again */});
  }

  private bits(): Uint8Array {
    const b = new Uint8Array(Math.ceil(this.chunks / 8));
    native().cn_dirty_bits(this.ptr, b, BigInt(b.length));
    return b;
  }

  /** Chunks whose bit is set. */
  setChunks(): number[] {
    const b = this.bits();
    const out: number[] = [];
    for (let c = 0; c < this.chunks; c++) if (b[c >> 3] & (1 << (c & 7))) out.push(c);
    return out;
  }

  get count(): number {
    return this.setChunks().length;
  }

  /** Resolves once everything changed so far is on disk. */
  settle(): Promise<void> {
    return this.last;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.last;
    native().cn_dirty_close(this.ptr);
  }
}
