// File I/O for TypeScript's own work (recovery, hashing, a standby's copy, state files),
// through the native library (src/native/ffi.ts). Disk calls are nonblocking; hashing of
// in-memory buffers is synchronous because it is faster than a thread hand-off.
import { check, native } from "./ffi.ts";

export { defaultLibraryPath, loadNative, NativeError } from "./ffi.ts";

/** Reads up to buf.length bytes at off; returns the count (short only at end of file). */
export async function pread(fd: number, buf: Uint8Array, off: number): Promise<number> {
  return check("pread", await native().cn_pread(fd, buf, BigInt(buf.length), BigInt(off)));
}

/** Writes all of buf at off. */
export async function pwrite(fd: number, buf: Uint8Array, off: number): Promise<void> {
  check("pwrite", await native().cn_pwrite(fd, buf, BigInt(buf.length), BigInt(off)));
}

/** One operation of a batch: write/read use buf; discard and zero use len. */
export type BatchOp =
  | { op: "write"; buf: Uint8Array; off: number }
  | { op: "read"; buf: Uint8Array; off: number }
  | { op: "trim" | "zero" | "zero-may-trim"; off: number; len: number };

const opCode = { write: 0, trim: 1, zero: 2, "zero-may-trim": 3, read: 4 } as const;

/**
 * Runs every operation in order with one thread hand-off (so overlapping ones land
 * in order), optionally followed by fdatasync. Reads past the end return zeroes.
 */
export async function applyBatch(fd: number, ops: readonly BatchOp[], sync = false): Promise<void> {
  // A zero-length discard or zeroing is a no-op (NBD allows a zero-length TRIM /
  // WRITE_ZEROES), but fallocate() refuses len 0 with EINVAL, which took the whole
  // gateway down from its mirror applier (found by tests/fuzz-nbd.test.ts,
  // "regression: a zero-length TRIM"). Such operations are dropped here, for every
  // copy (local disk, mirror, replica, standby).
  if (ops.some((o) => o.op !== "write" && o.op !== "read" && o.len === 0)) {
    ops = ops.filter((o) => o.op === "write" || o.op === "read" || o.len !== 0);
  }
  if (ops.length === 0) {
    if (sync) await fdatasync(fd);
    return;
  }
  const desc = new BigUint64Array(ops.length * 4);
  for (let i = 0; i < ops.length; i++) {
    const o = ops[i];
    if (o.op === "write" || o.op === "read") {
      desc[4 * i] = o.buf.length === 0 ? 0n : BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(o.buf)));
      desc[4 * i + 1] = BigInt(o.buf.length);
    } else {
      desc[4 * i + 1] = BigInt(o.len);
    }
    desc[4 * i + 2] = BigInt(o.off);
    desc[4 * i + 3] = BigInt(opCode[o.op]);
  }
  const r = await native().cn_apply_batch(fd, new Uint8Array(desc.buffer), ops.length, sync ? 1 : 0);
  // `ops` stays referenced until here, so no buffer is collected while C uses it
  check(ops.length > 0 ? "apply" : "sync", r);
}

export async function fdatasync(fd: number): Promise<void> {
  check("fdatasync", await native().cn_fdatasync(fd));
}

/** Deallocates a range (reads return zeroes on files); a no-op where unsupported. */
export async function punchHole(fd: number, off: number, len: number): Promise<void> {
  if (len === 0) return; // fallocate() refuses len 0 (see applyBatch)
  check("punch hole", await native().cn_punch_hole(fd, BigInt(off), BigInt(len)));
}

/** Makes a range read as zeroes; mayTrim allows deallocating it. */
export async function writeZeroes(fd: number, off: number, len: number, mayTrim: boolean): Promise<void> {
  check("write zeroes", await native().cn_write_zeroes(fd, BigInt(off), BigInt(len), mayTrim ? 1 : 0));
}

/** Reserves the blocks of a range of a file (posix_fallocate). */
export async function allocate(fd: number, off: number, len: number): Promise<void> {
  check("allocate", await native().cn_allocate(fd, BigInt(off), BigInt(len)));
}

/**
 * Reads a range that is read once (a chunk a synchronisation copies) without readahead and drops
 * its pages after: cached by readahead, it stayed in large folios, and in ext4 every 4 KiB write
 * into one walks all of the folio's blocks (cn_pread_once, docs/benchmarks.md).
 */
export async function preadOnce(fd: number, buf: Uint8Array, off: number): Promise<number> {
  return check("pread", await native().cn_pread_once(fd, buf, BigInt(buf.length), BigInt(off)));
}

/** Size in bytes of a regular file or block device. */
export function fileSize(fd: number): number {
  return check("size", native().cn_size(fd));
}

export function isBlockDevice(fd: number): boolean {
  return native().cn_is_blockdev(fd) === 1;
}

/** XXH3-128 of a buffer (16 bytes, canonical big-endian). */
export function xxh3(buf: Uint8Array, out: Uint8Array = new Uint8Array(16)): Uint8Array {
  native().cn_xxh3_128(buf, BigInt(buf.length), out);
  return out;
}

/** XXH3-128 of every `chunk` bytes of [off, off+len): 16 bytes a chunk, concatenated. */
export async function hashRange(fd: number, off: number, len: number, chunk: number): Promise<Uint8Array> {
  const out = new Uint8Array(Math.ceil(len / chunk) * 16);
  check("hash", await native().cn_hash_range(fd, BigInt(off), BigInt(len), BigInt(chunk), out));
  return out;
}
