// A UDP relay that impairs datagrams like `tc netem` would (this kernel has no sch_netem):
// delay with jitter (so datagrams may arrive reordered) and loss, with the settings read
// from a JSON control file the fault runner rewrites: {"delayMs", "jitterMs", "lossPct",
// "maxLossRun"}. Usage (the failover lab's relay arguments plus the control file):
// deno run -A udp-netem.ts LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT MEAN_MS SPREAD_MS CONTROL_FILE
import dgram from "node:dgram";

const [lh, lp, th, tp, mean, spread, control] = Deno.args;
let cfg = { delayMs: Number(mean), jitterMs: Number(spread), lossPct: 0, maxLossRun: 1 };
let lossRun = 0;
let passed = 0, dropped = 0;
setInterval(() => {
  try {
    cfg = { ...cfg, ...JSON.parse(Deno.readTextFileSync(control)) };
  } catch { /* no file yet: keep the settings */ }
}, 50);
setInterval(() => console.log(JSON.stringify({ passed, dropped, cfg })), 5000);
const sock = dgram.createSocket("udp4");
sock.on("message", (msg) => {
  if (cfg.lossPct > 0 && lossRun < cfg.maxLossRun && Math.random() * 100 < cfg.lossPct) {
    lossRun++;
    dropped++;
    return;
  }
  lossRun = 0;
  passed++;
  const delay = Math.max(0, cfg.delayMs + (Math.random() * 2 - 1) * cfg.jitterMs);
  setTimeout(() => sock.send(msg, Number(tp), th), delay);
});
sock.bind(Number(lp), lh, () => console.log("ready"));
