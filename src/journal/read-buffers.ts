// The buffers a site sender's journal reads go into, used again once what the sender made of
// them is consumed (its channel sealed or wrote it): a fresh buffer a read cost more than the
// copy into it (its pages mapped, faulted in and zeroed, then collected), and a site's sender
// reads every record the agents write. When every buffer is still in use (the link is behind),
// a read gets one of its own, as before.

/** A buffer larger than this (a read of the largest records) is not kept. */
const KEEP_MAX = 8 << 20;

interface Slot {
  buf: Uint8Array;
  /** Whether what was made of its last read is consumed. */
  done: () => boolean;
}

export class ReadBuffers {
  private readonly slots: Slot[] = [];
  private last: Slot | undefined;

  /**
   * `consumed` marks what the caller queued so far: the test it returns says when all of that was
   * consumed. The caller queues everything it makes of a read before it takes the next buffer.
   */
  constructor(private readonly count: number, private readonly consumed: () => () => boolean) {}

  /** A buffer of at least cap bytes (not zeroed): valid until the next take() and what it made is consumed. */
  take(cap: number): Uint8Array {
    if (this.last) this.last.done = this.consumed();
    this.last = undefined;
    if (cap > KEEP_MAX) return new Uint8Array(cap);
    let slot = this.slots.find((s) => s.done());
    if (!slot) {
      if (this.slots.length >= this.count) return new Uint8Array(cap);
      slot = { buf: new Uint8Array(cap), done: () => true };
      this.slots.push(slot);
    }
    if (slot.buf.length < cap) slot.buf = new Uint8Array(cap);
    slot.done = () => false;
    this.last = slot;
    return slot.buf;
  }
}
