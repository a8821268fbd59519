// NBD protocol constants, message encoding and the fixed-newstyle option
// negotiation as a pure state machine (no sockets), per NetworkBlockDevice/nbd
// doc/proto.md. The server in server.ts feeds it bytes and writes what it returns.

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

/** Largest request payload accepted; advertised as the maximum block size. */
export const MAX_PAYLOAD = 32 * 1024 * 1024;
/** Longest option payload accepted during negotiation (names are at most 4096 bytes). */
export const MAX_OPTION_LENGTH = 16 * 1024;
export const PREFERRED_BLOCK = 4096;

export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** What the negotiation needs to know about an export. */
export interface ExportInfo {
  name: string;
  description?: string;
  size: number;
  readOnly: boolean;
}

export function transmissionFlags(e: ExportInfo): number {
  let f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
  if (e.readOnly) f |= TF_READ_ONLY;
  else f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
  return f;
}

export function serverGreeting(): Uint8Array {
  const b = new Uint8Array(18);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, NBDMAGIC);
  v.setBigUint64(8, IHAVEOPT);
  v.setUint16(16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
  return b;
}

export function optionReply(option: number, type: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(20 + data.length);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, REPLY_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, data.length);
  b.set(data, 20);
  return b;
}

function errorReply(option: number, type: number, message: string): Uint8Array {
  return optionReply(option, type, encoder.encode(message));
}

function infoExport(e: ExportInfo): Uint8Array {
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setUint16(0, INFO_EXPORT);
  v.setBigUint64(2, BigInt(e.size));
  v.setUint16(10, transmissionFlags(e));
  return b;
}

function infoBlockSize(): Uint8Array {
  const b = new Uint8Array(14);
  const v = new DataView(b.buffer);
  v.setUint16(0, INFO_BLOCK_SIZE);
  v.setUint32(2, 1);
  v.setUint32(6, PREFERRED_BLOCK);
  v.setUint32(10, MAX_PAYLOAD);
  return b;
}

function infoString(type: number, text: string): Uint8Array {
  const s = encoder.encode(text);
  const b = new Uint8Array(2 + s.length);
  new DataView(b.buffer).setUint16(0, type);
  b.set(s, 2);
  return b;
}

/** The result of one option: bytes to send, and whether negotiation ended. */
export interface OptionOutcome {
  replies: Uint8Array[];
  /** Transmission starts on this export once the replies are sent. */
  selected?: ExportInfo;
  /** Close the connection once the replies are sent. */
  close?: boolean;
  /** Why the connection closes, for the log. */
  reason?: string;
}

/**
 * Server side of fixed newstyle negotiation. Feed it the client flags, then each
 * option; it answers with reply bytes and eventually a selected export or a close.
 */
export class Negotiation {
  noZeroes = false;
  constructor(
    private readonly lookup: (name: string) => ExportInfo | undefined,
    private readonly list: () => ExportInfo[],
  ) {}

  /** Returns an error message when the client flags are unacceptable (the connection must close). */
  clientFlags(flags: number): string | undefined {
    if (flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) {
      return `unknown client flags 0x${flags.toString(16)} (garbage before the handshake?)`;
    }
    if (!(flags & FLAG_C_FIXED_NEWSTYLE)) return "client does not support fixed newstyle negotiation";
    this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
    return undefined;
  }

