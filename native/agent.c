// The agent's persistent, authenticated link to its local gateway. The link thread connects
// (with backoff), proves the agent's identity, and reads what the gateway sends: its
// acknowledgements go to the captured volumes, a recovery's chunk writes to the chunk writers
// (chunks.c), everything else to TypeScript. The sender seals batches of frames (records of
// every volume, frames TypeScript queued) and writes them; what to resend after a reconnect is
// each volume's decision (cvol_on_opened).
#include "capture.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH_BYTES (1u << 20)
#define MAX_SEGS 1024
/** Unsent bytes on the link above which a request's thread leaves sending to the sender thread. */
#define INLINE_OUTQ_MAX (64 * 1024)
/** The largest sealed batch: a frame of chunk hashes of a large volume fits alone. */
#define LINK_MAX_PLAIN (MAX_HASHES_FRAME + FRAME_HEADER + 64)
#define HOUSEKEEPING_MS 250
#define F_CHUNK_OP 30

static void link_log(cn_agent *a, int level, const char *msg, const char *k, const char *v) {
  if (!plane_logs(a->plane, level)) return;
  char f[800];
  json_t j;
  json_begin(&j, f, sizeof f);
  json_str(&j, "gateway", a->gateway_text);
  if (k) json_str(&j, k, v);
  plane_log(a->plane, level, "link", msg, json_end(&j));
}

// a thread that queues records while it holds a volume's lock may defer the wake-up, and send
// them itself afterwards (agent_send_deferred)
static _Thread_local bool tl_defer_send, tl_send_wanted;

void agent_wake_sender(cn_agent *a) {
  if (tl_defer_send) {
    tl_send_wanted = true; // agent_send_deferred sends it, once this thread let go of its locks
    return;
  }
  pthread_mutex_lock(&a->wake_mu);
  a->send_pending = true;
  pthread_cond_signal(&a->send_cv);
  pthread_mutex_unlock(&a->wake_mu);
}

static void push_frame(cn_agent *a, struct outframe *f) {
  f->next = NULL;
  if (a->out_tail) a->out_tail->next = f;
  else a->out_head = f;
  a->out_tail = f;
  a->out_bytes += f->len;
}

void agent_queue_open(cn_agent *a, cvol *v) {
  char body[256];
  json_t j;
  json_begin(&j, body, sizeof body);
  json_uint(&j, "id", v->link_id);
  json_str(&j, "name", v->name);
  json_uint(&j, "size", v->size);
  json_end(&j);
  size_t n = strlen(body);
  struct outframe *f = malloc(sizeof *f + FRAME_HEADER + n);
  if (!f) return;
  f->len = FRAME_HEADER + n;
  frame_header(f->bytes, F_OPEN, (uint32_t)n);
  memcpy(f->bytes + FRAME_HEADER, body, n);
  push_frame(a, f);
}

static void drop_frames(cn_agent *a) {
  while (a->out_head) {
    struct outframe *f = a->out_head;
    a->out_head = f->next;
    free(f);
  }
  a->out_tail = NULL;
  a->out_bytes = 0;
}

/** Finds a volume by link id and holds it against removal until vol_release. */
static cvol *vol_take(cn_agent *a, uint32_t link_id) {
  pthread_mutex_lock(&a->mu);
  cvol *v = NULL;
  for (uint32_t i = 0; i < a->nvols; i++) {
    if (a->vols[i]->link_id == link_id) v = a->vols[i];
  }
  if (v) a->vol_users++;
  pthread_mutex_unlock(&a->mu);
  return v;
}

static void vol_release(cn_agent *a) {
  pthread_mutex_lock(&a->mu);
  if (--a->vol_users == 0) pthread_cond_broadcast(&a->state_cv);
  pthread_mutex_unlock(&a->mu);
}

cvol *agent_volume(cn_agent *a, uint32_t link_id) {
  pthread_mutex_lock(&a->mu);
  cvol *v = NULL;
  for (uint32_t i = 0; i < a->nvols; i++) {
    if (a->vols[i]->link_id == link_id) v = a->vols[i];
  }
  pthread_mutex_unlock(&a->mu);
  return v;
}

// ---- handshake ----


