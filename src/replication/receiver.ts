// The remote gateway's side of a site stream: verifies each record, drops what it
// already holds, appends the rest to its own journal (from which its replica and
// its standby server are fed), and acknowledges by count once a record is durable
// and applied where --ack-after says. Named checkpoints come in the same stream, after the
// record they name.
import {
  decodeHeader,
  Kind,
  MAX_PAYLOAD,
  payloadIntact,
  RecordError,
  type RecordHeader,
} from "../record/record.ts";
import { admit, type SeqState } from "../record/sequence.ts";
import type { Journal, VolumeInfo } from "../journal/journal.ts";
import { FrameType, seqFrame } from "../wire/frames.ts";
import type { CheckpointFrame } from "../wire/site-frames.ts";
import { Fifo } from "../io/fifo.ts";

/** Where the site acknowledges a volume's records: applied to the replica, or also by the standby. */
export type AckPoint = "rgp" | "rsp";

export interface SiteVolume {
  id: number;
  agent: string;
  name: string;
  size: number;
  /** The volume's acknowledgement point (its task's); absent: the site's --ack-after. */
  ack?: AckPoint;
  /** The volume's retention (its task's); absent: the site's --retention flags. */
  retention?: { windowMs: number; maxBytes?: number };
}

export interface ReceiverOptions {
  journal: Journal;
  /** Registers (or finds) a volume the site announced. */
  register: (
    agent: string,
    name: string,
    size: number,
    /** The task's retention of the volume (absent: the site's flags hold). */
    retention?: { windowMs: number; maxBytes?: number },
  ) => Promise<VolumeInfo>;
  /** The replica's state as reported to the sender. */
  copyState: (v: VolumeInfo) => "empty" | "consistent" | "inconsistent";
  /** Records a state change of the replica (SyncBegin journaled: inconsistent; first record: consistent). */
  setState: (v: VolumeInfo, state: "consistent" | "inconsistent") => void;
  /** Journal position through which the replica images are synced (it moves with the journal's events). */
  replicaPos: () => number;
  /**
   * Journal position through which the standby server of an agent has applied, or undefined if
   * the acknowledgement does not wait for it (`ack`: the volume's acknowledgement point).
   */
  standbyPos: (agent: string, ack: AckPoint | undefined) => number | undefined;
  /** The volumes of a hello, with their acknowledgement points. */
  onHello?: (volumes: { v: VolumeInfo; ack?: AckPoint }[]) => void;
  /** The agent's standby was promoted: its copies take no more records from the site. */
  promoted: (agent: string) => boolean;
  /**
   * The site's retention takes each verified record (its own duplicates dropped by the same
   * rule); returns the mark the record's acknowledgement waits for, undefined: not retained.
   * It copies what it keeps of the body.
   */
  retain?: (v: VolumeInfo, body: Uint8Array, h: RecordHeader) => number | undefined;
  /** Every retention mark up to this one is durable. */
  retained?: () => number;
  /** A named checkpoint of a volume at a sequence (the site's retention keeps the name). */
  checkpoint?: (v: VolumeInfo, name: string, seq: number) => Promise<void>;
  send: (frame: Uint8Array) => void;
  /**
   * Besides the journal, what moves the acknowledgement point (the standbys' acknowledgements, the
   * retention's sync): each resolves at that thing's next move, or when the signal aborts.
   */
  moves?: ((signal: AbortSignal) => Promise<void>)[];
}

interface Pending {
  no: number;
  /** The record's end in the journal: -1 for one skipped (nothing moves for it), Infinity until appended. */
  end: number;
  agent: string;
  ack?: AckPoint;
  /** The retention mark it waits for (0: none). */
  mark: number;
}

export class Receiver {
  private map = new Map<number, VolumeInfo>();
  private acks = new Map<number, AckPoint | undefined>();
  private seqs = new Map<number, SeqState>();
  private received = 0;
  private ackedNo = 0;
  private pending = new Fifo<Pending>();
  private readonly stop = new AbortController();
  /** Records dropped because the replica already held them (after a reconnect). */
  duplicates = 0;

  constructor(private readonly o: ReceiverOptions) {
    void this.watch(() => o.journal.changed());
    for (const m of o.moves ?? []) void this.watch(m);
  }

  /** Acknowledges again at each move of one thing the acknowledgements wait for (one wait at a time). */
  private async watch(next: (signal: AbortSignal) => Promise<void>): Promise<void> {
    const { signal } = this.stop;
    // a closed journal answers changed() at once: the loop ends with it
    while (!signal.aborted && this.o.journal.open) {
      await next(signal);
      if (!signal.aborted) this.ack();
    }
  }

