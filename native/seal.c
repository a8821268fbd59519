// The agent ↔ gateway link's protection: a challenge-response that proves both ends hold
// the agent's secret (HMAC-SHA256 over fresh nonces), then per-session keys, one per
// direction, and every batch of frames sealed with AES-256-GCM. The nonce is a per-direction
// counter, so a batch replayed, reordered or dropped inside a session fails its tag and ends
// the session; a new session has new nonces, so nothing recorded can be replayed into it.
// A link over a Unix socket is authenticated the same way and then not sealed: the kernel
// keeps that stream (no third party reads or alters it), and sealing took 17 % of all CPU
// samples at 1 MiB writes (docs/decisions.md).
#include "internal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/random.h>

struct sealer {
  EVP_CIPHER_CTX *ctx; // holds the key schedule: each batch sets only its nonce (NULL: plain)
  uint64_t counter;
  bool encrypt;
};

sealer_t *sealer_new(const uint8_t key[32], bool encrypt, bool plain) {
  sealer_t *s = calloc(1, sizeof *s);
  if (!s || plain) return s;
  s->ctx = EVP_CIPHER_CTX_new();
  if (!s->ctx) {
    free(s);
    return NULL;
  }
  s->encrypt = encrypt;
  int ok = encrypt ? EVP_EncryptInit_ex(s->ctx, EVP_aes_256_gcm(), NULL, key, NULL)
                   : EVP_DecryptInit_ex(s->ctx, EVP_aes_256_gcm(), NULL, key, NULL);
  if (ok != 1) {
    sealer_free(s);
    return NULL;
  }
  return s;
}

void sealer_free(sealer_t *s) {
  if (!s) return;
  EVP_CIPHER_CTX_free(s->ctx); // cleanses the key schedule
  free(s);
}

uint32_t seal_tag(const sealer_t *s) { return s->ctx ? SEAL_TAG : 0; }

static void plain_copy(uint8_t *out, const uint8_t *in, size_t len) {
  if (out != in) memcpy(out, in, len);
}

static void nonce_of(uint64_t counter, uint8_t iv[12]) {
  memset(iv, 0, 4);
  put64(iv + 4, counter);
}

int seal_begin(sealer_t *s, uint8_t *out, uint32_t plain_len) {
  uint8_t iv[12];
  nonce_of(s->counter++, iv);
  put32(out, plain_len);
  if (!s->ctx) return 0;
  int n;
  if (EVP_EncryptInit_ex(s->ctx, NULL, NULL, NULL, iv) != 1) return -EIO;
  // the length prefix travels in clear and is authenticated
  if (EVP_EncryptUpdate(s->ctx, NULL, &n, out, 4) != 1) return -EIO;
  return 0;
}

int seal_update(sealer_t *s, uint8_t *out, const uint8_t *in, size_t len) {
  if (!s->ctx) {
    plain_copy(out, in, len);
    return 0;
  }
  while (len > 0) {
    int chunk = (int)MIN(len, (size_t)1 << 30), n;
    if (EVP_EncryptUpdate(s->ctx, out, &n, in, chunk) != 1 || n != chunk) return -EIO;
    out += chunk;
    in += chunk;
    len -= (size_t)chunk;
  }
  return 0;
}

int seal_end(sealer_t *s, uint8_t *tag) {
  if (!s->ctx) return 0;
  int n;
  uint8_t scratch[16];
  if (EVP_EncryptFinal_ex(s->ctx, scratch, &n) != 1) return -EIO;
  if (EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG, tag) != 1) return -EIO;
  return 0;
}

int unseal_begin(sealer_t *s, const uint8_t len_prefix[4]) {
  uint8_t iv[12];
  nonce_of(s->counter++, iv);
  if (!s->ctx) return 0;
  int n;
  if (EVP_DecryptInit_ex(s->ctx, NULL, NULL, NULL, iv) != 1) return -EIO;
  if (EVP_DecryptUpdate(s->ctx, NULL, &n, len_prefix, 4) != 1) return -EIO;
  return 0;
}

int unseal_update(sealer_t *s, uint8_t *out, const uint8_t *in, size_t len) {
  if (!s->ctx) {
    plain_copy(out, in, len);
    return 0;
  }
  while (len > 0) {
    int chunk = (int)MIN(len, (size_t)1 << 30), n;
    if (EVP_DecryptUpdate(s->ctx, out, &n, in, chunk) != 1 || n != chunk) return -EIO;
    out += chunk;
    in += chunk;
    len -= (size_t)chunk;
  }
  return 0;
}

