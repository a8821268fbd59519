// A reader's position and the journal's tail: the journal reclaims what a peer acknowledged only
// once the peer's position past it is saved. Freed first, a gateway killed in between came back
// with the stored position behind the journal's tail, took the peer for one that lost its place
// and resynchronised its copies (inconsistent meanwhile) for nothing: a remote gateway killed
// under load left its standby's copy, in the middle of such a synchronisation, not a prefix of
// the writes (tests/replication-faults.test.ts).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { type Channel, type PeerReport, Sender } from "../src/replication/sender.ts";
import type { CursorStore, StoredCursor, StoredVolume } from "../src/replication/cursor-store.ts";
import type { Journal } from "../src/journal/journal.ts";
import { MemoryJournal, testVolume } from "./lib/memory-journal.ts";
import { waitFor } from "./lib/cluster.ts";
import { FrameType } from "../src/wire/frames.ts";
import { setLogSink } from "../src/log.ts";

setLogSink(() => {});
const t = suite("sender position");

/** A store whose saves complete when the test says. */
class SlowStore {
  pending: { pos: number; done: () => void }[] = [];
  saved = 0;
  load(): Promise<StoredCursor> {
    return Promise.resolve({
      pos: 0,
      volumes: new Map<number, StoredVolume>([[1, { ackedSeq: 0, state: "consistent", voidUpTo: 0 }]]),
    });
  }
  save(_name: string, pos: number): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    this.pending.push({ pos, done: () => (this.saved = pos, resolve()) });
    return promise;
  }
  remove(): Promise<void> {
    return Promise.resolve();
  }
}

class Wire implements Channel {
  records = 0;
  pending = 0;
  drained(): Promise<void> {
    return new Promise(() => {});
  }
  send(frame: Uint8Array): void {
    if (frame[4] === FrameType.Record) this.records++;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const settle = (until: () => boolean, what: string) => waitFor(until, 1000, what, 5);
/** Completes each save as it comes, until `until` holds. */
const savingAll = (store: SlowStore, until: () => boolean, what: string) =>
  settle(() => {
    for (const p of store.pending.splice(0)) p.done();
    return until();
  }, what);

/** A sender of a journal holding records 1 to 3 to a peer holding those up to `held`. */
async function open(held: number) {
  const j = new MemoryJournal(testVolume());
  for (let seq = 1; seq <= 3; seq++) j.append(seq);
  const store = new SlowStore();
  const sender = await Sender.open({
    name: "site:dr1",
    journal: j as unknown as Journal,
    store: store as unknown as CursorStore,
    source: { imageFd: () => -1, appliedPos: () => j.durable, changed: () => j.changed() },
    carries: () => true,
  });
  const wire = new Wire();
  const reports = new Map<number, PeerReport>([[1, { lastSeq: held, state: "consistent" }]]);
  return { j, store, sender, wire, session: sender.attach(wire, reports) };
}

t("what a peer acknowledged is reclaimed once its position is saved, not before", async () => {
  const { j, store, sender, wire, session } = await open(0);
  try {
    await settle(() => wire.records === 3, "the records went");
    session.onAck(3);
    await settle(() => store.pending.length === 1, "the position is being saved");
    assert.is(sender.theCursor.released, 0, "nothing reclaimed while the save is under way");
    assert.is(sender.released, j.durable, "the peer's position (its lag) moved at the acknowledgement");
    store.pending.shift()!.done();
    await settle(() => sender.theCursor.released === j.durable, "reclaimed once saved");
    assert.is(store.saved, j.durable);
  } finally {
    sender.detach(session);
    sender.close();
  }
});

t("records passed without sending are reclaimed after a save too, which comes by itself", async () => {
  // the peer holds them already (it reported so): nothing is sent and nothing will be acknowledged
  const { j, store, sender, wire, session } = await open(3);
  try {
    await sleep(50);
    assert.is(wire.records, 0);
    assert.is(sender.theCursor.released, 0, "not reclaimed before a save");
    assert.is(sender.released, j.durable, "the stream passed the held records");
    // saves come by themselves, each of the position when it began
    await savingAll(store, () => sender.theCursor.released === j.durable, "reclaimed once saved");
    assert.is(store.saved, j.durable);
  } finally {
    sender.detach(session);
    sender.close();
  }
});

t("a peer acknowledging record by record has its position saved at most ten times a second", async () => {
  // a save each time kept a gateway's JavaScript thread in the database a tenth of its time
  const { j, store, sender, wire, session } = await open(0);
  try {
    for (let seq = 4; seq <= 40; seq++) j.append(seq);
    await settle(() => wire.records === 40, "the records went");
    let saves = 0;
    const t0 = performance.now();
    for (let no = 1; no <= 40; no++) {
      session.onAck(no);
      for (const p of store.pending.splice(0)) (saves++, p.done());
      await sleep(5);
    }
    const elapsed = performance.now() - t0;
    assert.ok(saves <= Math.ceil(elapsed / 100) + 1, `${saves} saves in ${elapsed.toFixed(0)} ms`);
    await savingAll(
      store,
      () => sender.theCursor.released === j.durable,
      "the last acknowledgement saved too",
    );
  } finally {
    sender.detach(session);
    sender.close();
  }
});

t.run();
