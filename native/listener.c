// The accept loop of every listening socket of the data plane (see listener.h).
#include "listener.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

static void *accept_main(void *arg) {
  listener_t *l = arg;
  thread_name(l->thread_name);
  for (;;) {
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); // fails harmlessly on Unix sockets
      l->on_conn(l->owner, fd);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (l->closing(l->owner)) return NULL;
    char f[128];
    snprintf(f, sizeof f, "{\"error\":\"%s\"}", strerror(errno));
    plane_log(l->plane, LOG_ERROR, l->module, "accept failed", f);
    // out of descriptors or memory: connections are taken again once some are released
    if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS && errno != ENOMEM) return NULL;
    usleep(100000);
  }
}

int listener_start(listener_t *l, const char *text, const char *name, accept_fn on_conn, closing_fn closing,
                   void *owner, cn_plane *plane, const char *module, int32_t *port, char *err, size_t errcap) {
  addr_t a;
  if (addr_parse(text, &a) < 0) {
    snprintf(err, errcap, "not an address: \"%s\" (use HOST:PORT or unix:/path)", text);
    return -EINVAL;
  }
  int p = 0;
  int fd = sock_listen(&a, &p);
  if (fd < 0) {
    char shown[300];
    addr_format(&a, shown, sizeof shown);
    if (fd == -EADDRINUSE) snprintf(err, errcap, "cannot listen on %s: address in use (another Continuum running?)", shown);
    else snprintf(err, errcap, "cannot listen on %s: %s", shown, strerror(-fd));
    return fd;
  }
  *l = (listener_t){.fd = fd, .on_conn = on_conn, .closing = closing, .owner = owner, .plane = plane, .module = module};
  snprintf(l->thread_name, sizeof l->thread_name, "%s", name);
  if (a.unix_socket) snprintf(l->unix_path, sizeof l->unix_path, "%s", a.path);
  int r = pthread_create(&l->thread, NULL, accept_main, l);
  if (r != 0) {
    snprintf(err, errcap, "cannot listen on %s: %s", text, strerror(r));
    close(fd);
    if (l->unix_path[0]) unlink(l->unix_path);
    l->fd = -1;
    return -r;
  }
  if (port && !a.unix_socket) *port = p;
  return 0;
}

void listener_stop(listener_t *l) {
  if (l->fd < 0) return;
  shutdown(l->fd, SHUT_RDWR);
  pthread_join(l->thread, NULL);
  close(l->fd);
  if (l->unix_path[0]) unlink(l->unix_path);
  l->fd = -1;
}
