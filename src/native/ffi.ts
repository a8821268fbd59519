// The one binding to the native library (native/continuum.h documents every symbol). Calls
// that may wait (disk, peers, other threads) are `nonblocking`: they run on Deno's blocking
// thread pool, so the event loop never waits on them. Callers keep a buffer untouched until
// the promise of the call using it settles.
import { nativeLibrarySource, openNativeLibrary } from "../assets/assets.ts";

const nb = true;

export const symbols = {
  // file I/O for TypeScript's own work
  cn_pread: { parameters: ["i32", "buffer", "u64", "u64"], result: "i64", nonblocking: nb },
  cn_pwrite: { parameters: ["i32", "buffer", "u64", "u64"], result: "i64", nonblocking: nb },
  cn_apply_batch: { parameters: ["i32", "buffer", "u32", "u32"], result: "i64", nonblocking: nb },
  cn_fdatasync: { parameters: ["i32"], result: "i64", nonblocking: nb },
  cn_punch_hole: { parameters: ["i32", "u64", "u64"], result: "i64", nonblocking: nb },
  cn_write_zeroes: { parameters: ["i32", "u64", "u64", "u32"], result: "i64", nonblocking: nb },
  cn_hash_range: { parameters: ["i32", "u64", "u64", "u64", "buffer"], result: "i64", nonblocking: nb },
  cn_allocate: { parameters: ["i32", "u64", "u64"], result: "i64", nonblocking: nb },
  cn_pread_once: { parameters: ["i32", "buffer", "u64", "u64"], result: "i64", nonblocking: nb },
  cn_size: { parameters: ["i32"], result: "i64" },
  cn_is_blockdev: { parameters: ["i32"], result: "i32" },
  cn_xxh3_128: { parameters: ["buffer", "u64", "buffer"], result: "void" },
  // the site links' sealed batches
  cn_sealer_new: { parameters: ["buffer", "i32"], result: "pointer" },
  cn_sealer_free: { parameters: ["pointer"], result: "void" },
  cn_seal: { parameters: ["pointer", "buffer", "u32", "buffer"], result: "i32" },
  cn_unseal: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  // the event plane
  cn_plane_new: { parameters: ["i32"], result: "pointer" },
  cn_plane_set_log_level: { parameters: ["pointer", "i32"], result: "void" },
  cn_plane_events: { parameters: ["pointer", "buffer", "u64", "i32"], result: "i64", nonblocking: nb },
  cn_plane_wake: { parameters: ["pointer"], result: "void" },
  cn_plane_free: { parameters: ["pointer"], result: "void" },
  cn_mono_ns: { parameters: [], result: "i64" },
  // NBD server
  cn_nbd_new: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "buffer", "u64"],
    result: "pointer",
    nonblocking: nb,
  },
  cn_nbd_export_file: { parameters: ["pointer", "buffer", "i32", "u64", "i32", "buffer"], result: "i32" },
  cn_nbd_export_volume: { parameters: ["pointer", "buffer", "pointer", "u32", "buffer"], result: "i32" },
  cn_nbd_withdraw: { parameters: ["pointer", "buffer"], result: "i32", nonblocking: nb },
  cn_nbd_close: { parameters: ["pointer"], result: "void", nonblocking: nb },
  // agent
  cn_agent_new: {
    parameters: ["pointer", "buffer", "buffer", "u32", "buffer", "i32", "i64", "u64", "i32", "buffer", "u64"],
    result: "pointer",
  },
  cn_agent_start: { parameters: ["pointer"], result: "i32" },
  cn_agent_poke: { parameters: ["pointer"], result: "void" },
  cn_agent_add_volume: {
    parameters: ["pointer", "u32", "buffer", "i32", "u64", "buffer", "u64", "i32", "buffer", "u64"],
    result: "i32",
    nonblocking: nb,
  },
  cn_agent_remove_volume: { parameters: ["pointer", "u32", "i32"], result: "i32", nonblocking: nb },
  cn_agent_fence: { parameters: ["pointer", "buffer"], result: "void" },
  cn_agent_send: { parameters: ["pointer", "buffer", "u64"], result: "i32" },
  cn_agent_reconnect: { parameters: ["pointer"], result: "void", nonblocking: nb },
  cn_agent_volume_status: { parameters: ["pointer", "u32", "buffer"], result: "i32" },
  cn_agent_volume_wait_quiet: { parameters: ["pointer", "u32", "i32"], result: "i32", nonblocking: nb },
  cn_agent_volume_dirty: { parameters: ["pointer", "u32", "buffer", "u64", "buffer"], result: "i64" },
  cn_agent_link_status: { parameters: ["pointer", "buffer", "buffer", "u64"], result: "void" },
  cn_agent_close: { parameters: ["pointer"], result: "void", nonblocking: nb },
  // journal
  cn_journal_open: {
    parameters: [
      "pointer",
      "buffer",
      "u64",
      "u64",
      "u64",
      "u64",
      "buffer",
      "u32",
      "i32",
      "i32",
      "u64",
      "u64",
      "i32",
      "buffer",
      "u64",
    ],
    result: "pointer",
    nonblocking: nb,
  },
  cn_journal_add_volume: { parameters: ["pointer", "u32", "u64", "u64", "i32"], result: "i32" },
  cn_journal_set_bound: { parameters: ["pointer", "u32", "u64"], result: "void" },
  cn_journal_append: {
    parameters: ["pointer", "buffer", "u64", "buffer", "u32", "buffer"],
    result: "i64",
    nonblocking: nb,
  },
  cn_journal_cursor: { parameters: ["pointer", "u64", "i32"], result: "i32" },
  cn_journal_cursor_release: { parameters: ["pointer", "i32", "u64"], result: "void" },
  cn_journal_cursor_required: { parameters: ["pointer", "i32", "i32"], result: "void" },
  cn_journal_cursor_drop: { parameters: ["pointer", "i32"], result: "void" },
  cn_journal_cursor_pace: { parameters: ["pointer", "i32", "u64"], result: "void" },
  cn_journal_entered: { parameters: ["pointer", "u64"], result: "i64" },
  cn_journal_read: {
    parameters: ["pointer", "u64", "u64", "buffer", "u64", "i32"],
    result: "i64",
    nonblocking: nb,
  },
  cn_journal_status: { parameters: ["pointer", "buffer"], result: "void" },
  cn_journal_take_index: { parameters: ["pointer", "buffer", "buffer", "u32"], result: "u32" },
  cn_journal_volume_status: { parameters: ["pointer", "u32", "buffer"], result: "i32" },
  cn_journal_flush: { parameters: ["pointer"], result: "i32", nonblocking: nb },
  cn_journal_mirror_start: { parameters: ["pointer", "u64", "i32", "i32"], result: "i32" },
  cn_journal_mirror_hold: { parameters: ["pointer"], result: "i32", nonblocking: nb },
  cn_journal_mirror_release: { parameters: ["pointer"], result: "void" },
  cn_journal_mirror_stop: { parameters: ["pointer"], result: "void", nonblocking: nb },
  cn_journal_close: { parameters: ["pointer"], result: "void", nonblocking: nb },
  cn_journal_free: { parameters: ["pointer"], result: "void" },
  // gateway
  cn_gateway_new: { parameters: ["pointer", "pointer", "i32"], result: "pointer" },
  cn_gateway_listen: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "u64"],
    result: "i32",
    nonblocking: nb,
  },
  cn_gateway_secret: { parameters: ["pointer", "buffer", "buffer", "u32"], result: "void" },
  cn_gateway_open_volume: {
    parameters: ["pointer", "u32", "u32", "u32", "u64", "i32", "buffer"],
    result: "i32",
  },
  cn_gateway_send: { parameters: ["pointer", "u32", "buffer", "u64", "buffer", "u64"], result: "i32" },
  cn_gateway_send_stored: { parameters: ["pointer", "u32", "u64", "u64"], result: "i32" },
  cn_gateway_copy: {
    parameters: ["pointer", "u32", "u32", "i32", "u64", "u64", "buffer", "buffer", "buffer", "u32"],
    result: "i32",
  },
  cn_gateway_queued: { parameters: ["pointer", "u32"], result: "i64" },
  cn_gateway_fence: { parameters: ["pointer", "buffer", "buffer"], result: "void" },
  cn_gateway_close: { parameters: ["pointer"], result: "void", nonblocking: nb },
  cn_gateway_free: { parameters: ["pointer"], result: "void" },
  // persistent chunk bitmaps
  cn_dirty_open: {
    parameters: ["buffer", "u64", "u64", "buffer", "buffer", "u64"],
    result: "pointer",
    nonblocking: nb,
  },
  cn_dirty_mark: { parameters: ["pointer", "u64", "u64"], result: "i32", nonblocking: nb },
  cn_dirty_mark_all: { parameters: ["pointer"], result: "i32", nonblocking: nb },
  cn_dirty_mark_chunks: { parameters: ["pointer", "buffer", "u32"], result: "i32", nonblocking: nb },
  cn_dirty_clear: { parameters: ["pointer", "buffer", "u32"], result: "i32", nonblocking: nb },
  cn_dirty_bits: { parameters: ["pointer", "buffer", "u64"], result: "i64" },
  cn_dirty_close: { parameters: ["pointer"], result: "void" },
  // pure checks, for the fuzzers
  cn_nbd_option_probe: {
    parameters: ["buffer", "u64", "i32", "u32", "buffer", "u64", "buffer", "u64", "buffer"],
    result: "i64",
  },
  cn_nbd_client_flags: { parameters: ["u32"], result: "i32" },
  cn_nbd_request_check: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  cn_record_check: { parameters: ["buffer", "u64", "u32", "buffer"], result: "i32" },
  // agent: recovery chunk writes in the data plane
  cn_agent_serve_chunk_writes: { parameters: ["pointer", "i32"], result: "void" },
  // agent: a standby server's copies
  cn_agent_standby_add: {
    parameters: ["pointer", "buffer", "u32", "i32", "u64", "u64", "i32", "buffer", "buffer", "u64"],
    result: "i32",
  },
  cn_agent_standby_status: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  cn_agent_standby_freeze: { parameters: ["pointer", "buffer", "u64"], result: "i32", nonblocking: nb },
  cn_agent_standby_thaw: { parameters: ["pointer"], result: "void" },
  cn_agent_standby_take: {
    parameters: ["pointer", "buffer", "u64", "u64", "buffer", "u64"],
    result: "i32",
    nonblocking: nb,
  },
} as const;

