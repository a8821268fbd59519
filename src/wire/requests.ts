// Requests answered later over a link, matched by id: every request/response exchange (agent
// orders, site control requests, standby orders, chunk operations) waits through one of these.
// A request ends exactly once: answered, timed out, or failed with the link; its timer goes with it.

interface Waiter<A> {
  resolve: (answer: A) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class PendingRequests<A> {
  private nextId = 1;
  private readonly waiting = new Map<number, Waiter<A>>();

  /**
   * Sends a request with a new id and waits for its answer. `send` returns false when the link
   * cannot take it (the request fails at once with `unsent`); `timedOut` is the error after
   * `timeoutMs` without an answer.
   */
  request(
    send: (id: number) => boolean,
    timeoutMs: number,
    timedOut: () => Error,
    unsent: () => Error = () => new Error("the link is down"),
  ): Promise<A> {
    const id = this.nextId++;
    const answer = new Promise<A>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(timedOut());
      }, timeoutMs);
      this.waiting.set(id, { resolve, reject, timer });
    });
    // the answer comes in a later frame: waiting started before the (synchronous) send
    if (!send(id)) this.settle(id)?.reject(unsent());
    return answer;
  }

  /** An answer arrived; false when nobody waits for that id (late, or never asked). */
  answer(id: number, answer: A): boolean {
    const w = this.settle(id);
    w?.resolve(answer);
    return w !== undefined;
  }

  /** The request was refused (its receiver could not read it): it fails with this error. */
  fail(id: number, e: Error): boolean {
    const w = this.settle(id);
    w?.reject(e);
    return w !== undefined;
  }

  /** The link dropped: every request in flight fails with this error. */
  failAll(e: Error): void {
    for (const id of [...this.waiting.keys()]) this.settle(id)?.reject(e);
  }

  get size(): number {
    return this.waiting.size;
  }

  private settle(id: number): Waiter<A> | undefined {
    const w = this.waiting.get(id);
    if (!w) return undefined;
    clearTimeout(w.timer);
    this.waiting.delete(id);
    return w;
  }
}
