// Desired state per peer, reconciled rather than sent once (pure: no I/O, time passed in). The
// control plane sets what each peer (a remote site) should hold whenever the tasks change; a
// peer is due for a send right after a change and after it (re)connects, again `retryMs` after
// a failed send or an answer that left work pending (a standby away from its site), and every
// `refreshMs` otherwise (its answer is the peer's current state, for status). A send in flight
// is not repeated; an answer to a superseded version does not count.

interface Peer<T> {
  desired: T | undefined;
  text: string;
  version: number;
  connected: boolean;
  inFlight: boolean;
  /** Not before this time (ms). */
  dueAt: number;
}

export class DesiredState<T> {
  private peers = new Map<string, Peer<T>>();

  constructor(private readonly retryMs = 2000, private readonly refreshMs = 10_000) {}

  private peer(name: string): Peer<T> {
    let p = this.peers.get(name);
    if (!p) {
      p = { desired: undefined, text: "", version: 0, connected: false, inFlight: false, dueAt: 0 };
      this.peers.set(name, p);
    }
    return p;
  }

  /** Sets a peer's desired state; true when it differs from the previous one (a new version). */
  set(name: string, desired: T): boolean {
    const p = this.peer(name);
    const text = JSON.stringify(desired);
    if (text === p.text && p.version > 0) return false;
    p.desired = desired;
    p.text = text;
    p.version++;
    p.dueAt = 0;
    return true;
  }

  /** A peer's desired state and its version (what `acked` is given back). */
  get(name: string): { desired: T; version: number } | undefined {
    const p = this.peers.get(name);
    return p && p.version > 0 ? { desired: p.desired as T, version: p.version } : undefined;
  }

  /** The peer's link came up (everything is sent again now) or went down (nothing is sent). */
  connected(name: string, up: boolean): void {
    const p = this.peer(name);
    p.connected = up;
    p.dueAt = 0;
  }

  /** Peers to send to now, with the version to send. */
  due(now: number): { peer: string; desired: T; version: number }[] {
    const out = [];
    for (const [peer, p] of this.peers) {
      if (!p.connected || p.inFlight || p.version === 0 || now < p.dueAt) continue;
      out.push({ peer, desired: p.desired as T, version: p.version });
    }
    return out;
  }

  sent(name: string): void {
    const p = this.peers.get(name);
    if (p) p.inFlight = true;
  }

  /**
   * The peer answered the send of `version`. `settled`: nothing is left pending there (sent
   * again after refreshMs); otherwise after retryMs. A superseded version is due again now.
   */
  acked(name: string, version: number, settled: boolean, now: number): void {
    const p = this.peers.get(name);
    if (!p) return;
    p.inFlight = false;
    if (version !== p.version) p.dueAt = 0;
    else p.dueAt = now + (settled ? this.refreshMs : this.retryMs);
  }

  /** The send failed (no answer, link lost): tried again after retryMs. */
  failed(name: string, now: number): void {
    const p = this.peers.get(name);
    if (!p) return;
    p.inFlight = false;
    p.dueAt = now + this.retryMs;
  }
}
