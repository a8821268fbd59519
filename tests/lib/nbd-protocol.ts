// The NBD protocol as the tests speak it (NetworkBlockDevice/nbd doc/proto.md): its constants,
// request and reply encoding for the test client, and the agent's own negotiation and request
// validation (native/nbd.c, pure functions exposed for the fuzzers) behind the interface the
// tests drive.
import { native } from "../../src/native/ffi.ts";
import { MAX_PAYLOAD } from "../../src/record/record.ts";

export { MAX_PAYLOAD };

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

// handshake flags (server) and client flags
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// transmission flags
export const TF_HAS_FLAGS = 1 << 0;
export const TF_READ_ONLY = 1 << 1;
export const TF_SEND_FLUSH = 1 << 2;
export const TF_SEND_FUA = 1 << 3;
export const TF_SEND_TRIM = 1 << 5;
export const TF_SEND_WRITE_ZEROES = 1 << 6;
export const TF_CAN_MULTI_CONN = 1 << 8;

export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;

export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_POLICY = 0x80000002;
export const REP_ERR_INVALID = 0x80000003;
export const REP_ERR_UNKNOWN = 0x80000006;
export const REP_ERR_SHUTDOWN = 0x80000007;

export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_WRITE_ZEROES = 6;

export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;

export const EPERM = 1;
export const EIO = 5;
export const ENOMEM = 12;
export const EINVAL = 22;
export const ENOSPC = 28;
export const ENOTSUP = 95;
export const ESHUTDOWN = 108;

/** Longest option payload accepted during negotiation (names are at most 4096 bytes). */
export const MAX_OPTION_LENGTH = 16 * 1024;
export const PREFERRED_BLOCK = 4096;

export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;

/** What the negotiation needs to know about an export. */
export interface ExportInfo {
  name: string;
  description?: string;
  size: number;
  readOnly: boolean;
}

/** The result of one option: bytes to send, and whether negotiation ended. */
export interface OptionOutcome {
  replies: Uint8Array[];
  /** Transmission starts on this export once the replies are sent. */
  selected?: ExportInfo;
  /** Close the connection once the replies are sent. */
  close?: boolean;
}

const encoder = new TextEncoder();

/**
 * The agent's fixed newstyle negotiation (native/nbd.c) over a list of exports: feed it the
 * client flags, then each option; it answers with reply bytes and eventually a selected
 * export or a close.
 */
export class Negotiation {
  noZeroes = false;
  constructor(
    _lookup: (name: string) => ExportInfo | undefined,
    private readonly list: () => ExportInfo[],
  ) {}

  /** Returns an error message when the client flags are unacceptable (the connection must close). */
  clientFlags(flags: number): string | undefined {
    const r = native().cn_nbd_client_flags(flags >>> 0);
    if (r === 1) return `unknown client flags 0x${flags.toString(16)} (garbage before the handshake?)`;
    if (r === 2) return "client does not support fixed newstyle negotiation";
    this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
    return undefined;
  }

  option(option: number, data: Uint8Array): OptionOutcome {
    const list = this.list();
    const desc = encoder.encode(
      list.map((e) => `${e.name}\0${e.size}\0${e.readOnly ? 1 : 0}\0${e.description ?? ""}\0`).join(""),
    );
    const out = new Uint8Array(1 << 20);
    const outcome = new Int32Array(1);
    const n = Number(
      native().cn_nbd_option_probe(
        desc,
        BigInt(desc.length),
        this.noZeroes ? 1 : 0,
        option >>> 0,
        data.slice(),
        BigInt(data.length),
        out,
        BigInt(out.length),
        new Uint8Array(outcome.buffer),
      ),
    );
    if (n < 0) throw new Error(`option probe failed: errno ${-n}`);
    const selected = outcome[0] & 1 ? list[outcome[0] >> 8] : undefined;
    const close = (outcome[0] & 2) !== 0;
    const bytes = out.slice(0, n);
    // NBD_OPT_EXPORT_NAME answers with the export's size and flags, not an option reply
    if (option === OPT_EXPORT_NAME) return { replies: n ? [bytes] : [], selected, close };
    const replies: Uint8Array[] = [];
    const v = new DataView(bytes.buffer);
    for (let at = 0; at < n;) {
      const len = 20 + v.getUint32(at + 16);
      replies.push(bytes.slice(at, at + len));
      at += len;
    }
    return { replies, selected, close };
  }
}

/** A transmission-phase request header. */
export interface Request {
  flags: number;
  type: number;
  handle: bigint;
  offset: number;
  length: number;
}

/** Decodes a 28-byte request header; returns undefined when the magic is wrong. */
export function decodeRequest(b: Uint8Array, at = 0): Request | undefined {
  const v = new DataView(b.buffer, b.byteOffset + at, REQUEST_SIZE);
  if (v.getUint32(0) !== REQUEST_MAGIC) return undefined;
  const off = v.getBigUint64(16);
  return {
    flags: v.getUint16(4),
    type: v.getUint16(6),
    handle: v.getBigUint64(8),
    // offsets past 2^53 are past any export: keep them out of range rather than wrap
    offset: off > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(off),
    length: v.getUint32(24),
  };
}

export function encodeRequest(r: Request): Uint8Array {
  const b = new Uint8Array(REQUEST_SIZE);
  const v = new DataView(b.buffer);
  v.setUint32(0, REQUEST_MAGIC);
  v.setUint16(4, r.flags);
  v.setUint16(6, r.type);
  v.setBigUint64(8, r.handle);
  v.setBigUint64(16, BigInt(r.offset));
  v.setUint32(24, r.length);
  return b;
}

/** Writes a simple reply header into b at `at` (16 bytes). */
export function writeSimpleReply(b: Uint8Array, at: number, error: number, handle: bigint): void {
  const v = new DataView(b.buffer, b.byteOffset + at, SIMPLE_REPLY_SIZE);
  v.setUint32(0, SIMPLE_REPLY_MAGIC);
  v.setUint32(4, error);
  v.setBigUint64(8, handle);
}

/**
 * Checks a request against the export (native/nbd.c). Returns 0 when it may proceed, otherwise
 * the NBD error to reply with.
 */
export function validateRequest(r: Request, size: number, readOnly: boolean): number {
  return checkRequest(encodeRequest(r), size, readOnly);
}

/** The same check on raw header bytes: -1 when the magic is wrong. */
export function checkRequest(header: Uint8Array, size: number, readOnly: boolean): number {
  return native().cn_nbd_request_check(
    header.slice(0, REQUEST_SIZE),
    BigInt(Math.min(size, 2 ** 63)),
    readOnly ? 1 : 0,
  );
}

export function commandName(type: number): string {
  return ["READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"][type] ??
    `unknown(${type})`;
}
