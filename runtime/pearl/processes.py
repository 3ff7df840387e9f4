"""Facts about processes by pid, read from /proc: alive or not, parent, descendants, and ending them; and
tying a process's life to its parent's."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def process_alive(pid: int) -> bool:
    """True while the process runs. An exited worker stays a zombie until MPI's proxy reaps it: not alive."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to a signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def kill_if_alive(pid: int) -> None:
    if process_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def process_tree(pid: int) -> set[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found



def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send this process ``sig`` when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``;
    elsewhere nothing). "Parent" is the thread that started it: start long-lived children from a thread that
    lives as long as their parent should."""
    parent = os.getppid()
    if _arm_parent_death_signal(sig) and os.getppid() != parent:
        os.kill(os.getpid(), sig)  # the parent died before the signal was armed


def exit_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``subprocess.Popen(preexec_fn=...)`` for a child that must not outlive the process starting it."""
    parent = os.getpid()

    def arm() -> None:  # in the child, between fork and exec
        if _arm_parent_death_signal(sig) and os.getppid() != parent:
            os.kill(os.getpid(), sig)
    return arm


def _arm_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return True
