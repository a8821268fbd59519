// `deno task demo` as the tests run it: in a directory of the test's, on free ports, its
// key=value lines read from stdout; stopped with SIGTERM as Ctrl-C would.
import { tempDir, terminate } from "./cluster.ts";
import { WebClient } from "./browser.ts";

const script = new URL("../../demo/demo.ts", import.meta.url).pathname;

export class DemoRun {
  lines: Record<string, string> = {};
  stdout = "";
  private child?: Deno.ChildProcess;
  private pumped?: Promise<void>;

  private constructor(readonly dir: string, readonly sites: number) {}

  /** Starts the demo with `--sites N`; resolves once it printed its endpoints (or throws with its output). */
  static async start(sites: number, timeoutMs = 240_000): Promise<DemoRun> {
    const run = new DemoRun(`${await tempDir(`demo${sites}`)}/d`, sites);
    await run.begin(timeoutMs);
    return run;
  }

  private async begin(timeoutMs: number): Promise<void> {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, "--sites", String(this.sites), "--data-dir", this.dir, "--free-ports"],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    let stderr = "";
    const dec = new TextDecoder();
    const done = Promise.withResolvers<void>();
    this.pumped = Promise.all([
      (async () => {
        for await (const c of this.child!.stdout) {
          this.stdout += dec.decode(c, { stream: true });
          if (this.stdout.includes("Ctrl-C stops everything.")) done.resolve();
        }
      })(),
      (async () => {
        for await (const c of this.child!.stderr) stderr += dec.decode(c, { stream: true });
      })(),
    ]).then(() => {});
    this.child.status.then((s) =>
      done.reject(new Error(`the demo exited (${s.code}): ${this.stdout}\n${stderr}`))
    );
    const timer = setTimeout(
      () => done.reject(new Error(`the demo did not start in time: ${this.stdout}`)),
      timeoutMs,
    );
    try {
      await done.promise;
    } catch (e) {
      await this.stop();
      throw e;
    } finally {
      clearTimeout(timer);
    }
    for (const l of this.stdout.split("\n")) {
      const m = /^([a-z][a-z0-9.-]*)=(.*)$/.exec(l);
      if (m) this.lines[m[1]] = m[2];
    }
  }

  /** The web API with the gateway's admin token. */
  async api(): Promise<WebClient> {
    const token = (await Deno.readTextFile(this.lines["api-token-file"])).trim();
    return new WebClient(this.lines["web-url"].replace(/\/$/, ""), { token });
  }

  /** SIGTERM, as Ctrl-C: resolves with the demo's exit code once every role stopped. */
  async stop(): Promise<number> {
    if (!this.child) return 0;
    const st = await terminate(this.child, 60_000);
    await this.pumped;
    this.child = undefined;
    return st.code;
  }
}
