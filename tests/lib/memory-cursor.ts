// A journal cursor over records held in memory (the fake journals of the sender's unit tests):
// reads them in order from a position and waits for more when it has read them all.
import type { JournalEntry } from "../../src/journal/journal.ts";

export function memoryCursor(entries: () => JournalEntry[], more: () => Promise<void>, from: number) {
  let position = from;
  const c = {
    released: from,
    required: true,
    next: async (_max: number, signal?: { aborted: boolean }) => {
      while (!signal?.aborted) {
        const out = entries().filter((e) => e.pos >= position);
        if (out.length > 0) {
          position = out[out.length - 1].end;
          return out;
        }
        await more();
      }
      return [];
    },
    release: (pos: number) => c.released = Math.max(c.released, pos),
    rewind: (pos: number) => position = Math.max(pos, c.released),
  };
  return c;
}