  option(option: number, data: Uint8Array): OptionOutcome {
    switch (option) {
      case OPT_EXPORT_NAME:
        return this.exportName(data);
      case OPT_ABORT:
        return { replies: [optionReply(option, REP_ACK)], close: true, reason: "client aborted negotiation" };
      case OPT_LIST:
        if (data.length !== 0) {
          return { replies: [errorReply(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data")] };
        }
        return {
          replies: [
            ...this.list().map((e) => {
              const name = encoder.encode(e.name);
              const body = new Uint8Array(4 + name.length);
              new DataView(body.buffer).setUint32(0, name.length);
              body.set(name, 4);
              return optionReply(option, REP_SERVER, body);
            }),
            optionReply(option, REP_ACK),
          ],
        };
      case OPT_INFO:
      case OPT_GO:
        return this.infoOrGo(option, data);
      case OPT_STARTTLS:
        return {
          replies: [errorReply(option, REP_ERR_POLICY, "TLS is not offered on the agent's NBD socket")],
        };
      default:
        return { replies: [errorReply(option, REP_ERR_UNSUP, `option ${option} is not supported`)] };
    }
  }

  private decodeName(bytes: Uint8Array): string | undefined {
    try {
      return decoder.decode(bytes);
    } catch {
      return undefined;
    }
  }

  private exportName(data: Uint8Array): OptionOutcome {
    const name = this.decodeName(data);
    const e = name === undefined ? undefined : this.lookup(name);
    if (!e) {
      // NBD_OPT_EXPORT_NAME cannot carry an error: the spec requires closing
      return { replies: [], close: true, reason: `unknown export "${name ?? "(invalid UTF-8)"}"` };
    }
    const b = new Uint8Array(this.noZeroes ? 10 : 134);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, BigInt(e.size));
    v.setUint16(8, transmissionFlags(e));
    return { replies: [b], selected: e };
  }

  private infoOrGo(option: number, data: Uint8Array): OptionOutcome {
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (data.length < 6) return { replies: [errorReply(option, REP_ERR_INVALID, "option data too short")] };
    const nameLen = v.getUint32(0);
    if (4 + nameLen + 2 > data.length) {
      return { replies: [errorReply(option, REP_ERR_INVALID, "export name length exceeds option data")] };
    }
    const count = v.getUint16(4 + nameLen);
    if (4 + nameLen + 2 + 2 * count !== data.length) {
      return {
        replies: [
          errorReply(option, REP_ERR_INVALID, "information request count does not match option length"),
        ],
      };
    }
    const name = this.decodeName(data.subarray(4, 4 + nameLen));
    if (name === undefined) {
      return { replies: [errorReply(option, REP_ERR_INVALID, "export name is not UTF-8")] };
    }
    const e = this.lookup(name);
    if (!e) return { replies: [errorReply(option, REP_ERR_UNKNOWN, `unknown export "${name}"`)] };
    const requested = new Set<number>();
    for (let i = 0; i < count; i++) requested.add(v.getUint16(4 + nameLen + 2 + 2 * i));
    const replies = [optionReply(option, REP_INFO, infoExport(e))];
    // block size is always sent: clients that did not ask may still honour it
    replies.push(optionReply(option, REP_INFO, infoBlockSize()));
    if (requested.has(INFO_NAME)) replies.push(optionReply(option, REP_INFO, infoString(INFO_NAME, e.name)));
    if (requested.has(INFO_DESCRIPTION) && e.description) {
      replies.push(optionReply(option, REP_INFO, infoString(INFO_DESCRIPTION, e.description)));
    }
    replies.push(optionReply(option, REP_ACK));
    return option === OPT_GO ? { replies, selected: e } : { replies };
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
 * Checks a request against the export. Returns 0 when it may proceed, otherwise
 * the NBD error to reply with (the payload of a rejected write is still consumed).
 */
export function validateRequest(r: Request, size: number, readOnly: boolean): number {
  const known = CMD_FLAG_FUA | CMD_FLAG_NO_HOLE;
  if (r.flags & ~known) return EINVAL;
  let pastEnd = EINVAL;
  switch (r.type) {
    case CMD_READ:
      if (r.length > MAX_PAYLOAD) return EINVAL;
      break;
    case CMD_WRITE:
      if (r.length > MAX_PAYLOAD) return EINVAL;
      pastEnd = ENOSPC; // the spec's choice for writes beyond the end
      break;
    case CMD_WRITE_ZEROES:
      pastEnd = ENOSPC;
      break;
    case CMD_TRIM:
      break;
    case CMD_FLUSH:
      return r.offset === 0 && r.length === 0 ? 0 : EINVAL;
    default:
      return EINVAL;
  }
  if (r.offset + r.length > size) return pastEnd;
  if (readOnly && r.type !== CMD_READ) return EPERM;
  return 0;
}

export function commandName(type: number): string {
  return ["READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"][type] ??
    `unknown(${type})`;
}