  /** Registers the announced volumes and describes the local copies: what the sender resumes from. */
  async hello(volumes: SiteVolume[]): Promise<{ id: number; lastSeq: number; state: string }[]> {
    const out = [];
    const points = [];
    for (const sv of volumes) {
      const v = await this.o.register(sv.agent, sv.name, sv.size, sv.retention);
      this.map.set(sv.id, v);
      this.acks.set(v.id, sv.ack);
      points.push({ v, ack: sv.ack });
      this.seqs.set(v.id, { lastSeq: v.lastSeq, rebase: false });
      out.push({ id: sv.id, lastSeq: v.lastSeq, state: this.o.copyState(v) });
    }
    this.o.onHello?.(points);
    return out;
  }

  /** The journal volume behind a sender's volume id. */
  volume(senderId: number): VolumeInfo | undefined {
    return this.map.get(senderId);
  }

  /**
   * Verifies one record and starts journaling it: a corrupt or out-of-order record throws at once
   * (the stream is reset); the promise resolves once the journal holds it. Records taken before
   * that go to the journal in order, together (Journal.append batches a turn's appends). The
   * body is not kept past this call: the journal and the retention copy it.
   */
  record(body: Uint8Array): Promise<void> {
    const h = decodeHeader(body, MAX_PAYLOAD);
    if (!payloadIntact(body, h)) throw new RecordError(`record ${h.seq}: payload checksum mismatch`);
    const v = this.map.get(h.volume);
    if (!v) throw new RecordError(`record for volume ${h.volume}, which the site did not announce`);
    if (h.kind === Kind.Wrap) throw new RecordError("wrap records do not travel");
    if (
      h.kind !== Kind.Flush && h.kind !== Kind.SyncBegin && h.kind !== Kind.SyncEnd &&
      h.offset + h.length > v.size
    ) {
      throw new RecordError(`record ${h.seq} of ${v.name} reaches past the end of the volume`);
    }
    const st = this.seqs.get(v.id)!;
    // a promoted copy is the primary now: what the old primary's site still sends is dropped, and
    // acknowledged: acknowledgements count records in stream order, so holding one back would stall
    // every other volume of the link; the sender keeps what a promoted copy lacks itself
    // (Sender.failedOver, docs/decisions.md)
    const verdict = this.o.promoted(v.agent) ? "skip" : admit(st, h);
    const no = ++this.received;
    if (verdict === "gap") {
      throw new RecordError(`record ${h.seq} of ${v.agent}/${v.name} out of sequence (have ${st.lastSeq})`);
    }
    // the retention admits by its own state: after a restart it may lack records the journal holds
    const mark = verdict === "skip" && this.o.promoted(v.agent) ? 0 : this.o.retain?.(v, body, h) ?? 0;
    if (verdict === "skip") {
      this.duplicates++;
      this.pending.push({ no, end: -1, agent: v.agent, ack: this.acks.get(v.id), mark });
      this.ack(); // nothing may move for it
      return Promise.resolve();
    }
    if (h.kind === Kind.SyncBegin) this.o.setState(v, "inconsistent");
    // in stream order now, whatever the appends' timing: acknowledgements count records in that order
    const p: Pending = { no, end: Infinity, agent: v.agent, ack: this.acks.get(v.id), mark };
    this.pending.push(p);
    const size = body.length;
    return this.o.journal.append(v.id, body, h).then(() => {
      p.end = h.pos + size;
      if (h.kind !== Kind.SyncBegin && h.kind !== Kind.SyncEnd && this.o.copyState(v) === "empty") {
        this.o.setState(v, "consistent");
      }
    });
  }

  /** A checkpoint frame: names a record this stream brought before it (not counted: no acknowledgement). */
  async checkpoint(m: CheckpointFrame): Promise<void> {
    const v = this.map.get(m.volume);
    if (!v) throw new RecordError(`checkpoint for volume ${m.volume}, which the site did not announce`);
    await this.o.checkpoint?.(v, m.name, m.seq);
  }

  /** Acknowledges every record now durable in the journal and applied where required. */
  private ack(): void {
    if (this.pending.length === 0) return;
    const durable = this.o.journal.positions.durable;
    const replica = this.o.replicaPos();
    const retained = this.o.retained?.() ?? 0;
    let last = this.ackedNo;
    while (this.pending.length > 0) {
      const p = this.pending.first!;
      if (p.mark > retained) break;
      if (p.end >= 0) {
        const standby = this.o.standbyPos(p.agent, p.ack);
        if (p.end > durable || p.end > replica || (standby !== undefined && p.end > standby)) break;
      }
      last = p.no;
      this.pending.shift();
    }
    if (last > this.ackedNo) {
      this.ackedNo = last;
      this.o.send(seqFrame(FrameType.Accepted, 0, last));
    }
  }

  close(): void {
    this.stop.abort();
  }

  status() {
    return {
      received: this.received,
      acked: this.ackedNo,
      duplicates: this.duplicates,
      waiting: this.pending.length,
    };
  }
}
