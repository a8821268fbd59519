// The journal ring's on-disk layout (native/journal.c), for tests that write into a ring file
// as a crashed gateway would have left it, or damage it: a 4 KiB superblock, then records at
// logical positions modulo the data size; a record never straddles a lap's end (a Wrap filler,
// or a gap shorter than a header, ends the lap).
import { encodeRecord, HEADER_SIZE, Kind, type RecordHeader } from "../../src/record/record.ts";

export const DATA_START = 4096;
/** The checkpoint slots in the superblock (two, alternating by generation). */
export const CHECKPOINT_SLOTS = [2048, 2560];

/** Where a record of `len` bytes goes at or after `pos`, and the Wrap filler to write first, if any. */
export function place(
  dataSize: number,
  pos: number,
  len: number,
): { at: number; filler?: { pos: number; bytes: Uint8Array } } {
  const inLap = pos % dataSize;
  if (inLap + len <= dataSize) return { at: pos };
  const next = pos - inLap + dataSize;
  if (dataSize - inLap < HEADER_SIZE) return { at: next };
  const h: RecordHeader = {
    kind: Kind.Wrap,
    flags: 0,
    volume: 0,
    length: dataSize - inLap,
    seq: 0,
    offset: 0,
    time: 0,
    pos,
  };
  return { at: next, filler: { pos, bytes: encodeRecord(h) } };
}

/** Writes bytes at logical positions of the ring file, and syncs it. */
export function writeAt(path: string, dataSize: number, items: { pos: number; bytes: Uint8Array }[]): void {
  const f = Deno.openSync(path, { read: true, write: true });
  try {
    for (const { pos, bytes } of items) {
      f.seekSync(DATA_START + (pos % dataSize), Deno.SeekMode.Start);
      let at = 0;
      while (at < bytes.length) at += f.writeSync(bytes.subarray(at));
    }
    f.syncDataSync();
  } finally {
    f.close();
  }
}

/** Flips one bit of the byte at a file offset. */
export function flipByte(path: string, at: number): void {
  const f = Deno.openSync(path, { read: true, write: true });
  try {
    const b = new Uint8Array(1);
    f.seekSync(at, Deno.SeekMode.Start);
    f.readSync(b);
    b[0] ^= 0x10;
    f.seekSync(at, Deno.SeekMode.Start);
    f.writeSync(b);
  } finally {
    f.close();
  }
}
