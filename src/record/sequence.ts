// Which records a replica accepts, per volume. Captured writes carry consecutive
// sequence numbers; synchronisation chunks and markers sit between them and carry
// the number of the record before them. A SyncBegin "rebases" the copy: the next
// captured write is accepted whatever its number (the synchronisation makes the
// content right), and chunks before that write carry 0.
import { betweenSeqs, Kind } from "./record.ts";

export interface SeqState {
  lastSeq: number;
  /** After a SyncBegin, until the next captured write. */
  rebase: boolean;
}

export type Verdict = "apply" | "skip" | "gap";

/** Decides what to do with a record and, when it is applied, advances the state. */
export function admit(st: SeqState, h: { kind: Kind; flags: number; seq: number }): Verdict {
  if (h.kind === Kind.SyncBegin) {
    st.rebase = true;
    return "apply";
  }
  if (betweenSeqs(h)) {
    if (st.rebase) return h.seq === 0 ? "apply" : "gap";
    if (h.seq === st.lastSeq) return "apply";
    return h.seq < st.lastSeq ? "skip" : "gap";
  }
  if (st.rebase) {
    st.rebase = false;
    st.lastSeq = h.seq;
    return "apply";
  }
  if (h.seq <= st.lastSeq) return "skip";
  if (h.seq !== st.lastSeq + 1) return "gap";
  st.lastSeq = h.seq;
  return "apply";
}
