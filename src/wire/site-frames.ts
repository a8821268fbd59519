// The JSON bodies of the site link's stream frames (src/replication/site-link.ts), besides its
// control messages (src/wire/control.ts): the hello that starts a session (the volumes the local
// site streams), the welcome that answers it (what the remote holds of each), a named checkpoint
// in the record stream, a request for a copy's chunk hashes (sent to a site, or by a standby's
// feeder to its agent), and the error a site ends a stream with. Each is parsed by its reader; a malformed one is a FrameError
// naming the frame and the field (the stream is reset, as for any frame it cannot use).
import { z } from "zod";
import { FrameError } from "./frames.ts";
import { fieldErrors, name128, name64 } from "./control.ts";

const seq = z.number().int().nonnegative();

/**
 * A volume a hello announces. Its acknowledgement point and retention are the task's; anything
 * else there is read as absent (the site's flags hold: src/replication/site-link.ts retentionOf).
 */
export const helloVolumeSchema = z.object({
  id: z.number().int(),
  agent: name128,
  name: name64,
  size: z.number().int(),
  ack: z.unknown().optional(),
  retention: z.unknown().optional(),
});
export const siteHelloSchema = z.object({ volumes: z.array(z.unknown()).optional() });
export const siteWelcomeSchema = z.object({
  site: z.string().optional(),
  volumes: z.array(z.object({ id: z.number().int(), lastSeq: seq, state: z.string() })).optional(),
});
export const checkpointSchema = z.object({ volume: z.number().int(), name: z.string(), seq });
/** Why the other side ended the stream (its Error frame, src/replication/site-link.ts). */
export const siteErrorSchema = z.object({ message: z.string() });
/** A site hashes in chunks of 4 KiB to 64 MiB; a standby answers other sizes with no hashes. */
export const hashRequestSchema = z.object({
  volume: z.number().int(),
  chunkSize: z.number().int().positive(),
});

export type SiteWelcome = z.infer<typeof siteWelcomeSchema>;
export type CheckpointFrame = z.infer<typeof checkpointSchema>;
export type HashRequest = z.infer<typeof hashRequestSchema>;
export type SiteError = z.infer<typeof siteErrorSchema>;

/** Checks a stream frame's decoded body; `what` names the frame in the FrameError. */
export function parseFrame<T>(schema: z.ZodType<T>, what: string, raw: unknown): T {
  const r = schema.safeParse(raw);
  if (r.success) return r.data;
  throw new FrameError(`malformed ${what}: ${fieldErrors(r.error)}`);
}
