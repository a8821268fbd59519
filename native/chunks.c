// Recovery chunk writes served by the agent's link thread. A ChunkOp "write" for a captured
// volume of a fenced agent goes from the unsealed batch straight to the disk, and its reply
// back to the gateway: the chunk is not copied into TypeScript's event loop (a full rebuild
// moves every byte of the volume this way). Anything else, and any write these checks would
// not accept, is left to TypeScript, which answers it (with the error, if it is one).
#include "capture.h"

#define F_CHUNK_REPLY 31
#define CHUNK_MIN 4096.0
#define CHUNK_MAX (16.0 * 1024 * 1024)

EXPORT void cn_agent_serve_chunk_writes(cn_agent *a, int32_t on) {
  pthread_mutex_lock(&a->fence_mu);
  a->chunk_writes = on != 0;
  pthread_mutex_unlock(&a->fence_mu);
}

/** A whole number in [lo, hi]. */
static bool whole(double x, double lo, double hi) {
  return x >= lo && x <= hi && x == (double)(uint64_t)x;
}

/** Finds a captured volume by name and holds it against removal (the caller releases vol_users). */
static cvol *volume_named(cn_agent *a, const char *name) {
  pthread_mutex_lock(&a->mu);
  cvol *v = NULL;
  for (uint32_t i = 0; i < a->nvols && !v; i++) {
    if (strcmp(a->vols[i]->name, name) == 0) v = a->vols[i];
  }
  if (v) a->vol_users++;
  pthread_mutex_unlock(&a->mu);
  return v;
}

static void volume_done(cn_agent *a) {
  pthread_mutex_lock(&a->mu);
  if (--a->vol_users == 0) pthread_cond_broadcast(&a->state_cv);
  pthread_mutex_unlock(&a->mu);
}

static void reply(cn_agent *a, uint64_t id, int64_t r) {
  uint8_t f[FRAME_HEADER + 4 + 600];
  json_t j;
  json_begin(&j, (char *)f + FRAME_HEADER + 4, sizeof f - FRAME_HEADER - 4);
  json_uint(&j, "id", id);
  json_bool(&j, "ok", r >= 0);
  if (r < 0) json_str(&j, "error", strerror((int)-r));
  uint32_t n = (uint32_t)strlen(json_end(&j));
  frame_header(f, F_CHUNK_REPLY, 4 + n);
  put32(f + FRAME_HEADER, n);
  cn_agent_send(a, f, FRAME_HEADER + 4 + n); // a link gone meanwhile: the gateway asks again
}

int agent_chunk_write(cn_agent *a, const uint8_t *body, uint32_t len) {
  if (len < 4) return 0;
  uint32_t jl = get32(body);
  if (jl > MAX_CONTROL_FRAME || jl > len - 4) return 0;
  const char *json = (const char *)body + 4;
  char op[16], volume[200];
  double id, chunk, index;
  if (!json_get_str(json, jl, "op", op, sizeof op) || strcmp(op, "write") != 0) return 0;
  if (!json_get_str(json, jl, "volume", volume, sizeof volume) || !json_get_num(json, jl, "id", &id) ||
      !json_get_num(json, jl, "chunkSize", &chunk) || !json_get_num(json, jl, "index", &index)) {
    return 0;
  }
  const char *slash = strchr(volume, '/');
  if (!slash || !whole(id, 0, 9007199254740991.0) || !whole(chunk, CHUNK_MIN, CHUNK_MAX) ||
      !whole(index, 0, 4294967295.0)) {
    return 0;
  }
  // only a fenced volume takes recovery writes: nobody else writes it meanwhile
  pthread_mutex_lock(&a->fence_mu);
  bool mine = a->chunk_writes && a->fenced;
  pthread_mutex_unlock(&a->fence_mu);
  if (!mine) return 0;
  cvol *v = volume_named(a, slash + 1);
  if (!v) return 0;
  uint64_t off = (uint64_t)index * (uint64_t)chunk, n = len - 4 - jl;
  if (off >= v->size || n != MIN((uint64_t)chunk, v->size - off)) {
    volume_done(a);
    return 0;
  }
  int64_t r = cn_pwrite(v->fd, body + 4 + jl, n, off);
  volume_done(a);
  reply(a, (uint64_t)id, r);
  return 1;
}