export type Lib = Deno.DynamicLibrary<typeof symbols>["symbols"];
let lib: Lib | undefined;

/**
 * Where the library is loaded from: CONTINUUM_NATIVE_LIB, else the build output (under
 * `deno run`) or the copy embedded in the executable (see src/assets/assets.ts).
 */
export function defaultLibraryPath(): string {
  return Deno.env.get("CONTINUUM_NATIVE_LIB") ?? nativeLibrarySource();
}

/** Opens the native library (`path`, CONTINUUM_NATIVE_LIB, or the default); later calls are no-ops. */
export function loadNative(path?: string): void {
  if (lib) return;
  lib = openNativeLibrary(symbols, path ?? Deno.env.get("CONTINUUM_NATIVE_LIB")).symbols;
}

export function native(): Lib {
  if (!lib) loadNative();
  return lib!;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A NUL-terminated copy of a string, as C reads it. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const b = encoder.encode(s);
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

/** The text C wrote into buf (up to its NUL). */
export function fromCstr(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return decoder.decode(end < 0 ? buf : buf.subarray(0, end));
}

const errnoNames: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  5: "EIO",
  9: "EBADF",
  12: "ENOMEM",
  13: "EACCES",
  17: "EEXIST",
  22: "EINVAL",
  27: "EFBIG",
  28: "ENOSPC",
  30: "EROFS",
  95: "EOPNOTSUPP",
  98: "EADDRINUSE",
  107: "ENOTCONN",
  108: "ESHUTDOWN",
  122: "EDQUOT",
};

/** A failed system call, with its errno and a readable name. */
export class NativeError extends Error {
  constructor(readonly op: string, readonly errno: number, detail?: string) {
    super(detail || `${op} failed: ${errnoNames[errno] ?? "errno " + errno}`);
    this.name = "NativeError";
  }
  get code(): string {
    return errnoNames[this.errno] ?? `E${this.errno}`;
  }
}

/** Throws a NativeError for a negative result (with C's message when it wrote one). */
export function check(op: string, r: number | bigint, err?: Uint8Array): number {
  const n = Number(r);
  if (n < 0) throw new NativeError(op, -n, err ? fromCstr(err) : undefined);
  return n;
}
