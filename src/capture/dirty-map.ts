// A persistent bitmap of volume chunks that may differ between the local disk and
// the gateway (an activity log, as DRBD has). A chunk's bit is made durable before
// any write to it leaves the agent, so after an agent crash, a gateway crash, or
// writes made while the gateway was away (`track` mode), exactly the set chunks
// need resending. Bits are cleared once both sides are known to hold the data.
import { closeSync, openSync } from "node:fs";
import * as native from "../native/mod.ts";

const MAGIC = "CNDM1";
const HEADER = 64;

export class DirtyMap {
  private bits: Uint8Array;
  /** What the file holds (or will hold once the write in flight lands); a cleared bit counts as not durable. */
  private durableBits: Uint8Array;
  private persistedGen = 0;
  private startedGen = 0;
  private persisting = false;
  private wantPersist = false;
  private waiters: { gen: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  private failure: Error | undefined;
  readonly chunks: number;

  private constructor(
    private readonly fd: number,
    readonly chunkSize: number,
    readonly volumeSize: number,
    bits: Uint8Array,
    /** True when the map was missing or unreadable: every chunk is suspect. */
    readonly fresh: boolean,
  ) {
    this.chunks = Math.ceil(volumeSize / chunkSize);
    this.bits = bits;
    this.durableBits = bits.slice();
  }

  /**
   * Opens the map at path. A missing map, or one made for another size or chunk
   * size, is started with every bit set: without it nothing proves the copies agree.
   */
  static async open(path: string, volumeSize: number, chunkSize: number): Promise<DirtyMap> {
    const chunks = Math.ceil(volumeSize / chunkSize);
    const bytes = Math.ceil(chunks / 8);
    let fd: number;
    let existing: Uint8Array | undefined;
    try {
      existing = await Deno.readFile(path);
      fd = openSync(path, "r+");
    } catch {
      fd = openSync(path, "w+", 0o600);
    }
    const header = new TextEncoder().encode(`${MAGIC} ${volumeSize} ${chunkSize}\n`);
    let bits: Uint8Array;
    let fresh = false;
    const matches = existing && existing.length === HEADER + bytes &&
      new TextDecoder().decode(existing.subarray(0, header.length)) === new TextDecoder().decode(header);
    if (matches) {
      bits = existing!.slice(HEADER);
    } else {
      bits = new Uint8Array(bytes);
      setRange(bits, 0, chunks);
      fresh = true;
    }
    const m = new DirtyMap(fd, chunkSize, volumeSize, bits, fresh);
    if (!matches) {
      const file = new Uint8Array(HEADER + bytes);
      file.set(header);
      file.set(bits, HEADER);
      // a map made for another volume may be longer: cut it, or it would never match again
      await Deno.truncate(path, file.length);
      await native.pwrite(fd, file, 0);
      await native.fdatasync(fd);
    }
    return m;
  }

  chunkRange(offset: number, length: number): [number, number] {
    const first = Math.floor(offset / this.chunkSize);
    const last = length === 0 ? first : Math.floor((offset + length - 1) / this.chunkSize);
    return [first, Math.min(last, this.chunks - 1)];
  }

  isSet(chunk: number): boolean {
    return (this.bits[chunk >> 3] & (1 << (chunk & 7))) !== 0;
  }

  /** Chunks whose bit is set. */
  setChunks(): number[] {
    const out: number[] = [];
    for (let c = 0; c < this.chunks; c++) if (this.isSet(c)) out.push(c);
    return out;
  }

  get count(): number {
    let n = 0;
    for (let c = 0; c < this.chunks; c++) if (this.isSet(c)) n++;
    return n;
  }

  /**
   * Sets the bits of a byte range. Returns undefined when they are already
   * durable (the common case), otherwise a promise that resolves once they are.
   */
  mark(offset: number, length: number): Promise<void> | undefined {
    const [first, last] = this.chunkRange(offset, length);
    let needed = false;
    for (let c = first; c <= last; c++) {
      const i = c >> 3, m = 1 << (c & 7);
      this.bits[i] |= m;
      if (!(this.durableBits[i] & m)) needed = true;
    }
    if (!needed) return undefined;
    return this.persistIncluding();
  }

  /** Sets every bit (a full resynchronisation is needed). */
  markAll(): Promise<void> {
    setRange(this.bits, 0, this.chunks);
    return this.persistIncluding();
  }

  /** Clears chunks (both copies are known equal). Written without waiting: a stale set bit is harmless. */
  clear(chunks: Iterable<number>): void {
    let any = false;
    for (const c of chunks) {
      const i = c >> 3, m = 1 << (c & 7);
      if (this.bits[i] & m) any = true;
      this.bits[i] &= ~m;
      // from now on a write to c must wait for a persist that sets it again
      this.durableBits[i] &= ~m;
    }
    if (any) this.persistIncluding().catch(() => {/* reported to the next marker */});
  }

  /** A persist that starts after this call includes every change made so far. */
  private persistIncluding(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    const gen = this.startedGen + 1;
    this.wantPersist = true;
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ gen, resolve, reject }));
    if (!this.persisting) queueMicrotask(() => this.persistLoop());
    return p;
  }

  private async persistLoop(): Promise<void> {
    if (this.persisting) return;
    this.persisting = true;
    try {
      while (this.wantPersist) {
        this.wantPersist = false;
        const gen = ++this.startedGen;
        const snapshot = this.bits.slice();
        await native.pwrite(this.fd, snapshot, HEADER);
        await native.fdatasync(this.fd);
        this.persistedGen = gen;
        for (let i = 0; i < snapshot.length; i++) this.durableBits[i] |= snapshot[i] & this.bits[i];
        const ready = this.waiters.filter((w) => w.gen <= gen);
        this.waiters = this.waiters.filter((w) => w.gen > gen);
        for (const w of ready) w.resolve();
      }
    } catch (e) {
      this.failure = new Error(`dirty map write failed: ${(e as Error).message}`);
      for (const w of this.waiters.splice(0)) w.reject(this.failure);
    } finally {
      this.persisting = false;
    }
  }

  /** Resolves once everything changed so far is on disk. */
  async settle(): Promise<void> {
    if (this.persisting || this.wantPersist) await this.persistIncluding();
  }

  get generation(): number {
    return this.persistedGen;
  }

  close(): void {
    try {
      closeSync(this.fd);
    } catch { /* closed */ }
  }
}

function setRange(bits: Uint8Array, first: number, count: number): void {
  for (let c = first; c < first + count; c++) bits[c >> 3] |= 1 << (c & 7);
}
