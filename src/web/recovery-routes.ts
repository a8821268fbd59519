// API routes for data recovery: candidates (policy), start or schedule, list, cancel.
import { VOLUME_KEY_RE } from "../names.ts";
import { heldPointSchema, SOURCE_RE } from "../tasks/model.ts";
import type { Hono } from "hono";
import { z } from "zod";
import { parseSource, type RecoveryError, type RecoveryService } from "../recovery/service.ts";

const sourceText = z.string().regex(SOURCE_RE, "use lgp, rgp@SITE or rsp@SITE");

const body = z.object({
  volume: z.string().regex(VOLUME_KEY_RE, "volume must be AGENT/NAME"),
  mode: z.enum(["manual", "policy"]),
  strategy: z.enum(["full", "fast"]).default("fast"),
  source: sourceText.optional(),
  target: z.enum(["lsp", "lgp"]).default("lsp"),
  /** Manual mode from rgp@SITE: the site's replica at this recovery point (sequence or checkpoint). */
  sourcePoint: heldPointSchema.optional(),
  point: z.object({
    seq: z.number().int().nonnegative().optional(),
    time: z.number().int().positive().optional(),
  })
    .optional(),
  chunkSize: z.number().int().min(4096).max(16 * 1024 * 1024).refine(
    (n) => (n & (n - 1)) === 0,
    "a power of two",
  )
    .optional(),
  force: z.boolean().default(false),
  at: z.number().int().positive().optional(),
  method: z.enum(["auto", "scan", "tracked"]).default("auto"),
  also: z.array(sourceText).max(16).optional(),
  verify: z.enum(["moved", "full"]).default("moved"),
}).strict();

function problem(e: unknown): { status: 400 | 404 | 409 | 500; message: string } {
  const status = (e as RecoveryError).status;
  return { status: status ?? 500, message: (e as Error).message };
}

export function recoveryRoutes(app: Hono, service: RecoveryService): void {
  app.get("/api/recoveries", async (c) => c.json(await service.list()));
  app.get("/api/recovery-candidates", async (c) => {
    const volume = c.req.query("volume") ?? "";
    const seq = c.req.query("seq"), time = c.req.query("time");
    const strategy = c.req.query("strategy") === "full" ? "full" : "fast";
    try {
      const point = { seq: seq ? Number(seq) : undefined, time: time ? Number(time) : undefined };
      return c.json(await service.candidates(volume, point, strategy));
    } catch (e) {
      const p = problem(e);
      return c.json({ error: p.message }, p.status);
    }
  });
  app.post("/api/recoveries", async (c) => {
    let raw: unknown;
    try {
      raw = await c.req.json();
    } catch {
      return c.json({ error: "the body must be JSON" }, 400);
    }
    const parsed = body.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return c.json({ error: `${issue.path.join(".") || "body"}: ${issue.message}` }, 400);
    }
    const b = parsed.data;
    try {
      const { sourcePoint, ...rest } = b;
      const source = b.source ? parseSource(b.source) : undefined;
      if (sourcePoint !== undefined && !source) {
        return c.json({ error: "sourcePoint: needs a source (rgp@SITE)" }, 400);
      }
      const r = await service.request({
        ...rest,
        source: source && sourcePoint !== undefined ? { ...source, point: sourcePoint } : source,
        also: b.also?.map(parseSource),
      });
      return c.json(r, 202);
    } catch (e) {
      const p = problem(e);
      return c.json({ error: p.message }, p.status);
    }
  });
  app.delete("/api/recoveries/:id", async (c) => {
    try {
      await service.cancel(Number(c.req.param("id")));
      return c.json({ ok: true });
    } catch (e) {
      const p = problem(e);
      return c.json({ error: p.message }, p.status);
    }
  });
}
