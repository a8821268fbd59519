// Framing of the agent ↔ local gateway link: u32 length (of type + body), u8 type,
// body. Control frames carry JSON; records and acknowledgements are binary.
import { HEADER_SIZE, MAX_PAYLOAD } from "../record/record.ts";
import type { ConnReader } from "../io/conn-reader.ts";

export const enum FrameType {
  Challenge = 1,
  Hello = 2,
  Welcome = 3,
  Denied = 4,
  Open = 5,
  Opened = 6,
  Record = 7,
  Accepted = 8,
  Durable = 9,
  Error = 10,
  Control = 11,
  // between sites (local gateway → remote gateway), and gateway → standby agent
  SiteHello = 20,
  SiteWelcome = 21,
  HashRequest = 22,
  Hashes = 23,
  SyncDone = 24,
  Ping = 25,
  Pong = 26,
  /** A record whose payload is deflated (src/record/deflate.ts), local gateway → remote gateway. */
  RecordDeflated = 27,
  /** A named checkpoint {volume, name, seq}, right after the record it names in a site stream. */
  Checkpoint = 28,
  // data recovery: chunk operations on a volume copy, and their answers
  ChunkOp = 30,
  ChunkReply = 31,
}

export const FRAME_HEADER = 5;
/** Largest frame: a record of the largest NBD payload. */
export const MAX_FRAME = 1 + HEADER_SIZE + MAX_PAYLOAD;
/** Control frames are small; anything larger is refused before it is buffered. */
export const MAX_CONTROL_FRAME = 1024 * 1024;
/** 16 bytes per chunk: 64 MiB covers 4 Mi chunks (4 TiB at 1 MiB chunks). */
export const MAX_HASHES_FRAME = 64 * 1024 * 1024 + 17;

export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FrameError";
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function jsonFrame(type: FrameType, value: unknown): Uint8Array {
  const body = encoder.encode(JSON.stringify(value));
  const b = new Uint8Array(FRAME_HEADER + body.length);
  new DataView(b.buffer).setUint32(0, 1 + body.length);
  b[4] = type;
  b.set(body, FRAME_HEADER);
  return b;
}

/** Writes a frame header into the 5 bytes before a body laid out at b[at+5..]. */
export function writeFrameHeader(b: Uint8Array, at: number, type: FrameType, bodyLength: number): void {
  new DataView(b.buffer, b.byteOffset + at, FRAME_HEADER).setUint32(0, 1 + bodyLength);
  b[at + 4] = type;
}

/** Accepted / Durable: cumulative sequence number for one volume. */
export function seqFrame(
  type: FrameType.Accepted | FrameType.Durable,
  volume: number,
  seq: number,
): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER + 12);
  const v = new DataView(b.buffer);
  v.setUint32(0, 13);
  b[4] = type;
  v.setUint32(5, volume);
  v.setBigUint64(9, BigInt(seq));
  return b;
}

export function decodeSeqFrame(body: Uint8Array): { volume: number; seq: number } {
  if (body.length !== 12) throw new FrameError(`acknowledgement frame of ${body.length} bytes`);
  const v = new DataView(body.buffer, body.byteOffset, 12);
  return { volume: v.getUint32(0), seq: Number(v.getBigUint64(4)) };
}

/** Chunk hashes of a replica: volume, chunk size, the sequence number they reflect, then 16 bytes a chunk. */
export function hashesFrame(volume: number, chunkSize: number, seq: number, hashes: Uint8Array): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER + 16 + hashes.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, 1 + 16 + hashes.length);
  b[4] = FrameType.Hashes;
  v.setUint32(5, volume);
  v.setUint32(9, chunkSize);
  v.setBigUint64(13, BigInt(seq));
  b.set(hashes, FRAME_HEADER + 16);
  return b;
}

export function decodeHashes(
  body: Uint8Array,
): { volume: number; chunkSize: number; seq: number; hashes: Uint8Array } {
  if (body.length < 16 || (body.length - 16) % 16 !== 0) throw new FrameError("malformed hashes frame");
  const v = new DataView(body.buffer, body.byteOffset, 16);
  return {
    volume: v.getUint32(0),
    chunkSize: v.getUint32(4),
    seq: Number(v.getBigUint64(8)),
    hashes: body.subarray(16),
  };
}

