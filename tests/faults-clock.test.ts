// The fault runner's clock step (tests/lib/faketime.ts) on this machine's Deno: with
// libfaketime preloaded, a running process's Date.now() jumps forward and back when the
// control file changes, in its Workers too (heartbeats leave from one), while
// performance.now() and timers go on undisturbed, as with a real step of the host clock.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { need } from "./lib/env.ts";
import {
  faketimeEnv,
  faketimeLoaded,
  LIBFAKETIME,
  offsetSpec,
  removeFaketimeShm,
  setClockOffset,
} from "./lib/faketime.ts";
import { startTopology } from "./lib/cluster.ts";

const t = suite("fault runner: clock step with libfaketime");

t("offsets are libfaketime's relative form; fractions are refused", () => {
  assert.is(offsetSpec(300), "+300s");
  assert.is(offsetSpec(-120), "-120s");
  assert.is(offsetSpec(0), "+0s");
  assert.throws(() => offsetSpec(1.5), /whole seconds/);
});

// Prints, every 100 ms, the wall and monotonic clocks of the main thread and of a Worker,
// and how late a 100 ms timer fired.
const probe = `
const w = new Worker("data:text/javascript,setInterval(() => postMessage(Date.now()), 50)", { type: "module" });
let workerWall = 0;
w.onmessage = (e) => workerWall = e.data;
let due = performance.now() + 100;
const tick = () => {
  console.log(JSON.stringify({ wall: Date.now(), mono: performance.now(), workerWall, late: performance.now() - due }));
  due = performance.now() + 100;
  setTimeout(tick, 100);
};
setTimeout(tick, 100);
`;

interface Line {
  wall: number;
  mono: number;
  workerWall: number;
  late: number;
}

t(
  "a running Deno process's wall clock steps forward and back; its monotonic clock and timers do not",
  async () => {
    if (!need("clock step", { tools: ["faketime"] })) return;
    await Deno.stat(LIBFAKETIME);
    const dir = await Deno.makeTempDir({ prefix: "faketime-" });
    const control = `${dir}/clock`;
    await setClockOffset(control, 0);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", probe],
      stdout: "piped",
      stderr: "inherit",
      env: faketimeEnv(control),
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    const next = async (): Promise<Line> => {
      while (!buffered.includes("\n")) {
        const r = await reader.read();
        if (r.done) throw new Error("the probe ended");
        buffered += r.value;
      }
      const i = buffered.indexOf("\n");
      const line = buffered.slice(0, i);
      buffered = buffered.slice(i + 1);
      return JSON.parse(line);
    };
    /** Reads until the main thread's and the Worker's offset from real time are both within 5 s of `s`. */
    const until = async (s: number): Promise<Line[]> => {
      const seen: Line[] = [];
      for (let i = 0; i < 60; i++) {
        const l = await next();
        seen.push(l);
        const near = (wall: number) => Math.abs(wall - Date.now() - s * 1000) < 5000;
        if (near(l.wall) && near(l.workerWall)) return seen;
      }
      throw new Error(`the clock did not reach ${offsetSpec(s)}: ${JSON.stringify(seen.at(-1))}`);
    };
    try {
      const before = await until(0);
      await setClockOffset(control, 600);
      const forward = await until(600);
      await setClockOffset(control, -300);
      const back = await until(-300);
      const all = [...before, ...forward, ...back];
      // monotonic time never jumped: consecutive samples 100 ms apart (generous for a loaded machine)
      for (let i = 1; i < all.length; i++) {
        const d = all[i].mono - all[i - 1].mono;
        assert.ok(d > 50 && d < 3000, `performance.now() moved by ${d} ms between samples`);
        assert.ok(all[i].late < 3000, `a 100 ms timer fired ${all[i].late} ms late`);
      }
    } finally {
      child.kill("SIGKILL");
      await reader.cancel().catch(() => {});
      await child.status;
      await removeFaketimeShm(child.pid);
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/** CPU seconds (user + system) a process has used so far. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime: fields 14 and 15, in USER_HZ (100)
}

// libfaketime wraps pthread_cond_timedwait assuming CLOCK_REALTIME deadlines: the native library's
// monotonic deadlines became deadlines in 1970 there, and every timed wait returned at once (an idle
// gateway spun at 60 % CPU and replication crawled). The library waits with pthread_cond_clockwait.
t("an idle local gateway under libfaketime does not spin in its native timed waits", async () => {
  if (!need("clock step", { tools: ["faketime"] })) return;
  const dir = await Deno.makeTempDir({ prefix: "faketime-" });
  const control = `${dir}/clock`;
  await setClockOffset(control, 0);
  const topo = await startTopology("faketime-idle", {
    size: 16 << 20,
    sites: ["dr1"],
    gatewayEnv: faketimeEnv(control),
  });
  try {
    const pid = topo.gw.proc.pid;
    assert.ok(await faketimeLoaded(pid), "libfaketime is loaded in the gateway");
    await topo.caughtUp();
    const before = await cpuSeconds(pid);
    await new Promise((r) => setTimeout(r, 3000));
    const used = await cpuSeconds(pid) - before;
    assert.ok(used < 0.6, `the idle gateway used ${used.toFixed(2)} CPU seconds in 3 s`);
  } finally {
    await topo.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

t.run();
