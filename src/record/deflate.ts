// Compression of records on the link between sites (a task's mirror strategy, compression on):
// the record's 72-byte header travels as it is and its payload deflated (raw DEFLATE,
// node:zlib), in a frame type of its own, only when that saves bytes. The receiver inflates
// the payload to exactly the header's length and then verifies the record as any other: the
// payload checksum is over the uncompressed bytes, so a record that inflates to anything else
// is refused like a corrupt one.
import { deflateRawSync, inflateRawSync } from "node:zlib";
import { decodeHeader, HEADER_SIZE, Kind, RecordError } from "./record.ts";

/** Payloads smaller than this are sent as they are (too little to gain). */
const MIN_PAYLOAD = 512;

/** The frame body of a compressed record, or undefined when compressing does not pay. */
export function deflateRecord(record: Uint8Array): Uint8Array | undefined {
  const payload = record.subarray(HEADER_SIZE);
  // byte 4 is the kind: only writes carry a payload worth compressing
  if (payload.length < MIN_PAYLOAD || record[4] !== Kind.Write) return undefined;
  const packed = deflateRawSync(payload, { level: 1 });
  // below 7/8 of the payload it saves enough to be worth the receiver's work
  if (packed.length > payload.length - (payload.length >> 3)) return undefined;
  const out = new Uint8Array(HEADER_SIZE + packed.length);
  out.set(record.subarray(0, HEADER_SIZE));
  out.set(packed, HEADER_SIZE);
  return out;
}

/**
 * The record a compressed frame body carries: its header checked, its payload inflated to the
 * header's length (never more is allocated). Throws RecordError on anything malformed; the
 * caller verifies the payload checksum as for any record.
 */
export function inflateRecord(body: Uint8Array, maxPayload: number): Uint8Array {
  const h = decodeHeader(body, maxPayload);
  if (h.kind !== Kind.Write || h.length < MIN_PAYLOAD) {
    throw new RecordError(`a compressed record must be a write of at least ${MIN_PAYLOAD} bytes`);
  }
  let payload: Uint8Array;
  try {
    payload = inflateRawSync(body.subarray(HEADER_SIZE), { maxOutputLength: h.length });
  } catch (e) {
    throw new RecordError(`compressed record ${h.seq}: ${(e as Error).message}`);
  }
  if (payload.length !== h.length) {
    throw new RecordError(
      `compressed record ${h.seq} inflates to ${payload.length} bytes, its header says ${h.length}`,
    );
  }
  const out = new Uint8Array(HEADER_SIZE + h.length);
  out.set(body.subarray(0, HEADER_SIZE));
  out.set(payload, HEADER_SIZE);
  return out;
}
