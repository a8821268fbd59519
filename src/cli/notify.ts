// systemd's readiness protocol (sd_notify): with Type=notify, systemd sets NOTIFY_SOCKET
// to a Unix datagram socket, a path or an abstract name written "@name", and waits for
// "READY=1" before it counts the service as started. Deno's own Unix datagram sockets
// need --unstable-net and cannot send without binding a path of their own, so the
// datagram goes out through libc (socket/sendto) over FFI, which every role already
// uses for its native library. Without NOTIFY_SOCKET every call is a no-op; a failure
// is logged and never stops the role.
import { logger } from "../log.ts";

const log = logger("notify");

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;
/** sizeof(struct sockaddr_un): 2 bytes of family, 108 of path. */
const SOCKADDR_UN_SIZE = 110;

const libcSymbols = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

let libc: Deno.DynamicLibrary<typeof libcSymbols>["symbols"] | undefined;

function errno(): number {
  const p = libc!.__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

/**
 * The sockaddr_un for a NOTIFY_SOCKET value and its length, or an error message.
 * "@name" is Linux's abstract namespace: a leading NUL byte and no terminator.
 */
export function notifyAddress(value: string): { addr: Uint8Array; len: number } | string {
  const abstract = value.startsWith("@");
  if (!abstract && !value.startsWith("/")) {
    return `NOTIFY_SOCKET=${value}: only Unix socket paths and @abstract names are supported`;
  }
  const name = new TextEncoder().encode(abstract ? value.slice(1) : value);
  // a path needs room for its terminating NUL; an abstract name for its leading one
  if (name.length + 1 > SOCKADDR_UN_SIZE - 2) return `NOTIFY_SOCKET=${value}: name too long`;
  const addr = new Uint8Array(SOCKADDR_UN_SIZE);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(name, abstract ? 3 : 2);
  return { addr, len: 2 + 1 + name.length };
}

/**
 * Sends one sd_notify message ("KEY=VALUE" lines). Returns true when it was sent,
 * false when there is no NOTIFY_SOCKET or sending failed (then a warning is logged).
 */
export function sdNotify(message: string): boolean {
  const target = Deno.env.get("NOTIFY_SOCKET");
  if (!target) return false;
  const address = notifyAddress(target);
  if (typeof address === "string") {
    log.warn("cannot notify systemd", { error: address });
    return false;
  }
  try {
    libc ??= Deno.dlopen("libc.so.6", libcSymbols).symbols;
  } catch (e) {
    log.warn("cannot notify systemd: libc not loadable", { error: (e as Error).message });
    return false;
  }
  const fd = libc.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log.warn("cannot notify systemd: socket() failed", { errno: errno() });
    return false;
  }
  try {
    const data = new TextEncoder().encode(message);
    const n = Number(libc.sendto(fd, data, BigInt(data.length), MSG_NOSIGNAL, address.addr, address.len));
    if (n !== data.length) {
      log.warn("cannot notify systemd: sendto() failed", { socket: target, errno: errno() });
      return false;
    }
    return true;
  } finally {
    libc.close(fd);
  }
}

function statusLine(status: string): string {
  // one line: systemd reads the datagram as newline-separated assignments
  return `STATUS=${status.replace(/[\r\n]+/g, " ")}`;
}

/** Tells systemd the role is serving (Type=notify: the unit becomes "active"). */
export function notifyReady(status: string): boolean {
  return sdNotify(`READY=1\n${statusLine(status)}\n`);
}

/** Tells systemd the role is shutting down cleanly. */
export function notifyStopping(status = "stopping"): boolean {
  return sdNotify(`STOPPING=1\n${statusLine(status)}\n`);
}

/** Updates the free-form status shown by `systemctl status`. */
export function notifyStatus(status: string): boolean {
  return sdNotify(`${statusLine(status)}\n`);
}
