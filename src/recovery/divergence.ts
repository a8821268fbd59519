// Tracked divergence between two copies (pure): the chunks each side wrote since their
// common point, from dirty maps (in their own chunk size) and from journal records, put
// on the recovery's chunk grid and joined. Failback moves the union, with no scan.
import { Kind, type RecordHeader } from "../record/record.ts";

/** Chunks of `to` bytes covering chunks of `from` bytes (sorted, no repeats). */
export function rechunk(chunks: Iterable<number>, from: number, to: number): number[] {
  const out = new Set<number>();
  for (const c of chunks) {
    const first = Math.floor(c * from / to), last = Math.floor(((c + 1) * from - 1) / to);
    for (let k = first; k <= last; k++) out.add(k);
  }
  return [...out].sort((a, b) => a - b);
}

/** Adds the chunks (of `chunkSize`) a volume's data records touch; markers and other volumes are ignored. */
export function addRecordChunks(
  into: Set<number>,
  headers: Iterable<RecordHeader>,
  volume: number,
  chunkSize: number,
): void {
  for (const h of headers) {
    if (h.volume !== volume || h.length === 0) continue;
    if (h.kind !== Kind.Write && h.kind !== Kind.Trim && h.kind !== Kind.Zero) continue;
    const last = Math.floor((h.offset + h.length - 1) / chunkSize);
    for (let c = Math.floor(h.offset / chunkSize); c <= last; c++) into.add(c);
  }
}

/** One side's part of a divergence, in its own chunk size. */
export interface Part {
  what: string;
  chunkSize: number;
  chunks: Iterable<number>;
}

/** The union of every part on the recovery's grid, and a description of each part. */
export function union(parts: readonly Part[], chunkSize: number): { chunks: number[]; reason: string } {
  const all = new Set<number>();
  const said: string[] = [];
  for (const p of parts) {
    const mine = rechunk(p.chunks, p.chunkSize, chunkSize);
    for (const c of mine) all.add(c);
    said.push(`${mine.length} from ${p.what}`);
  }
  return { chunks: [...all].sort((a, b) => a - b), reason: said.join(", ") };
}