/** Proves this agent to the gateway and checks the gateway's proof; 0 or -errno with a message. */
static int handshake(cn_agent *a, int fd, char *why, size_t cap) {
  uint8_t body[1100], type;
  uint32_t len;
  int r = read_small_frame(fd, &type, body, sizeof body, &len);
  if (r < 0) {
    snprintf(why, cap, r == -EAGAIN || r == -EWOULDBLOCK ? "gateway handshake timed out"
                                                          : "gateway closed the connection during authentication");
    return r;
  }
  if (type != F_CHALLENGE) {
    snprintf(why, cap, "gateway did not send a challenge");
    return -EPROTO;
  }
  if (len != 2 + LINK_NONCE || get16(body) != LINK_VERSION) {
    snprintf(why, cap, "gateway challenge malformed (a gateway of another version?)");
    return -EPROTO;
  }
  uint8_t gw_nonce[LINK_NONCE], mine[LINK_NONCE], proof[LINK_PROOF];
  memcpy(gw_nonce, body + 2, LINK_NONCE);
  random_bytes(mine, sizeof mine);
  link_proof(a->secret, a->secret_len, true, a->id, gw_nonce, mine, proof);
  size_t nl = strlen(a->id);
  uint8_t hello[FRAME_HEADER + 3 + 128 + LINK_NONCE + LINK_PROOF];
  uint32_t hl = (uint32_t)(3 + nl + LINK_NONCE + LINK_PROOF);
  frame_header(hello, F_HELLO, hl);
  put16(hello + FRAME_HEADER, LINK_VERSION);
  hello[FRAME_HEADER + 2] = (uint8_t)nl;
  memcpy(hello + FRAME_HEADER + 3, a->id, nl);
  memcpy(hello + FRAME_HEADER + 3 + nl, mine, LINK_NONCE);
  memcpy(hello + FRAME_HEADER + 3 + nl + LINK_NONCE, proof, LINK_PROOF);
  if ((r = write_full(fd, hello, FRAME_HEADER + hl)) < 0) {
    snprintf(why, cap, "cannot send the hello: %s", strerror(-r));
    return r;
  }
  r = read_small_frame(fd, &type, body, sizeof body, &len);
  if (r < 0) {
    snprintf(why, cap, r == -EAGAIN || r == -EWOULDBLOCK ? "gateway handshake timed out"
                                                          : "gateway closed the connection during authentication");
    return r;
  }
  if (type == F_DENIED) {
    snprintf(why, cap, "gateway refused authentication: %.*s", (int)MIN(len, 200u), (const char *)body);
    return -EACCES;
  }
  if (type != F_WELCOME || len != LINK_PROOF) {
    snprintf(why, cap, "unexpected answer to authentication");
    return -EPROTO;
  }
  link_proof(a->secret, a->secret_len, false, a->id, gw_nonce, mine, proof);
  if (!same_bytes(body, proof, LINK_PROOF)) {
    snprintf(why, cap, "gateway failed to prove it holds this agent's secret: not sending it any data");
    return -EACCES;
  }
  uint8_t k[32];
  link_key(a->secret, a->secret_len, true, a->id, gw_nonce, mine, k);
  bool plain = sock_is_unix(fd);
  a->tx = sealer_new(k, true, plain);
  link_key(a->secret, a->secret_len, false, a->id, gw_nonce, mine, k);
  a->rx = sealer_new(k, false, plain);
  memset(k, 0, sizeof k);
  if (!a->tx || !a->rx) {
    snprintf(why, cap, "cannot set up the link's encryption");
    return -ENOMEM;
  }
  return 0;
}

// ---- what the gateway sends ----

static uint32_t frame_limit(uint8_t type) {
  // records and chunk operations carry payloads; hashes of a large volume are large too
  if (type == F_RECORD || type == 27 || type == F_CHUNK_OP || type == 31) return MAX_FRAME;
  if (type == 23) return MAX_HASHES_FRAME;
  return MAX_CONTROL_FRAME;
}

/**
 * Handles one frame from the gateway; 0, or -1 with why set (the connection is dropped). A chunk
 * write unsealed into a writer's buffer comes as its head (body, len) and the buffer s.
 */
static int on_frame(cn_agent *a, uint8_t type, const uint8_t *body, uint32_t len, cw_slot *s, uint64_t slen,
                    uint64_t epoch, char *why, size_t cap) {
  switch (type) {
  case F_ACCEPTED:
  case F_DURABLE: {
    if (len != 12) {
      snprintf(why, cap, "acknowledgement frame of %u bytes", len);
      return -1;
    }
    cvol *v = vol_take(a, get32(body));
    if (!v) return 0; // a volume removed meanwhile
    nbd_hold_replies();
    if (type == F_ACCEPTED) cvol_on_accepted(v, get64(body + 4));
    else cvol_on_durable(v, get64(body + 4));
    nbd_release_replies();
    vol_release(a);
    return 0;
  }
  case F_OPENED: {
    double id = -1;
    json_get_num((const char *)body, len, "id", &id);
    cvol *v = id >= 0 && id <= 0xffffffff ? vol_take(a, (uint32_t)id) : NULL;
    if (!v) break; // a standby copy's: TypeScript's
    char error[400];
    if (json_get_str((const char *)body, len, "error", error, sizeof error)) {
      cvol_on_refused(v, error);
    } else {
      double last = 0, journal = -1;
      bool known = false;
      json_get_num((const char *)body, len, "lastSeq", &last);
      json_get_bool((const char *)body, len, "known", &known);
      json_get_num((const char *)body, len, "journalId", &journal);
      cvol_on_opened(v, (uint64_t)last, known);
      char ev[300];
      json_t j;
      json_begin(&j, ev, sizeof ev);
      json_str(&j, "volume", v->name);
      json_uint(&j, "lastSeq", (uint64_t)last);
      json_bool(&j, "known", known);
      json_int(&j, "journalId", (int64_t)journal);
      json_end(&j);
      plane_post(a->plane, CN_EV_VOLUME, v->link_id, CN_VOL_OPENED, ev, strlen(ev), NULL, 0, true);
    }
    vol_release(a);
    return 0;
  }
  case F_CHUNK_OP: { // a recovery's writes are served in the data plane (chunks.c)
    const uint8_t *data = s ? chunk_slot_data(s) : NULL;
    uint64_t dlen = slen;
    if (!s) {
      if (len < 4 || get32(body) > len - 4) break; // malformed: TypeScript says so
      uint32_t jl = get32(body);
      data = body + 4 + jl;
      dlen = len - 4 - jl;
      len = 4 + jl;
    }
    if (agent_chunk_write(a, body, len, data, dlen, s, epoch)) return 0;
    plane_post(a->plane, CN_EV_FRAME, 0, type, body, len, data, dlen, true);
    if (s) chunk_slot_drop(a, s);
    return 0;
  }
  case F_RECORD: { // a standby's copies are written here (standby.c)
    int r = standby_take(a->sb, body, len, epoch, why, cap);
    if (r <= 0) return r;
    break;
  }
  case F_ERROR: {
    char msg[400] = "error";
    json_get_str((const char *)body, len, "message", msg, sizeof msg);
    snprintf(why, cap, "gateway reported: %s", msg);
    return -1;
  }
  default:
    break;
  }
  plane_post(a->plane, CN_EV_FRAME, 0, type, body, len, NULL, 0, true);
  return 0;
}

