// Named checkpoints in a site stream (src/replication/sender.ts, marks.ts): a checkpoint frame
// follows the record it names in the same ordered stream, goes at once when that record went
// already, and is sent again at the start of a session for the records the peer holds (a peer
// that was away or cut off). The journal is a fake in memory: only the order of frames matters.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { type Channel, type PeerReport, Sender } from "../src/replication/sender.ts";
import { CheckpointMarks } from "../src/replication/marks.ts";
import type { CursorStore, StoredCursor, StoredVolume } from "../src/replication/cursor-store.ts";
import type { Journal, JournalEntry } from "../src/journal/journal.ts";
import { decodeHeader, HEADER_SIZE, Kind } from "../src/record/record.ts";
import { decodeJson, FRAME_HEADER, FrameType } from "../src/wire/frames.ts";
import { setLogSink } from "../src/log.ts";
import { entryAt, memoryCursor, testVolume } from "./lib/memory-journal.ts";

await (await import("../native/build.ts")).buildNative();
setLogSink(() => {});
const t = suite("checkpoints in the stream");

const VOL = testVolume();

/** A journal of records in memory: a cursor reads them in order and waits for more. */
class FakeJournal {
  entries: JournalEntry[] = [];
  private waiters: (() => void)[] = [];
  positions = { tail: 0, durable: 0 };

  append(kind: Kind, seq: number): void {
    const e = entryAt(VOL, kind, seq, this.positions.durable);
    this.entries.push(e);
    this.positions.durable = e.end;
    VOL.lastSeq = VOL.durableSeq = seq;
    for (const w of this.waiters.splice(0)) w();
  }

  volumes() {
    return [VOL];
  }

  volume(id: number) {
    return id === VOL.id ? VOL : undefined;
  }

  wakeAll() {
    for (const w of this.waiters.splice(0)) w();
  }

  cursor(_name: string, from: number) {
    return memoryCursor(() => this.entries, () => new Promise<void>((r) => this.waiters.push(r)), from);
  }
}

/** What went on the wire, in order: "r<seq>" for a record, "cp:<name>@<seq>" for a checkpoint. */
class Wire implements Channel {
  frames: string[] = [];
  pending = 0; // never over the window: drained() is not waited for
  drained(signal: AbortSignal): Promise<void> {
    return new Promise((r) => signal.addEventListener("abort", () => r()));
  }
  send(frame: Uint8Array, body?: Uint8Array): void {
    const type = frame[4];
    if (type === FrameType.Record) {
      this.frames.push(`r${decodeHeader(body!.subarray(0, HEADER_SIZE), 1 << 20).seq}`);
    } else if (type === FrameType.Checkpoint) {
      const m = decodeJson<{ volume: number; name: string; seq: number }>(frame.subarray(FRAME_HEADER));
      assert.is(m.volume, VOL.id);
      this.frames.push(`cp:${m.name}@${m.seq}`);
    }
  }
}

const store = {
  load: (): Promise<StoredCursor> =>
    Promise.resolve({
      pos: 0,
      volumes: new Map<number, StoredVolume>([[VOL.id, { ackedSeq: 0, state: "consistent", voidUpTo: 0 }]]),
    }),
  save: () => Promise.resolve(),
} as unknown as CursorStore;

async function settle(until: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !until(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(until(), "the stream went on");
}

t("marks: the names at a record, and every name up to a sequence", () => {
  const m = new CheckpointMarks();
  assert.ok(m.add(1, "b", 7));
  assert.ok(m.add(1, "a", 3));
  assert.ok(m.add(1, "c", 7));
  assert.not.ok(m.add(1, "b", 7), "the same name again");
  assert.equal(m.at(1, 7), ["b", "c"]);
  assert.is(m.at(1, 4), undefined);
  assert.is(m.at(2, 7), undefined);
  assert.equal(m.upTo(1, 6), [{ name: "a", seq: 3 }]);
  assert.equal(m.upTo(1, 7).map((x) => x.name), ["a", "b", "c"]);
});

t(
  "a checkpoint follows its record; a late one goes at once; a new session repeats what the peer holds",
  async () => {
    const j = new FakeJournal();
    const sender = await Sender.open({
      name: "site:dr1",
      journal: j as unknown as Journal,
      store,
      source: {
        imageFd: () => -1,
        appliedPos: () => Number.MAX_SAFE_INTEGER,
        changed: () => new Promise(() => {}),
      },
      carries: () => true,
    });
    for (let seq = 1; seq <= 3; seq++) j.append(seq === 2 ? Kind.Flush : Kind.Write, seq);
    // made before the stream reached its record (a site that is behind or away)
    sender.checkpoint(VOL.id, "before-upgrade", 2);
    // not journaled yet here: it goes once record 5 does
    sender.checkpoint(VOL.id, "ahead", 5);
    const wire = new Wire();
    const s1 = sender.attach(
      wire,
      new Map<number, PeerReport>([[VOL.id, { lastSeq: 0, state: "consistent" }]]),
    );
    await settle(() => wire.frames.length >= 4);
    assert.equal(wire.frames, ["r1", "r2", "cp:before-upgrade@2", "r3"]);
    // a checkpoint of a record the stream sent already goes now, after everything sent before it
    sender.checkpoint(VOL.id, "late", 3);
    sender.checkpoint(VOL.id, "late", 3); // the same again: not sent twice
    j.append(Kind.Write, 4);
    j.append(Kind.Write, 5);
    await settle(() => wire.frames.length >= 8);
    assert.equal(wire.frames.slice(4), ["cp:late@3", "r4", "r5", "cp:ahead@5"]);
    sender.detach(s1);

    // the peer comes back holding up to 4 (it may have missed their names): they go first
    const again = new Wire();
    const s2 = sender.attach(
      again,
      new Map<number, PeerReport>([[VOL.id, { lastSeq: 4, state: "consistent" }]]),
    );
    await settle(() => again.frames.length >= 4);
    assert.equal(again.frames, ["cp:before-upgrade@2", "cp:late@3", "r5", "cp:ahead@5"]);
    sender.detach(s2);
  },
);

t.run();
