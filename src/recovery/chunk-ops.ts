// Chunk operations on one copy of a volume, the building blocks of data recovery:
// hash a run of chunks, read a chunk, write a chunk, sync. A holder of a copy (an
// agent for its disk, a gateway for its mirror or replica, a standby agent) serves
// them; the recovery orchestrator asks for them, locally or over a link.
import * as native from "../native/mod.ts";
import { FrameError, FrameType, mixedFrame, mixedHead } from "../wire/frames.ts";
import { PendingRequests } from "../wire/requests.ts";

export type CopyKind = "lsp" | "lgp" | "rgp" | "rsp";

export interface ChunkRequest {
  id: number;
  op: "hashes" | "read" | "write" | "sync" | "describe" | "divergence";
  /** agent/name of the volume. */
  volume: string;
  kind: CopyKind;
  chunkSize: number;
  /** First chunk (hashes) or the chunk (read, write). */
  index?: number;
  count?: number;
  /** rgp at a remote site: the copy at this recovery point of its retention (sequence or checkpoint). */
  point?: number | string;
}

export interface ChunkReply {
  id: number;
  ok: boolean;
  error?: string;
  /** describe: the copy's size. */
  size?: number;
  /** divergence: the size of the chunks listed (the payload: their indexes, u32 little-endian). */
  chunk?: number;
  /** divergence: what the set counts from. */
  since?: string;
}

/** The chunks a copy was written in since a common point with another copy. */
export interface Tracked {
  chunkSize: number;
  chunks: number[];
  /** The common point, in words (e.g. "promotion at 2026-…"). */
  since: string;
}

/** A copy held in a local file the data plane may read itself (the mirror's image). */
export interface LocalFile {
  fd: number;
  size: number;
}

/** A chunk copied: its index, the XXH3-128 of what was written, its length. */
export type CopiedChunk = (index: number, hash: Uint8Array, bytes: number) => void;

/** Reading the source of a copy failed (not the target): another source may take the chunks. */
export class SourceReadError extends Error {}

/** The operations a copy offers; implemented over a local file, or over a link. */
export interface ChunkStore {
  /** Set when the copy is a local file (a source the data plane may read without JavaScript). */
  readonly local?: LocalFile;
  size(): Promise<number>;
  /** XXH3-128 of chunks index..index+count-1 (16 bytes each). */
  hashes(chunkSize: number, index: number, count: number): Promise<Uint8Array>;
  /** `into`: a buffer the chunk may be read into (its caller reuses it once done with the chunk). */
  read(chunkSize: number, index: number, into?: Uint8Array): Promise<Uint8Array>;
  write(chunkSize: number, index: number, data: Uint8Array): Promise<void>;
  sync(): Promise<void>;
  /** The chunks written since a common point, for copies that track them (rejects otherwise). */
  divergence?(): Promise<Tracked>;
  /**
   * Writes chunks of a local file into this copy, each reported to `done` once written (with the
   * hash of what was read). Rejects at the first failure (SourceReadError when reading failed);
   * the chunks reported before it are written. A copy behind an agent's link does it in the data
   * plane: the chunks never pass through JavaScript.
   */
  copyFrom?(file: LocalFile, chunkSize: number, indexes: readonly number[], done: CopiedChunk): Promise<void>;
}

/** copyFrom for a store without its own: each chunk read, hashed and written from here. */
export async function copyThrough(
  target: ChunkStore,
  file: LocalFile,
  chunkSize: number,
  indexes: readonly number[],
  done: CopiedChunk,
): Promise<void> {
  const source = new FileChunks(file.fd, file.size, false);
  const buf = new Uint8Array(chunkSize);
  for (const j of indexes) {
    let data: Uint8Array;
    try {
      data = await source.read(chunkSize, j, buf);
    } catch (e) {
      throw new SourceReadError((e as Error).message);
    }
    const hash = native.xxh3(data);
    await target.write(chunkSize, j, data);
    done(j, hash, data.length);
  }
}

const MAX_CHUNK = 16 * 1024 * 1024;

function checkRange(size: number, chunkSize: number, index: number, count = 1): void {
  if (!Number.isInteger(chunkSize) || chunkSize < 4096 || chunkSize > MAX_CHUNK) {
    throw new FrameError(`chunk size ${chunkSize} out of range`);
  }
  const chunks = Math.ceil(size / chunkSize);
  if (
    !Number.isInteger(index) || !Number.isInteger(count) || index < 0 || count < 1 || index + count > chunks
  ) {
    throw new FrameError(`chunks ${index}..${index + count - 1} are outside the volume (${chunks} chunks)`);
  }
}

