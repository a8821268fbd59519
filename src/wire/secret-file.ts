// Secrets live in files only their owner can read: the per-agent link secret (the data
// plane, native/seal.c, derives the link's proofs and keys from it) and the alarm webhooks'
// signing secret. They are never logged.
/** Reads a secret file: its bytes, trimmed of a trailing newline; refuses short or world-readable ones. */
export function readSecretFile(path: string): Uint8Array {
  let st: Deno.FileInfo;
  let raw: Uint8Array;
  try {
    st = Deno.statSync(path);
    raw = Deno.readFileSync(path);
  } catch (e) {
    throw new Error(`cannot read secret file ${path}: ${(e as Error).message}`);
  }
  if (st.mode !== null && (st.mode & 0o077) !== 0) {
    throw new Error(`secret file ${path} is readable by group or others (chmod 600 it)`);
  }
  let end = raw.length;
  while (end > 0 && (raw[end - 1] === 10 || raw[end - 1] === 13)) end--;
  const secret = raw.subarray(0, end);
  if (secret.length < 16) throw new Error(`secret file ${path} holds fewer than 16 bytes`);
  return secret;
}