/** A frame of a batch whose chunk was unsealed into a writer's buffer. */
typedef struct {
  size_t at;         // the frame's place in the batch
  uint32_t head_len; // its head: u32 JSON length, JSON (the payload is in the buffer)
  cw_slot *slot;
} claim_t;

static void drop_claims(cn_agent *a, claim_t *claims, int from, int n) {
  for (int i = from; i < n; i++) chunk_slot_drop(a, claims[i].slot);
}

/**
 * Unseals a batch frame by frame: the payload of a recovery chunk write straight into a free
 * buffer of the chunk writers (no copy of it, and none in place), everything else in place.
 * Returns how many frames were so claimed (claims, in batch order), or -1 with why set (the
 * batch is unusable, nothing claimed).
 */
static int unseal_batch(cn_agent *a, const uint8_t lp[4], uint8_t *buf, uint32_t n, claim_t *claims, char *why,
                        size_t cap) {
  sealer_t *rx = a->rx;
  int nc = 0, r = unseal_begin(rx, lp);
  // once a chunk write could not take a buffer, the batch's later ones are not given any: that
  // one waits for a buffer when its turn comes, which only the writes before it may hold
  bool claiming = true;
  char bad[160] = "";
  size_t at = 0;
  while (r == 0 && at < n) {
    if (n - at < FRAME_HEADER) {
      snprintf(bad, sizeof bad, "batch ends inside a frame header");
      break;
    }
    if ((r = unseal_update(rx, buf + at, buf + at, FRAME_HEADER)) < 0) break;
    uint32_t fl = get32(buf + at);
    uint8_t type = buf[at + 4];
    if (fl < 1 || fl > frame_limit(type) || fl - 1 > n - at - FRAME_HEADER) {
      snprintf(bad, sizeof bad, "malformed frame from the gateway (type %u, %u bytes)", type, fl);
      break;
    }
    uint8_t *body = buf + at + FRAME_HEADER;
    uint32_t len = fl - 1, done = 0;
    if (type == F_CHUNK_OP && len >= 4 && (r = unseal_update(rx, body, body, 4)) == 0) {
      uint32_t jl = get32(body);
      done = 4;
      if (jl <= len - 4 && jl <= MAX_CONTROL_FRAME && (r = unseal_update(rx, body + 4, body + 4, jl)) == 0) {
        done += jl;
        if (chunk_write_wanted(body, done, len - done)) {
          cw_slot *s = claiming ? chunk_slot_take(a, nc == 0) : NULL;
          if (s && (r = unseal_update(rx, chunk_slot_data(s), body + done, len - done)) == 0) {
            claims[nc++] = (claim_t){at, done, s};
            done = len;
          } else {
            if (s) chunk_slot_drop(a, s);
            claiming = false;
          }
        }
      }
    }
    if (r == 0) r = unseal_update(rx, body + done, body + done, len - done);
    at += FRAME_HEADER + len;
  }
  // a malformed batch is reported as such only when it is authentic
  if (r == 0 && at < n) r = unseal_update(rx, buf + at, buf + at, n - at);
  if (r == 0) r = unseal_end(rx, buf + n);
  if (r < 0 || bad[0]) {
    if (r < 0) snprintf(why, cap, "a batch from the gateway failed authentication (altered, replayed or reordered)");
    else snprintf(why, cap, "%s", bad);
    drop_claims(a, claims, 0, nc);
    return -1;
  }
  return nc;
}

