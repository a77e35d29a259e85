"""Faults made without privileges, for the tests that run glomx's doors as subprocesses.

- :func:`refusing_env`: every write, create, rename or removal at or under a folder fails with
  a chosen errno, as the kernel fails them in an immutable (``chattr +i``: EPERM), read-only
  (EROFS) or unwritable (EACCES) folder. A ``sitecustomize`` module on ``PYTHONPATH`` wraps
  the ``os`` and ``io`` calls that reach the kernel, so no mount, ``chattr`` or root is needed.
- :func:`file_size_limit`: ``ulimit -f`` for a child process; a write past it fails with
  EFBIG (Python ignores SIGXFSZ), a disk that is full for this process only.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from pathlib import Path

SITECUSTOMIZE = """
import builtins, errno, io, os

_FOLDER = os.path.realpath(os.environ["GLOMX_TEST_REFUSE_DIR"])
_ERRNO = int(os.environ["GLOMX_TEST_REFUSE_ERRNO"])
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _inside(path):
    if isinstance(path, int):
        return False
    real = os.path.realpath(os.fsdecode(path))
    return real == _FOLDER or real.startswith(_FOLDER + os.sep)


def _refuse(path):
    raise OSError(_ERRNO, os.strerror(_ERRNO), os.fsdecode(path))


def _paths(call, n):
    def wrapped(*args, **kwargs):
        for path in args[:n]:
            if _inside(path):
                _refuse(path)
        return call(*args, **kwargs)
    return wrapped


_os_open = os.open
def _open_fd(path, flags, *args, **kwargs):
    if flags & _WRITE and _inside(path):
        _refuse(path)
    return _os_open(path, flags, *args, **kwargs)
os.open = _open_fd

_io_open = io.open
def _open_file(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and _inside(file):
        _refuse(file)
    return _io_open(file, mode, *args, **kwargs)
builtins.open = io.open = _open_file

for _name, _n in (("mkdir", 1), ("rename", 2), ("replace", 2), ("unlink", 1), ("remove", 1),
                  ("rmdir", 1), ("symlink", 2), ("link", 2)):
    setattr(os, _name, _paths(getattr(os, _name), _n))
"""


def refusing_env(tmp: Path, folder: Path, errno: int, env: dict[str, str] | None = None):
    """An environment in which a Python process refuses every change at or under ``folder``
    with ``errno``."""
    hook = tmp / "refusing-site"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    env.update(GLOMX_TEST_REFUSE_DIR=str(folder), GLOMX_TEST_REFUSE_ERRNO=str(errno))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def file_size_limit(limit_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` that limits the size of any file the child writes."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return limit
