// A two-way UDP relay that impairs datagrams like `tc netem` would (the kernel here has no
// sch_netem): each datagram, either way, is lost with probability lossPct/100 or else delayed by
// delayMs ± jitterMs (uniform, so datagrams may overtake each other). Datagrams from the target go
// back to the last client. Settings come from a JSON control file re-read every 50 ms:
// {"delayMs", "jitterMs", "lossPct"}. Usage (the failover lab's relay arguments):
// deno run -A udp-relay.ts LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT MEAN_MS SPREAD_MS CONTROL_FILE
import dgram from "node:dgram";

const [lh, lp, th, tp, mean, spread, control] = Deno.args;
let cfg = { delayMs: Number(mean), jitterMs: Number(spread), lossPct: 0 };
let passed = 0, dropped = 0, last = "";
setInterval(() => {
  try {
    const text = Deno.readTextFileSync(control);
    if (text !== last) {
      last = text;
      cfg = { ...cfg, ...JSON.parse(text) };
      console.log(JSON.stringify({ settings: cfg }));
    }
  } catch { /* no file yet: keep the settings */ }
}, 50);
setInterval(() => console.log(JSON.stringify({ passed, dropped, cfg })), 5000);
const sock = dgram.createSocket("udp4");
let client: { address: string; port: number } | undefined;
sock.on("message", (msg, rinfo) => {
  const back = rinfo.address === th && rinfo.port === Number(tp);
  if (!back) client = { address: rinfo.address, port: rinfo.port };
  const to = back ? client : { address: th, port: Number(tp) };
  if (!to) return;
  if (Math.random() * 100 < cfg.lossPct) {
    dropped++;
    return;
  }
  passed++;
  const delay = Math.max(0, cfg.delayMs + (Math.random() * 2 - 1) * cfg.jitterMs);
  setTimeout(() => sock.send(msg, to.port, to.address), delay);
});
sock.bind(Number(lp), lh, () => console.log("ready"));