/** Reads sealed batches until the connection ends (epoch: its number); the reason goes to why. */
static void read_loop(cn_agent *a, int fd, uint64_t epoch, char *why, size_t cap) {
  batch_reader_t in;
  claim_t claims[CHUNK_WRITE_SLOTS];
  if (batch_reader_init(&in, fd) < 0) {
    snprintf(why, cap, "out of memory for the link");
    return;
  }
  for (;;) {
    uint8_t lp[4], *buf;
    uint32_t n;
    int r = batch_next(&in, LINK_MAX_PLAIN, seal_tag(a->rx), lp, &buf, &n);
    if (r <= 0) {
      if (r == 0) snprintf(why, cap, "gateway closed the connection");
      else if (r == -EMSGSIZE) snprintf(why, cap, "gateway sent a batch of %u bytes, over the limit", get32(lp));
      else if (r == -EPIPE) snprintf(why, cap, "gateway closed the connection inside a batch");
      else snprintf(why, cap, "%s", strerror(-r));
      break;
    }
    int nc = unseal_batch(a, lp, buf, n, claims, why, cap);
    if (nc < 0) break;
    // the batch is authentic: its frames, in order (the frame structure was checked unsealing it)
    size_t at = 0;
    int c = 0;
    bool bad = false;
    while (at < n && !bad) {
      uint32_t fl = get32(buf + at);
      const uint8_t *body = buf + at + FRAME_HEADER;
      if (c < nc && claims[c].at == at) {
        claim_t *k = &claims[c++];
        bad = on_frame(a, buf[at + 4], body, k->head_len, k->slot, fl - 1 - k->head_len, epoch, why, cap) < 0;
      } else {
        bad = on_frame(a, buf[at + 4], body, fl - 1, NULL, 0, epoch, why, cap) < 0;
      }
      at += FRAME_HEADER + fl - 1;
    }
    standby_kick(a->sb);
    if (bad) {
      drop_claims(a, claims, c, nc);
      break;
    }
  }
  batch_reader_free(&in);
}

static void wait_backoff(cn_agent *a) {
  pthread_mutex_lock(&a->mu);
  struct timespec until = deadline_in(a->backoff_ms);
  while (!a->closing && !a->poked && cond_wait_until(&a->state_cv, &a->mu, &until)) {
  }
  if (a->poked) a->backoff_ms = 100;
  else a->backoff_ms = MIN(a->backoff_ms * 2, 5000);
  a->poked = false;
  pthread_mutex_unlock(&a->mu);
}

static void *link_main(void *arg) {
  thread_name("cn-link");
  cn_agent *a = arg;
  char why[512];
  while (true) {
    pthread_mutex_lock(&a->mu);
    bool closing = a->closing;
    pthread_mutex_unlock(&a->mu);
    if (closing) break;
    int fd = sock_connect(&a->gateway);
    if (fd < 0) {
      snprintf(why, sizeof why, "%s", strerror(-fd));
    } else {
      sock_timeout(fd, a->handshake_timeout_ms);
      int r = handshake(a, fd, why, sizeof why);
      sock_timeout(fd, 0);
      if (r < 0) {
        close(fd);
        fd = -1;
        sealer_free(a->tx);
        sealer_free(a->rx);
        a->tx = a->rx = NULL;
      }
    }
    if (fd >= 0) {
      cvol *vols[256];
      pthread_mutex_lock(&a->mu);
      a->sock = fd;
      a->connected = true;
      a->conn_epoch++;
      a->connected_since = wall_ms();
      a->last_error[0] = 0;
      a->backoff_ms = 100;
      drop_frames(a);
      for (uint32_t i = 0; i < a->nvols; i++) agent_queue_open(a, a->vols[i]);
      uint32_t n = MIN(a->nvols, 256u);
      memcpy(vols, a->vols, n * sizeof(cvol *));
      a->vol_users++;
      pthread_mutex_unlock(&a->mu);
      for (uint32_t i = 0; i < n; i++) {
        pthread_mutex_lock(&vols[i]->mu);
        vols[i]->link = LINK_OPENING;
        pthread_mutex_unlock(&vols[i]->mu);
      }
      vol_release(a);
      if (plane_logs(a->plane, LOG_INFO)) {
        char f[512];
        json_t j;
        json_begin(&j, f, sizeof f);
        json_str(&j, "gateway", a->gateway_text);
        json_str(&j, "agent", a->id);
        json_str(&j, "link", seal_tag(a->tx) ? "sealed (AES-256-GCM)" : "unix socket, not sealed");
        plane_log(a->plane, LOG_INFO, "link", "connected to gateway", json_end(&j));
      }
      plane_post(a->plane, CN_EV_LINK, 0, 1, a->gateway_text, strlen(a->gateway_text), NULL, 0, true);
      uint64_t epoch = a->conn_epoch; // this thread alone changes it
      agent_wake_sender(a);
      read_loop(a, fd, epoch, why, sizeof why);
      pthread_mutex_lock(&a->mu);
      a->connected = false;
      shutdown(fd, SHUT_RDWR);
      // the sender may be writing a batch: the socket and the keys go once it is done
      while (a->sending) pthread_cond_wait(&a->state_cv, &a->mu);
      a->sock = -1;
      drop_frames(a);
      sealer_free(a->tx);
      sealer_free(a->rx);
      a->tx = a->rx = NULL;
      bool restarting = a->restarting, closing_now = a->closing;
      a->restarting = false;
      n = MIN(a->nvols, 256u);
      memcpy(vols, a->vols, n * sizeof(cvol *));
      a->vol_users++;
      pthread_mutex_unlock(&a->mu);
      close(fd);
      if (!closing_now && !restarting) link_log(a, LOG_WARN, "gateway link down", "error", why);
      for (uint32_t i = 0; i < n; i++) cvol_on_link_down(vols[i]);
      vol_release(a);
      plane_post(a->plane, CN_EV_LINK, 0, 0, why, strlen(why), NULL, 0, true);
      if (restarting && !closing_now) {
        link_log(a, LOG_INFO, "reconnecting to the gateway", NULL, NULL);
        continue;
      }
      if (closing_now) break;
    } else {
      pthread_mutex_lock(&a->mu);
      bool changed = strcmp(a->last_error, why) != 0;
      snprintf(a->last_error, sizeof a->last_error, "%s", why);
      pthread_mutex_unlock(&a->mu);
      if (changed) link_log(a, LOG_WARN, "gateway link failed", "error", why);
    }
    wait_backoff(a);
  }
  return NULL;
}

