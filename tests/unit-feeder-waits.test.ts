// Waits on the feeders' events, not on polls (issue 18): a promotion's check that the standby is
// level with the replica (StandbyFeeders.level) wakes on the feeder's acknowledgements, a
// synchronisation whose local image has not applied what was sent yet (Sender's syncStep) wakes
// when the image applies more, a stream whose channel holds more than its window wakes when the
// channel's queue falls, and a site's acknowledgements (Receiver) go out at the move that
// allows them (the journal, a standby's acknowledgement, the retention's sync). Each is counted by how often the condition is looked at while
// nothing happens: a poll looks every few milliseconds, an event wait does not.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { type Channel, type PeerReport, Sender } from "../src/replication/sender.ts";
import type { CursorStore, StoredCursor, StoredVolume } from "../src/replication/cursor-store.ts";
import type { Journal } from "../src/journal/journal.ts";
import type { MirrorApplier } from "../src/mirror/applier.ts";
import { StandbyFeeders } from "../src/site/standby-feeders.ts";
import { encodeRecord, Kind, type RecordHeader } from "../src/record/record.ts";
import { FRAME_HEADER, FrameType, seqFrame } from "../src/wire/frames.ts";
import { testReceiver } from "./lib/test-receiver.ts";
import { Changes } from "../src/io/changes.ts";
import { Volume } from "../src/volume/volume.ts";
import { setLogSink } from "../src/log.ts";
import { MemoryJournal, testVolume } from "./lib/memory-journal.ts";
import { waitFor } from "./lib/cluster.ts";

await (await import("../native/build.ts")).buildNative();
setLogSink(() => {});
const t = suite("feeders wait on events");

/** A channel whose queue the test sets; `looks` counts the looks at it, `sent` tells it fell. */
class Wire implements Channel {
  records = 0;
  hashRequests = 0;
  queued = 0;
  looks = 0;
  readonly sent = new Changes();
  get pending(): number {
    this.looks++;
    return this.queued;
  }
  drained(signal: AbortSignal): Promise<void> {
    return this.sent.next(undefined, signal);
  }
  send(frame: Uint8Array): void {
    if (frame[4] === FrameType.Record) this.records++;
    if (frame[4] === FrameType.HashRequest) this.hashRequests++;
  }
}

const storeOf = (state: "consistent" | "degraded") =>
  ({
    load: (): Promise<StoredCursor> =>
      Promise.resolve({
        pos: 0,
        volumes: new Map<number, StoredVolume>([[1, { ackedSeq: 0, state, voidUpTo: 0 }]]),
      }),
    save: () => Promise.resolve(),
    remove: () => Promise.resolve(),
  }) as unknown as CursorStore;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const settle = (until: () => boolean) => waitFor(until, 1000, "the stream went on", 5);

t("a promotion's level check wakes on the standby's acknowledgement, not on a poll", async () => {
  const j = new MemoryJournal(testVolume());
  for (let seq = 1; seq <= 3; seq++) j.append(seq);
  const applier = { caughtUp: () => Promise.resolve(), imageFd: () => -1, appliedPos: j.durable };
  const feeders = await StandbyFeeders.open({
    journal: j as unknown as Journal,
    store: storeOf("consistent"),
    applier: applier as unknown as MirrorApplier,
    ackAfter: "rgp",
    syncChunk: 64 << 10,
    promoted: new Set(),
  }, ["a1"]);
  const handler = feeders.handler(() => Promise.resolve(j.vol));
  await handler.open("a1", { name: "vol0", size: 1 << 20, lastSeq: 0, state: "consistent" });
  const wire = new Wire();
  handler.ready("a1", wire);
  await settle(() => wire.records === 3);

  let result: boolean | undefined;
  const level = feeders.level("a1", 5000).then((r) => result = r);
  await sleep(20);
  j.durableReads = 0;
  await sleep(300);
  const looks = j.durableReads;
  assert.is(result, undefined, "not level before the standby acknowledged");
  handler.frame("a1", {
    type: FrameType.Accepted,
    body: seqFrame(FrameType.Accepted, 1, 3).subarray(FRAME_HEADER),
  });
  const acked = performance.now();
  await level;
  assert.is(result, true);
  assert.ok(performance.now() - acked < 50, "level as soon as the acknowledgement came");
  assert.ok(looks <= 3, `the condition was looked at ${looks} times in 300 ms with nothing happening`);
  handler.closed("a1");
});

