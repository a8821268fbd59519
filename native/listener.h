// A listening socket with its accept thread (listener.c), shared by the NBD server and the
// gateway: each accepted connection is handed to the owner's callback.
#ifndef CN_LISTENER_H
#define CN_LISTENER_H
#include "internal.h"

/** Takes an accepted connection (the callee owns fd). */
typedef void (*accept_fn)(void *owner, int fd);
/** Whether the owner is stopping (an accept error then ends the thread quietly). */
typedef bool (*closing_fn)(void *owner);

typedef struct {
  int fd;
  pthread_t thread;
  char unix_path[108]; // removed when the listener stops
  char thread_name[16];
  accept_fn on_conn;
  closing_fn closing;
  void *owner;
  cn_plane *plane;
  const char *module;
} listener_t;

/**
 * Listens on `text` (HOST:PORT or unix:/path) and starts accepting; *port gets the TCP port
 * (useful with port 0). 0 or -errno with a message in err.
 */
int listener_start(listener_t *l, const char *text, const char *thread_name, accept_fn on_conn, closing_fn closing,
                   void *owner, cn_plane *plane, const char *module, int32_t *port, char *err, size_t errcap);
/** Stops accepting: ends the thread, closes the socket, removes a Unix socket's path. */
void listener_stop(listener_t *l);
#endif