// ---- the sender ----

typedef struct {
  cvol *v;
  uint64_t through, epoch;
} taken_t;

/** What one sending round gathers (on the stack of the thread that sends). */
typedef struct {
  const uint8_t *ptrs[MAX_SEGS];
  uint32_t lens[MAX_SEGS];
  taken_t taken[256];
  cvol *vols[256];
} round_t;

enum { ROUND_STOP = -2, ROUND_BUSY = -1 };

/**
 * Seals what is queued (TypeScript's frames first, then each volume's records) into one batch
 * and writes it. Returns the frames sent (0: nothing queued), ROUND_BUSY when nothing can be
 * sent now (link down, or another thread is sending), ROUND_STOP once the agent closes.
 */
static int send_round(cn_agent *a, round_t *rd, bool inline_try) {
  pthread_mutex_lock(&a->mu);
  if (a->closing && !a->connected) {
    pthread_mutex_unlock(&a->mu);
    return ROUND_STOP;
  }
  int queued = 0;
  // a thread sending inline must not block on a gateway that stopped reading: it leaves a
  // socket with unread bytes to the sender thread
  if (!a->connected || !a->tx || a->sending ||
      (inline_try && (ioctl(a->sock, SIOCOUTQ, &queued) < 0 || queued > INLINE_OUTQ_MAX))) {
    pthread_mutex_unlock(&a->mu);
    return ROUND_BUSY;
  }
  int fd = a->sock;
  sealer_t *tx = a->tx;
  a->sending = true;
  // frames TypeScript queued go first (an Open before the volume's records, a reply at once)
  struct outframe *frames = NULL, **tailp = &frames;
  uint32_t n = 0;
  uint64_t bytes = 0;
  while (a->out_head && n < MAX_SEGS && (n == 0 || bytes + a->out_head->len <= BATCH_BYTES)) {
    struct outframe *f = a->out_head;
    a->out_head = f->next;
    if (!a->out_head) a->out_tail = NULL;
    a->out_bytes -= f->len;
    f->next = NULL;
    *tailp = f;
    tailp = &f->next;
    rd->ptrs[n] = f->bytes;
    rd->lens[n] = (uint32_t)f->len;
    bytes += f->len;
    n++;
  }
  uint32_t nv = MIN(a->nvols, 256u);
  memcpy(rd->vols, a->vols, nv * sizeof(cvol *));
  a->vol_users++;
  pthread_mutex_unlock(&a->mu);
  uint32_t ntaken = 0;
  for (uint32_t i = 0; i < nv && n < MAX_SEGS && bytes < BATCH_BYTES; i++) {
    cvol *v = rd->vols[i];
    pthread_mutex_lock(&v->mu);
    uint64_t through;
    uint32_t k = cvol_take_frames(v, rd->ptrs + n, rd->lens + n, MAX_SEGS - n,
                                  n == 0 ? BATCH_BYTES : BATCH_BYTES - bytes, &through);
    if (k > 0 || through > v->q_send) rd->taken[ntaken++] = (taken_t){v, through, v->link_epoch};
    pthread_mutex_unlock(&v->mu);
    for (uint32_t x = 0; x < k; x++) bytes += rd->lens[n + x];
    n += k;
  }
  int r = 0;
  if (n > 0) {
    uint8_t *b = a->sbuf;
    r = seal_begin(tx, b, (uint32_t)bytes);
    uint64_t at = 4;
    for (uint32_t i = 0; i < n && r == 0; i++) {
      r = seal_update(tx, b + at, rd->ptrs[i], rd->lens[i]);
      at += rd->lens[i];
    }
    if (r == 0) r = seal_end(tx, b + at);
    if (r == 0) r = write_full(fd, b, at + seal_tag(tx));
    // a failed write ends the connection: the link thread sees it and the volumes resend
    if (r < 0) shutdown(fd, SHUT_RDWR);
    else a->batches++;
  }
  for (uint32_t i = 0; i < ntaken; i++) {
    cvol *v = rd->taken[i].v;
    pthread_mutex_lock(&v->mu);
    if (v->link_epoch == rd->taken[i].epoch) cvol_sent(v, rd->taken[i].through);
    else cvol_sent(v, 0); // the link changed meanwhile: the volume decided what to resend
    pthread_mutex_unlock(&v->mu);
  }
  while (frames) {
    struct outframe *f = frames;
    frames = f->next;
    free(f);
  }
  pthread_mutex_lock(&a->mu);
  a->sending = false;
  a->vol_users--;
  pthread_cond_broadcast(&a->state_cv);
  pthread_mutex_unlock(&a->mu);
  return r < 0 ? ROUND_BUSY : (int)n;
}

