// A site's stream reads on while the records it took are journaled (src/replication/append-window.ts):
// the window bounds the bytes in flight, reports the first failed append once and lets a stream that
// ends wait for what it took (tests/fuzz-replication.test.ts found a session ending first); the
// receiver acknowledges in stream order, so a record still being appended holds back the
// acknowledgement of a duplicate that came after it.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { AppendWindow } from "../src/replication/append-window.ts";
import { testReceiver } from "./lib/test-receiver.ts";
import { encodeRecord, Kind, type RecordHeader } from "../src/record/record.ts";
import { Changes } from "../src/io/changes.ts";
import { setLogSink } from "../src/log.ts";
import { testVolume } from "./lib/memory-journal.ts";

await (await import("../native/build.ts")).buildNative();
setLogSink(() => {});
const t = suite("append window");

function deferred(): { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } {
  let resolve!: () => void, reject!: (e: Error) => void;
  const promise = new Promise<void>((a, b) => (resolve = a, reject = b));
  return { promise, resolve, reject };
}

const turn = () => new Promise((r) => setTimeout(r, 0));

t("adds go on under the limit and wait for the oldest append over it", async () => {
  const w = new AppendWindow(10_000, () => assert.unreachable("no failure"));
  const a = deferred(), b = deferred(), c = deferred();
  await w.add(a.promise, 4096);
  await w.add(b.promise, 4096);
  let third = false;
  const adding = w.add(c.promise, 4096).then(() => third = true);
  await turn();
  assert.not.ok(third, "12 KiB in flight is over the 10 000-byte window: the add waits");
  a.resolve();
  await adding;
  assert.ok(third, "the oldest append done, the add went on");
  b.resolve();
  c.resolve();
  await w.drain();
});

t("the first failed append is reported once, to the stream and to every later add", async () => {
  const failures: string[] = [];
  const w = new AppendWindow(1 << 20, (e) => failures.push(e.message));
  const a = deferred(), b = deferred();
  await w.add(a.promise, 4096);
  await w.add(b.promise, 4096);
  a.reject(new Error("journal failed"));
  b.reject(new Error("journal closed"));
  await turn();
  assert.equal(failures, ["journal failed"], "the stream is told once, of the first failure");
  try {
    await w.add(Promise.resolve(), 4096);
    assert.unreachable("an add after a failure throws");
  } catch (e) {
    assert.is((e as Error).message, "journal failed");
  }
  try {
    await w.drain();
    assert.unreachable("drain throws the failure");
  } catch (e) {
    assert.is((e as Error).message, "journal failed");
  }
});

t("a stream that ends waits for what it took, failed appends included, without throwing", async () => {
  const w = new AppendWindow(1 << 20, () => {});
  const a = deferred(), b = deferred();
  await w.add(a.promise, 4096);
  await w.add(b.promise, 4096);
  let settled = false;
  const settling = w.settle().then(() => settled = true);
  a.reject(new Error("journal failed"));
  await turn();
  assert.not.ok(settled, "the second append is still in flight");
  b.resolve();
  await settling;
  assert.ok(settled);
});

t("a record still being appended holds back the acknowledgement of a duplicate after it", async () => {
  const vol = testVolume();
  let durable = 0;
  let pos = 0;
  const moves = new Changes();
  const appends: { h: RecordHeader; length: number; done: ReturnType<typeof deferred> }[] = [];
  const journal = {
    open: true,
    positions: {
      get durable() {
        return durable;
      },
    },
    changed: () => moves.next(),
    append(_volume: number, bytes: Uint8Array, h: RecordHeader): Promise<void> {
      const done = deferred();
      appends.push({ h, length: bytes.length, done });
      return done.promise;
    },
  };
  const { receiver, acked } = testReceiver(vol, journal, {
    replicaPos: () => durable,
    standbyPos: () => undefined,
  });
  try {
    await receiver.hello([{ id: 0, agent: vol.agent, name: vol.name, size: vol.size }]);
    const h = (seq: number) => ({
      kind: Kind.Write,
      flags: 0,
      volume: 0,
      length: 4096,
      seq,
      offset: 0,
      time: 1,
      pos: 0,
    });
    const first = receiver.record(encodeRecord(h(1), new Uint8Array(4096)));
    // the stream read on: the same record again, as a resend after a reconnect brings it
    await receiver.record(encodeRecord(h(1), new Uint8Array(4096)));
    await turn();
    assert.equal(acked, [], "the duplicate is not acknowledged while the record before it is being appended");
    const a = appends[0];
    a.h.pos = pos;
    pos += a.length;
    a.done.resolve();
    await first;
    durable = pos;
    moves.notify();
    await turn();
    assert.equal(acked, [2], "both acknowledged once the first is durable");
  } finally {
    receiver.close();
  }
});

t.run();
