"""Stage-process shim: `python -I -S shim.py -- COMMAND…` (Linux).

The runner starts every `run:` stage through this shim, in a new session, so that the stage's
whole process tree shares one process group. The shim asks the kernel for a parent-death signal:
if the runner dies (even by SIGKILL), the shim kills the group at once, so a rescued run is never
executed by two process trees. SIGTERM sent to the group by the runner (cancel, timeout) reaches
the command too; the shim then just waits for it, and exits with its status.
Standard library only: it must start fast and must not import the runner.
"""

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def _kill_group(*_: object) -> None:
    os.killpg(0, signal.SIGKILL)


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("shim: no command", file=sys.stderr)
        return 2
    expected_parent = int(os.environ.pop("LOOPDECK_SHIM_PARENT", "0") or 0)
    signal.signal(signal.SIGUSR1, _kill_group)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR1)
    except (OSError, AttributeError):  # not Linux: best effort only
        pass
    if expected_parent and os.getppid() != expected_parent:
        return 137  # the runner died before the signal was armed
    signal.signal(signal.SIGTERM, lambda *_: None)  # the group got it; wait for the command
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        child = subprocess.Popen(argv)
    except OSError as exc:
        print(f"cannot start {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    code = child.wait()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
