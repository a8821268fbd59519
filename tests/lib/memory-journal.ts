// The pieces of an in-memory journal the sender's unit tests fake: a volume, its records as
// journal entries, a cursor that reads them in order from a position and waits for more when it
// has read them all, and a journal of one volume made of them.
import type { Cursor, JournalEntry, VolumeInfo } from "../../src/journal/journal.ts";
import { encodeRecord, Kind, type RecordHeader } from "../../src/record/record.ts";

/** A 1 MiB volume of agent a1 with nothing written yet. */
export function testVolume(): VolumeInfo {
  return {
    id: 1,
    agent: "a1",
    name: "vol0",
    size: 1 << 20,
    mirrorPath: "/nonexistent",
    lastSeq: 0,
    durableSeq: 0,
    known: true,
  };
}

/** A record of the volume at journal position pos: a write carries 512 bytes filled with its seq. */
export function entryAt(vol: VolumeInfo, kind: Kind, seq: number, pos: number): JournalEntry {
  const write = kind === Kind.Write;
  const header: RecordHeader = {
    kind,
    flags: 0,
    volume: vol.id,
    length: write ? 512 : 0,
    seq,
    offset: 0,
    time: Date.now(),
    pos,
  };
  const bytes = encodeRecord(header, write ? new Uint8Array(512).fill(seq) : undefined);
  return { header, bytes, length: bytes.length, pos, end: pos + bytes.length };
}

export function memoryCursor(entries: () => JournalEntry[], more: () => Promise<void>, from: number) {
  let position = from;
  const c = {
    released: from,
    required: true,
    get ready() {
      return entries().some((e) => e.pos >= position);
    },
    // typed as the journal's: the sender calls it as it calls a real cursor
    next: (async (_max, o = {}) => {
      while (!o.signal?.aborted) {
        const out = entries().filter((e) => e.pos >= position);
        if (out.length > 0) {
          position = out[out.length - 1].end;
          return out;
        }
        await more();
      }
      return [];
    }) satisfies Cursor["next"],
    release: (pos: number) => c.released = Math.max(c.released, pos),
    rewind: (pos: number) => position = Math.max(pos, c.released),
  };
  return c;
}

/** A journal in memory; `durableReads` counts the looks at its durable position. */
export class MemoryJournal {
  entries: JournalEntry[] = [];
  private waiters: (() => void)[] = [];
  tail = 0;
  durable = 0;
  durableReads = 0;
  maxLagMs = 0;
  constructor(readonly vol: VolumeInfo) {}

  get positions() {
    const look = () => (this.durableReads++, this.durable);
    return {
      tail: this.tail,
      get durable() {
        return look();
      },
    };
  }

  append(seq: number): void {
    const e = entryAt(this.vol, Kind.Write, seq, this.durable);
    this.entries.push(e);
    this.durable = e.end;
    this.vol.lastSeq = this.vol.durableSeq = seq;
    this.wakeAll();
  }

  volumes() {
    return [this.vol];
  }

  volume(id: number) {
    return id === this.vol.id ? this.vol : undefined;
  }

  wakeAll() {
    for (const w of this.waiters.splice(0)) w();
  }

  changed(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  dropCursor() {}

  cursor(_name: string, from: number) {
    return memoryCursor(() => this.entries, () => new Promise<void>((r) => this.waiters.push(r)), from);
  }
}
