// A UDP relay that delays each datagram by a random amount (a userspace stand-in
// for `tc netem delay` where the kernel has no netem). Usage:
// deno run -A udp-jitter.ts LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT MEAN_MS SPREAD_MS
import dgram from "node:dgram";

const [lh, lp, th, tp, mean, spread] = Deno.args;
const sock = dgram.createSocket("udp4");
sock.on("message", (msg) => {
  // uniform in [mean - spread, mean + spread]
  const delay = Math.max(0, Number(mean) + (Math.random() * 2 - 1) * Number(spread));
  setTimeout(() => sock.send(msg, Number(tp), th), delay);
});
sock.bind(Number(lp), lh, () => console.log("ready"));