int unseal_end(sealer_t *s, const uint8_t *tag) {
  if (!s->ctx) return 0;
  if (EVP_CIPHER_CTX_ctrl(s->ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG, (void *)tag) != 1) return -EIO;
  uint8_t scratch[16];
  int n;
  // a wrong tag: the batch was altered, replayed or reordered
  if (EVP_DecryptFinal_ex(s->ctx, scratch, &n) != 1) return -EBADMSG;
  return 0;
}

int unseal(sealer_t *s, const uint8_t len_prefix[4], uint8_t *buf, uint32_t plain_len) {
  int r = unseal_begin(s, len_prefix);
  if (r == 0) r = unseal_update(s, buf, buf, plain_len);
  if (r == 0) r = unseal_end(s, buf + plain_len);
  return r;
}

void hmac256(const uint8_t *key, size_t key_len, const void *const *parts, const size_t *lens, int n,
             uint8_t out[32]) {
  uint8_t msg[1024];
  size_t len = 0;
  for (int i = 0; i < n; i++) {
    size_t l = MIN(lens[i], sizeof msg - len);
    memcpy(msg + len, parts[i], l);
    len += l;
  }
  size_t outlen = 0;
  EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, msg, len, out, 32, &outlen);
  OPENSSL_cleanse(msg, len);
}

void random_bytes(uint8_t *out, size_t n) {
  while (n > 0) {
    ssize_t r = getrandom(out, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      RAND_bytes(out, (int)n);
      return;
    }
    out += r;
    n -= (size_t)r;
  }
}

static void labelled(const uint8_t *secret, size_t secret_len, const char *label, const char *agent,
                     const uint8_t *first, const uint8_t *second, uint8_t out[32]) {
  const void *parts[5] = {label, agent, "/", first, second};
  size_t lens[5] = {strlen(label), strlen(agent), 1, 32, 32};
  hmac256(secret, secret_len, parts, lens, 5, out);
}

void link_proof(const uint8_t *secret, size_t secret_len, bool agent_side, const char *agent,
                const uint8_t gw_nonce[32], const uint8_t agent_nonce[32], uint8_t out[32]) {
  if (agent_side) labelled(secret, secret_len, "continuum-link-v2/agent/", agent, gw_nonce, agent_nonce, out);
  else labelled(secret, secret_len, "continuum-link-v2/gateway/", agent, agent_nonce, gw_nonce, out);
}

void link_key(const uint8_t *secret, size_t secret_len, bool agent_to_gateway, const char *agent,
              const uint8_t gw_nonce[32], const uint8_t agent_nonce[32], uint8_t out[32]) {
  labelled(secret, secret_len,
           agent_to_gateway ? "continuum-link-v2/key/agent-to-gateway/" : "continuum-link-v2/key/gateway-to-agent/",
           agent, gw_nonce, agent_nonce, out);
}

bool same_bytes(const uint8_t *a, const uint8_t *b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

// ---- the site links' sealers (continuum.h) ----
struct cn_sealer {
  sealer_t *s;
};

EXPORT cn_sealer *cn_sealer_new(const uint8_t *key32, int32_t encrypt) {
  cn_sealer *c = malloc(sizeof *c);
  if (!c) return NULL;
  c->s = sealer_new(key32, encrypt != 0, false);
  if (!c->s) {
    free(c);
    return NULL;
  }
  return c;
}

EXPORT void cn_sealer_free(cn_sealer *c) {
  if (!c) return;
  sealer_free(c->s);
  free(c);
}

EXPORT int32_t cn_seal(cn_sealer *c, const uint8_t *in, uint32_t len, uint8_t *out) {
  int r = seal_begin(c->s, out, len);
  if (r == 0) r = seal_update(c->s, out + 4, in, len);
  if (r == 0) r = seal_end(c->s, out + 4 + len);
  return r;
}

EXPORT int32_t cn_unseal(cn_sealer *c, uint8_t *buf, uint32_t len) {
  if (get32(buf) != len) return -EINVAL;
  return unseal(c->s, buf, buf + 4, len);
}
