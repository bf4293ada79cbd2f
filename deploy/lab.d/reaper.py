"""reaper.py CMD [ARGS...] — run CMD as the child of a child-subreaper and exit with its status.

deploy/lab runs each node's libvirtd (in the foreground) under this. libvirt daemonizes qemu, so
a guest's qemu is an orphan; without a subreaper it is re-parented to PID 1, and when PID 1 reaps
its zombies only every second or two (as in some sandboxes), every `virsh destroy`, shutdown and
migration source clean-up waits that long for the zombie to vanish (measured: destroy 1.7 s ->
0.1 s). Here orphans below libvirtd are re-parented to this process and reaped at once.
"""
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: reaper.py CMD [ARGS...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"reaper: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
    child = os.fork()
    if child == 0:
        os.execvp(sys.argv[1], sys.argv[1:])
    # pass termination signals on to the command
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: os.kill(child, s))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        if pid == child:
            return os.waitstatus_to_exitcode(status) & 0xFF


if __name__ == "__main__":
    sys.exit(main())
