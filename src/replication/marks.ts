// The named checkpoints a sender carries in its stream (pure): per volume, the names at each
// sequence number. Each travels right after the record it names, so a peer that is behind or
// away gets it when it catches up past that record.

export interface Mark {
  name: string;
  seq: number;
}

export class CheckpointMarks {
  private readonly byVolume = new Map<number, Map<number, string[]>>();

  /** Adds a name; false when the volume already had it at this sequence. */
  add(volume: number, name: string, seq: number): boolean {
    let m = this.byVolume.get(volume);
    if (!m) this.byVolume.set(volume, m = new Map());
    const names = m.get(seq) ?? [];
    if (names.includes(name)) return false;
    m.set(seq, [...names, name]);
    return true;
  }

  /** The names at one record (undefined: none; the common case costs one map lookup). */
  at(volume: number, seq: number): string[] | undefined {
    return this.byVolume.get(volume)?.get(seq);
  }

  /** Every name at or before `seq`, oldest first. */
  upTo(volume: number, seq: number): Mark[] {
    const m = this.byVolume.get(volume);
    if (!m) return [];
    return [...m].filter(([s]) => s <= seq).sort(([a], [b]) => a - b)
      .flatMap(([s, names]) => names.map((name) => ({ name, seq: s })));
  }
}
