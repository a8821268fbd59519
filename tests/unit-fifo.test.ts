// The queue behind the records in flight to a site (src/io/fifo.ts), checked against an array
// doing the same operations, across the points where it drops its consumed front.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Fifo } from "../src/io/fifo.ts";

const t = suite("fifo");

/** A small deterministic generator (xorshift32): the same operations on every run. */
function random(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

t("pushes and shifts in any mix keep the order, length, first and last of an array", () => {
  const q = new Fifo<number>(), model: number[] = [];
  const next = random(12345);
  let n = 0;
  for (let step = 0; step < 200_000; step++) {
    // long runs of either, so the queue grows past its compaction point and drains below it
    const phase = Math.floor(step / 20_000) % 2 === 0 ? 0.7 : 0.3;
    if (next() < phase) {
      q.push(n);
      model.push(n++);
    } else {
      assert.is(q.shift(), model.shift());
    }
    assert.is(q.length, model.length);
    assert.is(q.first, model[0]);
    assert.is(q.last, model.at(-1));
  }
  while (model.length) assert.is(q.shift(), model.shift());
  assert.is(q.length, 0);
});

t("an empty queue has nothing to give", () => {
  const q = new Fifo<string>();
  assert.is(q.shift(), undefined);
  assert.is(q.first, undefined);
  assert.is(q.last, undefined);
  q.push("a");
  assert.is(q.shift(), "a");
  assert.is(q.shift(), undefined);
  assert.is(q.last, undefined);
  assert.is(q.length, 0);
});

t("find sees only what is still queued, the oldest match first", () => {
  const q = new Fifo<{ id: number; even: boolean }>();
  for (let id = 0; id < 3000; id++) q.push({ id, even: id % 2 === 0 });
  for (let i = 0; i < 2001; i++) q.shift();
  assert.is(q.find((x) => x.even)?.id, 2002);
  assert.is(q.find((x) => x.id === 10), undefined);
  q.clear();
  assert.is(q.length, 0);
  assert.is(q.find(() => true), undefined);
});

t.run();