export function encodeChunks(chunks: readonly number[]): Uint8Array {
  const out = new Uint8Array(4 * chunks.length);
  const dv = new DataView(out.buffer);
  chunks.forEach((c, k) => dv.setUint32(4 * k, c, true));
  return out;
}

export function decodeChunks(b: Uint8Array): number[] {
  if (b.length % 4 !== 0) throw new FrameError("a chunk list must be whole 32-bit indexes");
  const dv = new DataView(b.buffer, b.byteOffset, b.length);
  return Array.from({ length: b.length / 4 }, (_, k) => dv.getUint32(4 * k, true));
}

/** A copy held in a local file or device. */
export class FileChunks implements ChunkStore {
  constructor(
    private readonly fd: number,
    private readonly bytes: number,
    private readonly writable: boolean,
    /** Where this copy's divergence is tracked (its dirty map), if anywhere. */
    readonly divergence?: () => Promise<Tracked>,
  ) {}

  get local(): LocalFile {
    return { fd: this.fd, size: this.bytes };
  }

  size(): Promise<number> {
    return Promise.resolve(this.bytes);
  }

  async hashes(chunkSize: number, index: number, count: number): Promise<Uint8Array> {
    checkRange(this.bytes, chunkSize, index, count);
    const off = index * chunkSize;
    return await native.hashRange(this.fd, off, Math.min(count * chunkSize, this.bytes - off), chunkSize);
  }

  async read(chunkSize: number, index: number, into?: Uint8Array): Promise<Uint8Array> {
    checkRange(this.bytes, chunkSize, index);
    const off = index * chunkSize;
    const len = Math.min(chunkSize, this.bytes - off);
    const buf = into && into.length >= len ? into.subarray(0, len) : new Uint8Array(len);
    const n = await native.pread(this.fd, buf, off);
    if (n < buf.length) buf.fill(0, n);
    return buf;
  }

  async write(chunkSize: number, index: number, data: Uint8Array): Promise<void> {
    if (!this.writable) throw new Error("this copy is not a recovery target");
    checkRange(this.bytes, chunkSize, index);
    const off = index * chunkSize;
    if (data.length !== Math.min(chunkSize, this.bytes - off)) {
      throw new FrameError("chunk of the wrong length");
    }
    await native.pwrite(this.fd, data, off);
  }

  sync(): Promise<void> {
    return native.fdatasync(this.fd);
  }
}

/** Serves one chunk request on a store; returns the reply frame. */
export async function serveChunkOp(
  store: ChunkStore | undefined,
  req: ChunkRequest,
  payload: Uint8Array,
): Promise<Uint8Array> {
  const reply = (r: Omit<ChunkReply, "id">, data?: Uint8Array) =>
    mixedFrame(FrameType.ChunkReply, { id: req.id, ...r }, data);
  if (!store) return reply({ ok: false, error: `no ${req.kind} copy of ${req.volume} here` });
  try {
    switch (req.op) {
      case "describe":
        return reply({ ok: true, size: await store.size() });
      case "hashes":
        return reply({ ok: true }, await store.hashes(req.chunkSize, req.index ?? 0, req.count ?? 1));
      case "read":
        return reply({ ok: true }, await store.read(req.chunkSize, req.index ?? 0));
      case "write":
        await store.write(req.chunkSize, req.index ?? 0, payload);
        return reply({ ok: true });
      case "sync":
        await store.sync();
        return reply({ ok: true });
      case "divergence": {
        if (!store.divergence) {
          return reply({ ok: false, error: `the ${req.kind} copy tracks no divergence` });
        }
        const d = await store.divergence();
        return reply({ ok: true, chunk: d.chunkSize, since: d.since }, encodeChunks(d.chunks));
      }
      default:
        return reply({ ok: false, error: `unknown chunk operation "${String(req.op)}"` });
    }
  } catch (e) {
    return reply({ ok: false, error: (e as Error).message });
  }
}

/** The link carrying a chunk operation went down: the operation may be tried again on the next one. */
export class LinkDown extends Error {}

/**
 * A copy behind links that come and go (an agent reconnecting, e.g. when a fence drops its
 * session): each operation is asked on the current link and asked again on the next one when
 * the link went down under it. Operations are positional, so asking again is harmless.
 * `relinked` resolves when a new link may be there (the agent connected) or after the time
 * given; after waitMs without a link the operation fails with its LinkDown.
 */
