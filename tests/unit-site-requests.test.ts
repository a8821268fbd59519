// The site link's control requests over a real pinned site link (src/replication/site-link.ts):
// a request the remote gateway answers comes back typed by its request's type; a request its
// parser refuses (a field it cannot accept) fails at the requester at once, with the remote's
// reason, instead of waiting for the request's timeout; the link stays up and serves the next.
// The record stream is not used: the sender and receiver are stand-ins that carry nothing.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { tempDir } from "./lib/cluster.ts";
import { startSiteServer } from "./lib/site-server.ts";
import { SiteClient, type SiteServer } from "../src/replication/site-link.ts";
import type { Sender } from "../src/replication/sender.ts";
import type { Receiver } from "../src/replication/receiver.ts";
import type { Answerers, SiteAnswerBodies, SiteRequest } from "../src/wire/control.ts";
import { setLogSink } from "../src/log.ts";

const t = suite("site link requests");

/** Every request answered ok; copies with a replica's state, and the requests each handler saw. */
function answerEverything(seen: string[]): Answerers<SiteRequest, SiteAnswerBodies> {
  const ok = (m: { type: string }) => {
    seen.push(m.type);
    return Promise.resolve({ ok: true });
  };
  // the requests that return data: not asked here
  const no = (m: { type: string }) => {
    seen.push(m.type);
    return Promise.resolve({ ok: false as const, error: "not in this test" });
  };
  return {
    promote: ok,
    demote: ok,
    "drill-up": ok,
    "drill-down": ok,
    "test-start": no,
    "test-renew": no,
    "test-stop": ok,
    retention: ok,
    point: ok,
    points: no,
    copies: (m) => {
      seen.push(`copies ${m.volume}`);
      return Promise.resolve({ ok: true, rgp: { state: "consistent", lastSeq: 7, lastTime: 0 }, rsp: null });
    },
    standbys: no,
    inventory: no,
  };
}

const noStream = {
  onReset: undefined,
  attach: () => ({ onAck() {}, onHashes() {}, onPong() {} }),
  detach() {},
} as unknown as Sender;
const noRecords = {
  hello: () => Promise.resolve([]),
  close() {},
  status: () => ({}),
} as unknown as Receiver;

t("a refused request fails at the requester at once with the site's reason; the link stays up", async () => {
  const logged: string[] = [];
  setLogSink((line) => logged.push(line));
  const dir = await tempDir("site-requests");
  const seen: string[] = [];
  let server: SiteServer | undefined;
  let client: SiteClient | undefined;
  try {
    const started = await startSiteServer(dir, {
      newReceiver: () => noRecords,
      requests: answerEverything(seen),
    });
    server = started.server;
    const remoteFp = started.remoteFp;
    let linked!: () => void;
    const up = new Promise<void>((r) => linked = r);
    client = new SiteClient({
      site: "dr",
      hostname: "127.0.0.1",
      port: server.port,
      fingerprint: remoteFp,
      identity: started.local,
      localSite: "prod",
      sender: noStream,
      volumes: () => [],
      onLink: (u) => u && linked(),
    });
    client.start();
    await up;

    const fine = await client.request({ type: "copies", volume: "a1/vol0" }, 10_000);
    assert.equal(fine, {
      type: "copies",
      id: fine.id,
      ok: true,
      rgp: { state: "consistent", lastSeq: 7, lastTime: 0 },
      rsp: null,
    });

    // "a1" is a string (it compiles) but not a volume as the sites name it (AGENT/NAME)
    const t0 = performance.now();
    const refused = await client.request({ type: "copies", volume: "a1" }, 10_000).then(
      (): Error => assert.unreachable("the site accepted a malformed request") as never,
      (e: Error) => e,
    );
    const ms = performance.now() - t0;
    console.log(`  refused at the requester after ${ms.toFixed(1)} ms (timeout 10 s)`);
    assert.ok(ms < 1000, `refused after ${Math.round(ms)} ms, not at once (the request's timeout is 10 s)`);
    assert.match(
      refused.message,
      /^site dr refused the request: site link \(local to remote gateway\): "copies" message refused: volume: must be AGENT\/NAME/,
    );
    assert.ok(
      logged.some((l) => l.includes("control message refused") && l.includes("prod")),
      "the site logs the refusal with the peer's name",
    );

    assert.is(client.connected, true, "the link stays up");
    const again = await client.request({ type: "copies", volume: "a1/vol1" }, 10_000);
    assert.is(again.ok, true);
    assert.equal(seen, ["copies a1/vol0", "copies a1/vol1"], "the refused request reached no handler");
  } finally {
    client?.close();
    server?.close();
    setLogSink(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

t.run();
