// The records a site's stream has verified and handed to the journal, while the stream reads on.
// Waiting for each record's append before reading the next made every record its own data-plane
// call (a thread hand-off each); with a window, the records that arrive meanwhile go together.
import { Fifo } from "../io/fifo.ts";

export class AppendWindow {
  // a record without a payload (trim, zeroes, barrier) is 72 bytes: 4 MiB holds tens of thousands
  private readonly inFlight = new Fifo<{ done: Promise<void>; bytes: number }>();
  private bytes = 0;
  private failure: Error | undefined;

  /**
   * limit: the bytes of records in flight before the stream waits for the oldest (the journal's
   * own backpressure then reaches the site). onFailure: called once, at the first failed append,
   * so that the stream stops reading.
   */
  constructor(private readonly limit: number, private readonly onFailure: (e: Error) => void) {}

  /** Adds an append; waits while the window is over its limit. Throws the first failure. */
  async add(done: Promise<void>, bytes: number): Promise<void> {
    done.catch((e: Error) => {
      if (this.failure) return;
      this.failure = e;
      this.onFailure(e);
    });
    this.inFlight.push({ done, bytes });
    this.bytes += bytes;
    while (this.bytes > this.limit) await this.settleOldest();
    if (this.failure) throw this.failure;
  }

  /** Waits for every append in flight. Throws the first failure. */
  async drain(): Promise<void> {
    await this.settle();
    if (this.failure) throw this.failure;
  }

  /**
   * Waits for every append in flight, failed or not (a failure went to onFailure): a stream that
   * ends, even on a bad record, ends with what it took before journaled.
   */
  async settle(): Promise<void> {
    while (this.inFlight.length > 0) await this.settleOldest();
  }

  private async settleOldest(): Promise<void> {
    const oldest = this.inFlight.shift()!;
    this.bytes -= oldest.bytes;
    await oldest.done.catch(() => {}); // reported through failure, in the order it happened
  }
}