export function relinking(
  current: () => ChunkStore | undefined,
  relinked: (timeoutMs: number) => Promise<void>,
  waitMs = 15_000,
): ChunkStore {
  const again = async <T>(op: (s: ChunkStore) => Promise<T>): Promise<T> => {
    const deadline = performance.now() + waitMs;
    for (;;) {
      const s = current();
      try {
        if (!s) throw new LinkDown("not connected");
        return await op(s);
      } catch (e) {
        const left = deadline - performance.now();
        if (!(e instanceof LinkDown) || left <= 0) throw e;
        await relinked(left);
      }
    }
  };
  return {
    size: () => again((s) => s.size()),
    hashes: (cs, i, n) => again((s) => s.hashes(cs, i, n)),
    read: (cs, i, into) => again((s) => s.read(cs, i, into)),
    write: (cs, i, d) => again((s) => s.write(cs, i, d)),
    sync: () => again((s) => s.sync()),
    divergence: () =>
      again((s) => {
        if (!s.divergence) throw new Error("this copy tracks no divergence");
        return s.divergence();
      }),
    // on the next link, only the chunks not yet reported are copied again
    copyFrom: (file, chunkSize, indexes, done) => {
      const left = new Set(indexes);
      const once: CopiedChunk = (j, hash, bytes) => {
        if (left.delete(j)) done(j, hash, bytes);
      };
      return again((s) => {
        const todo = indexes.filter((j) => left.has(j));
        return s.copyFrom
          ? s.copyFrom(file, chunkSize, todo, once)
          : copyThrough(s, file, chunkSize, todo, once);
      });
    },
  };
}

/**
 * Chunk requests over one link: they go out as ChunkOp frames, answers come back
 * as ChunkReply frames matched by id (the link's reader calls `answer`).
 */
export class ChunkLink {
  private requests = new PendingRequests<{ header: ChunkReply; payload: Uint8Array }>();

  constructor(
    /** Sends a frame: its head, then the payload as it is (a chunk is not copied into the head). */
    private readonly send: (head: Uint8Array, payload?: Uint8Array) => boolean,
    private readonly timeoutMs = 120_000,
  ) {}

  answer(header: ChunkReply, payload: Uint8Array): void {
    this.requests.answer(header.id, { header, payload });
  }

  /** The link dropped: every request in flight fails. */
  fail(e: Error): void {
    this.requests.failAll(new LinkDown(e.message));
  }

  async call(
    req: Omit<ChunkRequest, "id">,
    data?: Uint8Array,
  ): Promise<{ header: ChunkReply; payload: Uint8Array }> {
    const r = await this.requests.request(
      (id) => this.send(mixedHead(FrameType.ChunkOp, { ...req, id }, data?.length ?? 0), data),
      this.timeoutMs,
      () =>
        new Error(
          `no answer to ${req.op} on the ${req.kind} copy of ${req.volume} within ${this.timeoutMs} ms`,
        ),
      () => new LinkDown(`the link to the ${req.kind} copy of ${req.volume} is down`),
    );
    if (!r.header.ok) throw new Error(`${req.kind} copy of ${req.volume}: ${r.header.error ?? "failed"}`);
    return r;
  }

  /** A copy reached through this link (`point`: a site's replica at that recovery point). */
  store(volume: string, kind: CopyKind, point?: number | string): ChunkStore {
    const call = (req: Omit<ChunkRequest, "id" | "volume" | "kind">, data?: Uint8Array) =>
      this.call({ ...req, volume, kind, ...(point === undefined ? {} : { point }) }, data);
    return {
      size: async () => Number((await call({ op: "describe", chunkSize: 4096 })).header.size),
      hashes: async (chunkSize, index, count) =>
        (await call({ op: "hashes", chunkSize, index, count })).payload,
      read: async (chunkSize, index) => (await call({ op: "read", chunkSize, index })).payload,
      write: async (chunkSize, index, data) => void await call({ op: "write", chunkSize, index }, data),
      sync: async () => void await call({ op: "sync", chunkSize: 4096 }),
      divergence: async () => {
        const r = await call({ op: "divergence", chunkSize: 4096 });
        return {
          chunkSize: Number(r.header.chunk),
          chunks: decodeChunks(r.payload),
          since: String(r.header.since),
        };
      },
    };
  }
}
