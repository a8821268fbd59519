// A reconnecting site replaces its stale session on the remote gateway only once the records the
// stale session took are journaled: the new session's hello, which reads where the copy is, waits
// for them (src/replication/site-link.ts). The receivers are stand-ins whose journal append the
// test holds; the frames go over a real pinned site link.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { tempDir, waitFor } from "./lib/cluster.ts";
import { concat, recordFrame } from "./lib/fuzz.ts";
import { startSiteServer } from "./lib/site-server.ts";
import { type AuthenticatedConn, connectSecure } from "../src/transport/secure.ts";
import type { SiteServer } from "../src/replication/site-link.ts";
import type { Receiver } from "../src/replication/receiver.ts";
import { FrameType, jsonFrame } from "../src/wire/frames.ts";
import { setLogSink } from "../src/log.ts";

const t = suite("site session replaced");

async function send(c: AuthenticatedConn, bytes: Uint8Array): Promise<void> {
  await c.conn.write(bytes);
}

t(
  "a new session of the same site answers its hello only once the stale session's records are journaled",
  async () => {
    setLogSink(() => {});
    const dir = await tempDir("site-replace");
    const events: string[] = [];
    let release!: () => void;
    const held = new Promise<void>((r) => release = r);
    let sessions = 0;
    let server: SiteServer | undefined;
    const conns: AuthenticatedConn[] = [];
    try {
      const started = await startSiteServer(dir, {
        newReceiver: () => {
          const n = ++sessions;
          return {
            hello: () => (events.push(`hello ${n}`), Promise.resolve([])),
            record: () => (events.push(`record ${n}`), held),
            close() {},
            status: () => ({}),
          } as unknown as Receiver;
        },
        requests: {} as never,
      });
      server = started.server;
      const { local, remoteFp } = started;
      const open = async () => {
        const c = await connectSecure({
          hostname: "127.0.0.1",
          port: server!.port,
          identity: local,
          expectedFingerprint: remoteFp,
        });
        conns.push(c);
        return c;
      };
      const hello = jsonFrame(FrameType.SiteHello, { volumes: [] });
      await send(await open(), concat(hello, recordFrame(new Uint8Array(100))));
      await waitFor(() => events.includes("record 1"), 10_000, "the first session's record");
      // the site reconnects (its old connection looked dead to it): the remote replaces the session
      await send(await open(), hello);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(
        events,
        ["hello 1", "record 1"],
        "the new hello waits while the stale session's append is held",
      );
      release();
      await waitFor(() => events.includes("hello 2"), 10_000, "the new session's hello");
      assert.equal(events, ["hello 1", "record 1", "hello 2"]);
    } finally {
      for (const c of conns) c.conn.close();
      server?.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
);

t.run();