/** Ping / Pong: a timestamp echoed back, for round-trip time. */
export function timeFrame(type: FrameType.Ping | FrameType.Pong, t: number): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER + 8);
  const v = new DataView(b.buffer);
  v.setUint32(0, 9);
  b[4] = type;
  v.setFloat64(5, t);
  return b;
}

export function decodeTime(body: Uint8Array): number {
  if (body.length !== 8) throw new FrameError("malformed ping frame");
  return new DataView(body.buffer, body.byteOffset, 8).getFloat64(0);
}

/** A frame carrying a JSON header and a binary payload: u32 JSON length, JSON, payload. */
/**
 * The head of a mixed frame (frame header, then the JSON header) whose payload of
 * `payloadLength` bytes is sent right after it, as it is: a large payload is not copied.
 */
export function mixedHead(type: FrameType, header: unknown, payloadLength = 0): Uint8Array {
  const json = encoder.encode(JSON.stringify(header));
  const b = new Uint8Array(FRAME_HEADER + 4 + json.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, 1 + 4 + json.length + payloadLength);
  b[4] = type;
  v.setUint32(5, json.length);
  b.set(json, FRAME_HEADER + 4);
  return b;
}

export function mixedFrame(type: FrameType, header: unknown, payload?: Uint8Array): Uint8Array {
  const head = mixedHead(type, header, payload?.length ?? 0);
  if (!payload) return head;
  const b = new Uint8Array(head.length + payload.length);
  b.set(head);
  b.set(payload, head.length);
  return b;
}

export function decodeMixed<T>(body: Uint8Array): { header: T; payload: Uint8Array } {
  if (body.length < 4) throw new FrameError("truncated frame");
  const n = new DataView(body.buffer, body.byteOffset, 4).getUint32(0);
  if (4 + n > body.length) throw new FrameError("frame header longer than the frame");
  return { header: decodeJson<T>(body.subarray(4, 4 + n)), payload: body.subarray(4 + n) };
}

export function decodeJson<T>(body: Uint8Array): T {
  try {
    return JSON.parse(decoder.decode(body)) as T;
  } catch {
    throw new FrameError("control frame is not valid JSON");
  }
}

export interface Frame {
  type: FrameType;
  body: Uint8Array;
}

/** The largest frame of a type: data frames up to maxFrame; hashes of a large volume are big too (16 bytes a chunk). */
export function frameLimit(type: number, maxFrame: number): number {
  return type === FrameType.Record || type === FrameType.RecordDeflated || type === FrameType.ChunkOp ||
      type === FrameType.ChunkReply
    ? maxFrame
    : type === FrameType.Hashes
    ? MAX_HASHES_FRAME
    : MAX_CONTROL_FRAME;
}

/**
 * Reads one frame. Returns undefined at a clean end of stream between frames;
 * throws FrameError on a malformed or oversized frame or a stream cut mid-frame.
 * Bodies get their own buffer, but a record's body goes where `recordBody` says (a buffer the
 * caller reuses once it is done with the record).
 */
export async function readFrame(
  r: ConnReader,
  maxFrame = MAX_FRAME,
  recordBody?: (n: number) => Uint8Array,
): Promise<Frame | undefined> {
  if (!await r.fill(FRAME_HEADER)) {
    if (r.buffered > 0) throw new FrameError("stream ended inside a frame header");
    return undefined;
  }
  const h = r.take(FRAME_HEADER);
  const len = new DataView(h.buffer, h.byteOffset, 4).getUint32(0);
  const type = h[4] as FrameType;
  if (len < 1) throw new FrameError("empty frame");
  const limit = frameLimit(type, maxFrame);
  if (len > limit) throw new FrameError(`frame of ${len} bytes exceeds the ${limit}-byte limit`);
  if (recordBody && type === FrameType.Record) {
    const body = recordBody(len - 1);
    if (!await r.readInto(body)) throw new FrameError("stream ended inside a frame");
    return { type, body };
  }
  const body = await r.readExact(len - 1);
  if (!body) throw new FrameError("stream ended inside a frame");
  return { type, body };
}