static void *sender_main(void *arg) {
  thread_name("cn-link-send");
  cn_agent *a = arg;
  round_t rd;
  for (;;) {
    pthread_mutex_lock(&a->wake_mu);
    while (!a->send_pending) pthread_cond_wait(&a->send_cv, &a->wake_mu);
    a->send_pending = false;
    pthread_mutex_unlock(&a->wake_mu);
    int k;
    while ((k = send_round(a, &rd, false)) > 0) {
    }
    if (k == ROUND_STOP) break;
  }
  return NULL;
}

/** Whether anything waits to be sent. */
static bool send_waiting(cn_agent *a) {
  pthread_mutex_lock(&a->mu);
  bool any = a->out_head != NULL;
  uint32_t nv = MIN(a->nvols, 256u);
  cvol *vols[256];
  memcpy(vols, a->vols, nv * sizeof(cvol *));
  a->vol_users++;
  pthread_mutex_unlock(&a->mu);
  for (uint32_t i = 0; i < nv && !any; i++) {
    pthread_mutex_lock(&vols[i]->mu);
    any = cvol_has_frames(vols[i]);
    pthread_mutex_unlock(&vols[i]->mu);
  }
  vol_release(a);
  return any;
}

void agent_defer_send(bool on) { tl_defer_send = on; }

void agent_send_deferred(cn_agent *a) {
  if (!tl_send_wanted) return;
  tl_send_wanted = false;
  // one round on this thread when the sender is idle: a request alone saves a thread hand-off
  round_t rd;
  int k = send_round(a, &rd, true);
  if (k == ROUND_BUSY || (k > 0 && send_waiting(a))) agent_wake_sender(a);
}

// ---- housekeeping: timeouts, resynchronisation, sweeps ----

static void *house_main(void *arg) {
  thread_name("cn-agent-house");
  cn_agent *a = arg;
  cvol *vols[256];
  for (;;) {
    pthread_mutex_lock(&a->mu);
    struct timespec until = deadline_in(HOUSEKEEPING_MS);
    while (!a->closing && cond_wait_until(&a->house_cv, &a->mu, &until)) {
    }
    if (a->closing) {
      pthread_mutex_unlock(&a->mu);
      return NULL;
    }
    uint32_t n = MIN(a->nvols, 256u);
    memcpy(vols, a->vols, n * sizeof(cvol *));
    a->vol_users++;
    pthread_mutex_unlock(&a->mu);
    int64_t now = mono_ns();
    for (uint32_t i = 0; i < n; i++) cvol_tick(vols[i], now);
    vol_release(a);
  }
}

// ---- API ----

EXPORT cn_agent *cn_agent_new(cn_plane *p, const char *id, const uint8_t *secret, uint32_t secret_len,
                              const char *gateway, int32_t track, int64_t gateway_timeout_ms, uint64_t max_unconfirmed,
                              int32_t handshake_timeout_ms, char *err, uint64_t errcap) {
  if (!id || strlen(id) == 0 || strlen(id) > 128) {
    snprintf(err, errcap, "agent id must be 1 to 128 characters");
    return NULL;
  }
  if (secret_len < 16 || secret_len > sizeof(((cn_agent *)0)->secret)) {
    snprintf(err, errcap, "the agent's secret must hold 16 to 1024 bytes");
    return NULL;
  }
  cn_agent *a = calloc(1, sizeof *a);
  if (!a) return NULL;
  if (addr_parse(gateway, &a->gateway) < 0) {
    snprintf(err, errcap, "not an address: \"%s\" (use HOST:PORT or unix:/path)", gateway);
    free(a);
    return NULL;
  }
  addr_format(&a->gateway, a->gateway_text, sizeof a->gateway_text);
  a->plane = p;
  snprintf(a->id, sizeof a->id, "%s", id);
  memcpy(a->secret, secret, secret_len);
  a->secret_len = secret_len;
  a->track = track != 0;
  a->gateway_timeout_ns = gateway_timeout_ms * 1000000LL;
  a->max_unconfirmed = max_unconfirmed;
  a->handshake_timeout_ms = handshake_timeout_ms > 0 ? handshake_timeout_ms : 10000;
  a->backoff_ms = 100;
  a->sock = -1;
  a->vols_cap = 16;
  a->vols = calloc(a->vols_cap, sizeof(cvol *));
  a->sbuf = malloc(4 + LINK_MAX_PLAIN + SEAL_TAG);
  a->cw = chunk_writers_new();
  a->sb = standby_new(a);
  if (!a->vols || !a->sbuf || !a->cw || !a->sb) {
    free(a->vols);
    free(a->sbuf);
    chunk_writers_free(a);
    standby_free(a->sb);
    free(a);
    return NULL;
  }
  pthread_mutex_init(&a->mu, NULL);
  pthread_mutex_init(&a->fence_mu, NULL);
  pthread_mutex_init(&a->wake_mu, NULL);
  pthread_cond_init(&a->send_cv, NULL);
  pthread_cond_init(&a->state_cv, NULL);
  pthread_cond_init(&a->house_cv, NULL);
  return a;
}

