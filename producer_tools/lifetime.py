"""Child processes that end with the tool that started them, even when the tool is killed outright.

Interrupted or terminated, a tool stops what it started. Killed with SIGKILL (or by the kernel's
out-of-memory killer), it runs no more code, and its embedded broker and consumer lived on. On
Linux the kernel can still tell them: the command is started through a small launcher that asks
for a signal once the thread that started it ends (``PR_SET_PDEATHSIG``), then becomes the
command (``exec`` keeps the request and the pid).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

#: ``PR_SET_PDEATHSIG`` in <sys/prctl.h>
_PR_SET_PDEATHSIG = 1

#: argv: the signal, the pid of the process that started it, then the command. If that process
#: ended before the request was made, the request would never fire: nothing is started then.
_LAUNCHER = f"""\
import ctypes, os, sys
ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG}, int(sys.argv[1]), 0, 0, 0)
if os.getppid() != int(sys.argv[2]):
    sys.exit(1)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def ending_with_this_process(command: list[str], sig: signal.Signals) -> list[str]:
    """``command``, started so that it gets ``sig`` once this process ends, however it ends.

    Linux only, and only from the main thread: the kernel signals when the *thread* that started
    the child ends, and another thread may end long before the process does. Elsewhere, ``command``
    as it is (the child then outlives a killed tool, as before)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return command
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(int(sig)), str(os.getpid()), *command]
