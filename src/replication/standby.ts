// A standby server's copy of a volume (the paper's RSP): while standby, the agent
// applies the records its site's gateway streams to it, in order, and
// acknowledges them once they are on stable storage. Its position and state are
// kept in a slot file (overwritten in place, one sector write and fdatasync per
// applied batch) so a restart resumes where the disk is.
import { logger } from "../log.ts";
import * as native from "../native/mod.ts";
import type { BatchOp } from "../native/mod.ts";
import { decodeHeader, Kind, MAX_PAYLOAD, payloadIntact, RecordError, recordOp } from "../record/record.ts";
import { admit, type SeqState } from "../record/sequence.ts";
import type { Volume } from "../volume/volume.ts";
import { SlotFile } from "../io/slot-file.ts";
import { FrameType, hashesFrame, seqFrame } from "../wire/frames.ts";
import { setImmediate } from "node:timers";

const log = logger("standby");

export type StandbyState = "empty" | "consistent" | "inconsistent";

interface Persisted {
  lastSeq: number;
  state: StandbyState;
}

export class StandbyVolume {
  /** What was admitted from the stream (applied, or queued to be). */
  seq: SeqState;
  /** The position on stable storage with the data it describes: what a new link resumes after. */
  durableSeq: number;
  state: StandbyState;
  /** The gateway's journal id of this volume (records name it). */
  journalId = -1;

  private constructor(
    readonly name: string,
    readonly volume: Volume,
    private readonly file: SlotFile,
    p: Persisted,
    /** The position file of older versions, removed once the slot file holds the position. */
    private legacy: string | undefined,
  ) {
    this.seq = { lastSeq: p.lastSeq, rebase: false };
    this.durableSeq = p.lastSeq;
    this.state = p.state;
  }

  static async open(name: string, volume: Volume, dataDir: string): Promise<StandbyVolume> {
    const { file, value } = await SlotFile.open(`${dataDir}/${name}.standby.pos`);
    const legacy = `${dataDir}/${name}.standby.json`;
    let raw: unknown;
    try {
      raw = JSON.parse(value ? new TextDecoder().decode(value) : await Deno.readTextFile(legacy));
    } catch {
      // no position: a copy never replicated into, or whose progress is unknown (reported as is)
    }
    const p = valid(raw) ? raw : { lastSeq: 0, state: "empty" as const };
    return new StandbyVolume(name, volume, file, p, value ? undefined : legacy);
  }

  /**
   * Writes position and state durably, after the data they describe is synced: the position of
   * the last record applied, which is behind what was admitted while records wait in the queue.
   */
  async persist(lastSeq = this.seq.lastSeq): Promise<void> {
    await this.file.save(new TextEncoder().encode(JSON.stringify({ lastSeq, state: this.state })));
    this.durableSeq = lastSeq;
    if (this.legacy) {
      await Deno.remove(this.legacy).catch((e) => {
        if (!(e instanceof Deno.errors.NotFound)) throw e;
      });
      this.legacy = undefined;
    }
  }
}

function valid(raw: unknown): raw is Persisted {
  const p = raw as Persisted | undefined;
  return typeof p === "object" && p !== null && Number.isSafeInteger(p.lastSeq) &&
    ["empty", "consistent", "inconsistent"].includes(p.state);
}

/** Applies a gateway's stream to the standby volumes and answers its hash requests. */
export class StandbyApplier {
  private byJournalId = new Map<number, StandbyVolume>();
  private received = 0;
  /** Admitted records waiting to be applied, each with its volume's admitted position after it. */
  private queued: { v: StandbyVolume; seq: number; op?: BatchOp }[] = [];
  private running = false;
  /** The applying loop in progress (settled once it stops). */
  private loopDone: Promise<void> = Promise.resolve();
  /** Counts a link's records; acknowledgements of a batch taken before a new link go nowhere. */
  private link = 0;
  private failed: Error | undefined;
  private frozen = false;

  constructor(readonly volumes: StandbyVolume[], private readonly send: (frame: Uint8Array) => void) {}

  /** The gateway named its journal id for one of our volumes. */
  opened(name: string, journalId: number): void {
    const v = this.volumes.find((x) => x.name === name);
    if (!v) return;
    v.journalId = journalId;
    this.byJournalId.set(journalId, v);
  }

  /** A copy is no longer held (unassigned): records naming it are refused from now on. */
  forget(v: StandbyVolume): void {
    if (this.byJournalId.get(v.journalId) === v) this.byJournalId.delete(v.journalId);
  }

