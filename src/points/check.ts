// Runs an operator's check against a test copy: the command (no shell) gets the copy's NBD URI
// in CONTINUUM_NBD_URI and in place of every "{uri}" argument. Exit code 0 passes. A check that
// runs past its timeout is killed and reported as such: it says nothing about the point.

export interface CheckOutcome {
  passed: boolean;
  code: number | null;
  timedOut: boolean;
  ms: number;
  /** The end of its output (stdout and stderr), for the audit log. */
  output: string;
}

const KEEP = 2048;

async function tail(stream: ReadableStream<Uint8Array>, into: { text: string }): Promise<void> {
  const dec = new TextDecoder();
  for await (const chunk of stream) {
    into.text = (into.text + dec.decode(chunk, { stream: true })).slice(-KEEP);
  }
}

export async function runCheck(
  command: readonly string[],
  uri: string,
  timeoutMs: number,
  env: Record<string, string> = {},
): Promise<CheckOutcome> {
  if (command.length === 0) throw new Error("the check command is empty");
  const t0 = performance.now();
  const args = command.slice(1).map((a) => a.replaceAll("{uri}", uri));
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(command[0], {
      args,
      env: { ...env, CONTINUUM_NBD_URI: uri },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (e) {
    throw new Error(`cannot run the check ${command[0]}: ${(e as Error).message}`);
  }
  const out = { text: "" };
  // the readers end when the pipes close; a grandchild holding them is not waited for (a pipe that
  // fails only shortens the output kept for the message)
  const readers = Promise.all([tail(child.stdout, out), tail(child.stderr, out)]).catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), timeoutMs));
  const status = await Promise.race([child.status, timeout]);
  clearTimeout(timer);
  if (status === "timeout") {
    try {
      child.kill("SIGKILL");
    } catch { /* it ended just now */ }
    await child.status;
    return {
      passed: false,
      code: null,
      timedOut: true,
      ms: Math.round(performance.now() - t0),
      output: out.text,
    };
  }
  await Promise.race([readers, new Promise((r) => setTimeout(r, 200))]);
  return {
    passed: status.success,
    code: status.code,
    timedOut: false,
    ms: Math.round(performance.now() - t0),
    output: out.text,
  };
}