EXPORT int32_t cn_agent_start(cn_agent *a) {
  pthread_mutex_lock(&a->mu);
  if (a->started) {
    pthread_mutex_unlock(&a->mu);
    return 0;
  }
  a->started = true;
  pthread_mutex_unlock(&a->mu);
  pthread_t *thr[3] = {&a->link_thr, &a->sender_thr, &a->house_thr};
  void *(*fn[3])(void *) = {link_main, sender_main, house_main};
  int n = 0, r = 0;
  while (n < 3 && (r = pthread_create(thr[n], NULL, fn[n], a)) == 0) n++;
  if (n == 3) return 0;
  // out of threads: stop those that started; the agent cannot run
  pthread_mutex_lock(&a->mu);
  a->closing = true;
  a->started = false;
  if (a->sock >= 0) shutdown(a->sock, SHUT_RDWR);
  pthread_cond_broadcast(&a->state_cv);
  pthread_cond_broadcast(&a->house_cv);
  pthread_mutex_unlock(&a->mu);
  agent_wake_sender(a);
  for (int i = 0; i < n; i++) pthread_join(*thr[i], NULL);
  return -r;
}

EXPORT void cn_agent_poke(cn_agent *a) {
  pthread_mutex_lock(&a->mu);
  a->poked = true;
  pthread_cond_broadcast(&a->state_cv);
  pthread_mutex_unlock(&a->mu);
}

EXPORT int32_t cn_agent_add_volume(cn_agent *a, uint32_t link_id, const char *name, int32_t fd, uint64_t size,
                                   const char *dirty_path, uint64_t chunk, int32_t dirty_mode, char *err,
                                   uint64_t errcap) {
  cvol *v = NULL;
  if (agent_volume(a, link_id)) {
    snprintf(err, errcap, "link id %u is taken", link_id);
    return -EEXIST;
  }
  int r = cvol_new(a, link_id, name, fd, size, dirty_path, chunk, dirty_mode, &v, err, errcap);
  if (r < 0) return r;
  pthread_mutex_lock(&a->mu);
  if (a->nvols == a->vols_cap) {
    cvol **nv = realloc(a->vols, sizeof(cvol *) * a->vols_cap * 2);
    if (!nv) {
      pthread_mutex_unlock(&a->mu);
      cvol_free(v);
      return -ENOMEM;
    }
    a->vols = nv;
    a->vols_cap *= 2;
  }
  if (a->nvols >= 256) {
    pthread_mutex_unlock(&a->mu);
    cvol_free(v);
    snprintf(err, errcap, "an agent captures at most 256 volumes");
    return -ENOSPC;
  }
  a->vols[a->nvols++] = v;
  bool connected = a->connected;
  if (connected) {
    pthread_mutex_lock(&v->mu);
    v->link = LINK_OPENING;
    pthread_mutex_unlock(&v->mu);
    agent_queue_open(a, v);
  }
  pthread_mutex_unlock(&a->mu);
  if (connected) agent_wake_sender(a);
  return 0;
}

EXPORT int32_t cn_agent_remove_volume(cn_agent *a, uint32_t link_id, int32_t wait_ms) {
  cvol *v = agent_volume(a, link_id);
  if (!v) return -ENOENT;
  // its exports are withdrawn first: no client holds it any more
  pthread_mutex_lock(&v->mu);
  while (v->holds > 0) pthread_cond_wait(&v->quiet, &v->mu);
  pthread_mutex_unlock(&v->mu);
  cvol_drain(v, wait_ms);
  pthread_mutex_lock(&a->mu);
  for (uint32_t i = 0; i < a->nvols; i++) {
    if (a->vols[i] == v) {
      a->vols[i] = a->vols[--a->nvols];
      break;
    }
  }
  while (a->vol_users > 0) pthread_cond_wait(&a->state_cv, &a->mu);
  pthread_mutex_unlock(&a->mu);
  cvol_free(v);
  return 0;
}