  /**
   * A new connection: counts start over. Records still queued were admitted (the position moved
   * past them), so they are still applied; the new link resumes after the durable position and
   * the records it resends up to the admitted one are skipped.
   */
  reset(): void {
    this.link++;
    this.received = 0;
    this.failed = undefined;
  }

  /**
   * Stops applying (the copy is promoted): what was received is applied, later records are ignored.
   * Throws when the copy could not apply what it received (a promotion must not take it silently).
   */
  async freeze(): Promise<void> {
    this.frozen = true;
    await this.drain();
  }

  /** Applies again (the copy is a standby again after a demotion). */
  thaw(): void {
    this.frozen = false;
    this.reset();
  }

  async record(body: Uint8Array): Promise<void> {
    if (this.frozen) return;
    if (this.failed) throw this.failed;
    const h = decodeHeader(body, MAX_PAYLOAD);
    if (!payloadIntact(body, h)) throw new RecordError(`record ${h.seq}: payload checksum mismatch`);
    const v = this.byJournalId.get(h.volume);
    if (!v) throw new RecordError(`record for volume ${h.volume}, which this standby does not hold`);
    if (
      h.kind !== Kind.Flush && h.kind !== Kind.SyncBegin && h.kind !== Kind.SyncEnd &&
      h.offset + h.length > v.volume.size
    ) {
      throw new RecordError(`record ${h.seq} reaches past the end of ${v.name}`);
    }
    const verdict = admit(v.seq, h);
    if (verdict === "gap") {
      throw new RecordError(`record ${h.seq} of ${v.name} out of sequence (have ${v.seq.lastSeq})`);
    }
    if (verdict === "skip") {
      this.enqueue(v);
    } else if (h.kind === Kind.SyncBegin) {
      // inconsistent must be on disk before any chunk of the synchronisation lands
      await this.drain();
      v.state = "inconsistent";
      await v.persist();
      this.enqueue(v);
    } else if (h.kind === Kind.SyncEnd) {
      await this.drain();
      v.state = "consistent";
      await v.persist();
      this.enqueue(v);
    } else {
      if (v.state === "empty") v.state = "consistent";
      this.enqueue(v, recordOp(h, body));
    }
  }

  private enqueue(v: StandbyVolume, op?: BatchOp): void {
    this.received++;
    this.queued.push({ v, seq: v.seq.lastSeq, op });
    this.kick();
  }

  private kick(): void {
    if (!this.running) {
      this.running = true;
      this.loopDone = new Promise<void>((r) => setImmediate(r)).then(() => this.loop());
    }
  }

  /** Applies what is queued: one batch per volume, fdatasync, persist, then acknowledge by count. */
  private async loop(): Promise<void> {
    try {
      while (this.queued.length > 0 && !this.failed) {
        const batch = this.queued;
        this.queued = [];
        const target = this.received;
        const link = this.link;
        // each volume's operations in order with one call, then its fdatasync
        const ops = new Map<StandbyVolume, { list: BatchOp[]; seq: number }>();
        for (const q of batch) {
          const o = ops.get(q.v) ?? { list: [], seq: q.seq };
          if (q.op) o.list.push(q.op);
          o.seq = q.seq;
          ops.set(q.v, o);
        }
        await Promise.all([...ops].map(([v, o]) => native.applyBatch(v.volume.fd, o.list, true)));
        await Promise.all([...ops].map(([v, o]) => v.persist(o.seq)));
        if (link === this.link) this.send(seqFrame(FrameType.Accepted, 0, target));
      }
    } catch (e) {
      this.failed = e as Error;
      log.error("standby volume write failed", { error: e });
    } finally {
      this.running = false;
    }
  }

  /** Waits until everything received is applied; throws what stopped the applying. */
  private async drain(): Promise<void> {
    while (this.running || this.queued.length > 0) {
      if (this.failed) break;
      this.kick();
      await this.loopDone;
    }
    if (this.failed) throw this.failed;
  }

  /** Hashes a volume for a differential synchronisation, once everything received is applied. */
  async hashes(journalId: number, chunkSize: number): Promise<Uint8Array> {
    const v = this.byJournalId.get(journalId);
    await this.drain();
    if (!v || chunkSize < 4096) return hashesFrame(journalId, chunkSize, 0, new Uint8Array(0));
    const h = await native.hashRange(v.volume.fd, 0, v.volume.size, chunkSize);
    return hashesFrame(journalId, chunkSize, v.seq.lastSeq, h);
  }
}