t("a synchronisation waits for the image to apply more, not on a poll", async () => {
  const dir = await Deno.makeTempDir();
  const image = Volume.createSparse(`${dir}/image`, 1 << 20);
  try {
    const j = new MemoryJournal(testVolume());
    j.append(1);
    let applied = 0;
    let looks = 0;
    const moved: (() => void)[] = [];
    const sender = await Sender.open({
      name: "site:dr1",
      journal: j as unknown as Journal,
      store: storeOf("degraded"),
      source: {
        imageFd: () => image.fd,
        appliedPos: () => (looks++, applied),
        changed: () => new Promise((r) => moved.push(r)),
      },
      carries: () => true,
      syncChunk: 64 << 10,
    });
    const wire = new Wire();
    const s = sender.attach(wire, new Map<number, PeerReport>([[1, { lastSeq: 0, state: "inconsistent" }]]));
    await settle(() => wire.hashRequests === 1);
    s.onHashes(1, new Uint8Array(0)); // no hashes: every chunk is copied
    // SyncBegin and the record: the image has not applied it, so no chunk may be read yet
    await settle(() => wire.records === 2);
    await sleep(20);
    looks = 0;
    await sleep(300);
    const idleLooks = looks;
    assert.is(wire.records, 2, "no chunk before the image applied what was sent");
    applied = j.durable;
    for (const w of moved.splice(0)) w();
    const at = performance.now();
    // 16 chunks of zeros and the SyncEnd
    await settle(() => wire.records === 2 + 16 + 1);
    assert.ok(performance.now() - at < 80, "the chunks went as soon as the image applied");
    assert.ok(idleLooks <= 2, `the image's position was looked at ${idleLooks} times in 300 ms`);
    sender.detach(s);
  } finally {
    image.close();
    await Deno.remove(dir, { recursive: true });
  }
});

t("a stream held by the channel's queue goes on when the queue falls, not on a timer", async () => {
  const j = new MemoryJournal(testVolume());
  const sender = await Sender.open({
    name: "site:dr1",
    journal: j as unknown as Journal,
    store: storeOf("consistent"),
    source: { imageFd: () => -1, appliedPos: () => j.durable, changed: () => j.changed() },
    carries: () => true,
    windowBytes: 1 << 20,
  });
  const wire = new Wire();
  wire.queued = 2 << 20; // more than the window waits for the socket
  const s = sender.attach(wire, new Map<number, PeerReport>([[1, { lastSeq: 0, state: "consistent" }]]));
  try {
    j.append(1);
    await sleep(20);
    wire.looks = 0;
    await sleep(300);
    assert.is(wire.records, 0, "nothing more is queued while the queue is over the window");
    assert.ok(wire.looks <= 1, `the queue was looked at ${wire.looks} times in 300 ms`);
    wire.queued = 0;
    wire.sent.notify();
    const at = performance.now();
    await settle(() => wire.records === 1);
    assert.ok(performance.now() - at < 50, "the record went as soon as the queue fell");
  } finally {
    sender.detach(s);
  }
});

t("a site acknowledges at the move that allows it (standby, retention), not on a timer", async () => {
  const vol = testVolume();
  let looks = 0;
  let durable = 0;
  let pos = 0;
  const journalMoves = new Changes();
  const journal = {
    open: true,
    positions: {
      get durable() {
        return (looks++, durable);
      },
    },
    changed: () => journalMoves.next(),
    append(_volume: number, bytes: Uint8Array, h: RecordHeader): Promise<void> {
      h.pos = pos;
      pos += bytes.length;
      return Promise.resolve();
    },
  };
  let standby = 0;
  let retained = 0;
  const standbyMoves = new Changes();
  const retentionMoves = new Changes();
  const { receiver, acked } = testReceiver(vol, journal, {
    replicaPos: () => durable,
    standbyPos: () => standby,
    retain: () => 2, // the second mark: the retention syncs the first one first
    retained: () => retained,
    moves: [(s) => standbyMoves.next(undefined, s), (s) => retentionMoves.next(undefined, s)],
  });
  try {
    await receiver.hello([{ id: 0, agent: vol.agent, name: vol.name, size: vol.size }]);
    const h = { kind: Kind.Write, flags: 0, volume: 0, length: 4096, seq: 1, offset: 0, time: 1, pos: 0 };
    await receiver.record(encodeRecord(h, new Uint8Array(4096)));
    durable = pos;
    journalMoves.notify();
    looks = 0;
    await sleep(300);
    assert.equal(acked, [], "not before the standby and the retention");
    assert.ok(
      looks <= 2,
      `the acknowledgement point was looked at ${looks} times in 300 ms with nothing happening`,
    );

    standby = pos;
    standbyMoves.notify();
    retained = 1;
    retentionMoves.notify();
    await sleep(0);
    assert.equal(acked, [], "the retention's mark 2 is not durable yet");
    retained = 2;
    retentionMoves.notify();
    await sleep(0); // before any timer of a few milliseconds could fire
    assert.equal(acked, [1], "acknowledged at the retention's sync");
  } finally {
    receiver.close();
  }
  looks = 0;
  standbyMoves.notify();
  retentionMoves.notify();
  journalMoves.notify();
  await sleep(0);
  assert.is(looks, 0, "a closed receiver looks at nothing");
});

t.run();