EXPORT void cn_agent_fence(cn_agent *a, const char *reason) {
  bool lift = !reason || !reason[0];
  // no recovery write lands once clients may write: those queued are refused, those in progress end
  if (lift) chunk_writes_hold(a);
  pthread_mutex_lock(&a->fence_mu);
  a->fenced = !lift;
  snprintf(a->fence, sizeof a->fence, "%s", lift ? "" : reason);
  pthread_mutex_unlock(&a->fence_mu);
  if (lift) chunk_writes_resume(a);
}

EXPORT int32_t cn_agent_send(cn_agent *a, const uint8_t *frame, uint64_t len) {
  if (len < FRAME_HEADER || get32(frame) != len - 4 || len > LINK_MAX_PLAIN) return -EINVAL;
  return agent_send_on(a, frame, len, 0);
}

int agent_send_on(cn_agent *a, const uint8_t *frame, uint64_t len, uint64_t epoch) {
  struct outframe *f = malloc(sizeof *f + len);
  if (!f) return -ENOMEM;
  f->len = len;
  memcpy(f->bytes, frame, len);
  pthread_mutex_lock(&a->mu);
  // an answer to a request of a connection gone must not reach the next one (its ids mean other chunks)
  if (!a->connected || (epoch && a->conn_epoch != epoch)) {
    pthread_mutex_unlock(&a->mu);
    free(f);
    return -ENOTCONN;
  }
  push_frame(a, f);
  pthread_mutex_unlock(&a->mu);
  agent_wake_sender(a);
  return 0;
}

EXPORT void cn_agent_reconnect(cn_agent *a) {
  pthread_mutex_lock(&a->mu);
  if (!a->connected) {
    pthread_mutex_unlock(&a->mu);
    return;
  }
  struct timespec until = deadline_in(10000);
  while (a->connected && (a->out_head || a->sending) && cond_wait_until(&a->state_cv, &a->mu, &until)) {
  }
  if (a->connected) {
    a->restarting = true;
    shutdown(a->sock, SHUT_RDWR);
  }
  pthread_mutex_unlock(&a->mu);
}

EXPORT int32_t cn_agent_volume_status(cn_agent *a, uint32_t link_id, uint64_t *out) {
  cvol *v = vol_take(a, link_id);
  if (!v) return -ENOENT;
  cvol_status(v, out);
  vol_release(a);
  return 0;
}

EXPORT int32_t cn_agent_volume_wait_quiet(cn_agent *a, uint32_t link_id, int32_t wait_ms) {
  cvol *v = vol_take(a, link_id);
  if (!v) return -ENOENT;
  int32_t quiet = cvol_wait_quiet(v, wait_ms);
  vol_release(a);
  return quiet;
}

EXPORT int64_t cn_agent_volume_dirty(cn_agent *a, uint32_t link_id, uint8_t *out, uint64_t cap, uint64_t *chunk) {
  cvol *v = vol_take(a, link_id);
  if (!v) return -ENOENT;
  *chunk = v->dirty->chunk;
  int64_t n = cn_dirty_bits(v->dirty, out, cap);
  vol_release(a);
  return n;
}

EXPORT void cn_agent_link_status(cn_agent *a, uint64_t *out, char *err, uint64_t errcap) {
  pthread_mutex_lock(&a->mu);
  out[0] = a->connected;
  out[1] = a->out_bytes;
  out[2] = a->connected ? a->connected_since : 0;
  out[3] = a->batches;
  snprintf(err, errcap, "%s", a->last_error);
  pthread_mutex_unlock(&a->mu);
}

EXPORT void cn_agent_close(cn_agent *a) {
  if (!a) return;
  pthread_mutex_lock(&a->mu);
  // what is queued goes out first (the answers to the gateway's last orders)
  struct timespec until = deadline_in(5000);
  while (a->connected && (a->out_head || a->sending) && cond_wait_until(&a->state_cv, &a->mu, &until)) {
  }
  a->closing = true;
  if (a->sock >= 0) shutdown(a->sock, SHUT_RDWR);
  pthread_cond_broadcast(&a->state_cv);
  pthread_cond_broadcast(&a->house_cv);
  bool started = a->started;
  pthread_mutex_unlock(&a->mu);
  if (started) pthread_join(a->link_thr, NULL);
  chunk_writers_free(a); // their answers go nowhere now
  standby_free(a->sb);    // after the link thread, its only feeder
  if (started) {
    agent_wake_sender(a);
    pthread_join(a->sender_thr, NULL);
    pthread_join(a->house_thr, NULL);
  }
  for (uint32_t i = 0; i < a->nvols; i++) {
    cvol_drain(a->vols[i], 0);
    cvol_free(a->vols[i]);
  }
  drop_frames(a);
  sealer_free(a->tx);
  sealer_free(a->rx);
  free(a->vols);
  free(a->sbuf);
  memset(a->secret, 0, sizeof a->secret);
  pthread_mutex_destroy(&a->mu);
  pthread_mutex_destroy(&a->fence_mu);
  pthread_mutex_destroy(&a->wake_mu);
  pthread_cond_destroy(&a->send_cv);
  pthread_cond_destroy(&a->state_cv);
  pthread_cond_destroy(&a->house_cv);
  free(a);
}
