// A relay on a site link for tests, which can keep the local gateway's records from
// the site: the site then never applies them and never acknowledges them, while the
// link stays up (hello, pings, control requests such as a promotion, chunk
// operations all pass). A byte proxy cannot pick frames out of sealed batches, so the relay
// ends each side's session itself with that side's peer's key (a test has both).
// Usage: deno run -A site-relay.ts LISTEN_HOST LISTEN_PORT SITE_HOST SITE_PORT
//   LOCAL_KEY_DIR SITE_KEY_DIR CONTROL_FILE
// CONTROL_FILE holds "hold" (records are queued) or "pass" (the queue goes on, in
// order, then records flow). A connection that ends drops what it queued, as a link
// that fails loses what was in flight. Prints "ready", then one JSON line per change.
import { connectSecure, listenSecure, type SecureConn } from "../../src/transport/secure.ts";
import { loadIdentity } from "../../src/transport/identity.ts";
import { ConnReader, ConnWriter } from "../../src/io/conn-reader.ts";
import { FRAME_HEADER, FrameType, readFrame, writeFrameHeader } from "../../src/wire/frames.ts";

const [host, port, siteHost, sitePort, localKeys, siteKeys, control] = Deno.args;
const local = await loadIdentity(localKeys);
const site = await loadIdentity(siteKeys);
let holding = (await Deno.readTextFile(control).catch(() => "pass")).trim() === "hold";
let connections = 0;
/** Each open connection's way to send what it queued. */
const flushers = new Set<() => void>();
const say = (what: Record<string, unknown>) => console.log(JSON.stringify(what));

setInterval(async () => {
  const want = (await Deno.readTextFile(control).catch(() => "pass")).trim() === "hold";
  if (want === holding) return;
  holding = want;
  say({ holding });
  if (!holding) { for (const f of flushers) f(); }
}, 20);

const listener = await listenSecure({
  hostname: host,
  port: Number(port),
  identity: site,
  trustedPeers: new Map([[local.fingerprint, local.name]]),
});
console.log("ready");
for await (const down of listener) relay(down.conn);

async function relay(downConn: SecureConn): Promise<void> {
  const no = ++connections;
  let up;
  try {
    up = await connectSecure({
      hostname: siteHost,
      port: Number(sitePort),
      identity: local,
      expectedFingerprint: site.fingerprint,
      peerName: site.name,
    });
  } catch (e) {
    say({ connection: no, error: (e as Error).message });
    downConn.close();
    return;
  }
  say({ connection: no, open: true });
  const toLocal = new ConnWriter(downConn), toSite = new ConnWriter(up.conn);
  const queued: Uint8Array[][] = [];
  const flush = () => {
    for (const [head, body] of queued.splice(0)) {
      toSite.send(head);
      toSite.send(body);
    }
  };
  flushers.add(flush);
  const toSiteFrames = async () => {
    const r = new ConnReader(downConn, 1 << 20);
    for (let f = await readFrame(r); f; f = await readFrame(r)) {
      const head = new Uint8Array(FRAME_HEADER), body = f.body;
      writeFrameHeader(head, 0, f.type, body.length);
      const record = f.type === FrameType.Record || f.type === FrameType.RecordDeflated;
      // once one record is queued, the later ones queue behind it (the site takes them in order)
      if (record && (holding || queued.length > 0)) {
        queued.push([head, body]);
        say({ connection: no, queued: queued.length });
        continue;
      }
      toSite.send(head);
      toSite.send(body);
    }
  };
  const toLocalBytes = async () => {
    const buf = new Uint8Array(256 * 1024);
    for (let n = await up.conn.read(buf); n !== null; n = await up.conn.read(buf)) {
      toLocal.send(buf.slice(0, n));
    }
  };
  await Promise.race([toSiteFrames(), toLocalBytes()]).catch(() => {});
  flushers.delete(flush);
  say({ connection: no, closed: true, dropped: queued.length });
  downConn.close();
  up.conn.close();
}
