r"""
# Writing a folder all at once, or not at all

A merge of the 20B model writes 41 GB; a fine-tuning run writes a whole checkpoint at its end. Either can fail,
be interrupted or be killed half-way, and a folder that looks complete but is not is worse than no folder. So both
build their output in a temporary folder beside the final place (on the same file system, so the last step is a
rename) and rename it only when it is complete: `with atomic_folder(out) as tmp: ...write into tmp...`.

What the helper promises, each kept by a test in `tests/test_hostile.py`:

* **Nothing partial under the final name.** On an error, on Ctrl-C, and on `SIGTERM` or `SIGHUP` (a closed
  terminal, a cluster's time limit) the temporary folder is removed and the final name never appears.
* **Nothing foreign deleted.** We only ever remove what this process created. If a folder appears at `out`
  while we write (a user, or a second merge to the same place) we stop and keep both: theirs at `out`, ours
  complete at the temporary name, which the message gives. With `overwrite`, only the folder that was at `out`
  when we started is replaced, and only after the new one is complete.
* **Leftovers of a killed run are found by their marker, never by their name.** `SIGKILL` and a power cut
  cannot be caught. Each temporary folder carries a marker file, `.labml-nn-neox-partial`, holding the
  writer's host and process id; the next run to the same place removes the temporary folders whose marker
  names a process of this host that no longer exists. A folder that merely has a similar name is not touched.
* **The usual permissions.** `tempfile.mkdtemp` makes folders only their owner can read (mode 0700), and
  safetensors writes its files 0600. Ours follow the umask like every other file the user makes, so on a shared
  machine the checkpoint is as readable as the user's other files.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .files import CheckpointError

MARKER = ".labml-nn-neox-partial"


# ## The marker
#
# The marker holds who is writing. A folder is stale when its marker names this host and a process that is
# gone; a folder of a running writer, or of another host sharing the file system, is left alone.
def _write_marker(tmp: Path):
    (tmp / MARKER).write_text(json.dumps({"writer": "labml_nn.neox", "host": socket.gethostname(),
                                          "pid": os.getpid()}))


def _is_stale(folder: Path) -> bool:
    marker = folder / MARKER
    if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
        return False
    try:
        about = json.loads(marker.read_text(encoding="utf-8"))
        if about.get("writer") != "labml_nn.neox" or about.get("host") != socket.gethostname():
            return False
        os.kill(int(about["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return False


def remove_stale(out: Path) -> list:
    """Remove the temporary folders of `out` left by killed runs (those whose marker names a dead process)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for folder in out.parent.glob(f"{out.name}.tmp-*"):
        if _is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


# ## Catching TERM and HUP
#
# Python turns Ctrl-C into `KeyboardInterrupt`, which unwinds through our clean-up, but by default `SIGTERM` and
# `SIGHUP` end the process on the spot. While a folder is being written we turn them into `SystemExit` with the
# shell's status for a signal ($128 + n$), so the clean-up runs too. Signal handlers can only be set from the
# main thread; elsewhere the process keeps its own.
class _CatchSignals:
    SIGNALS = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise SystemExit(f"interrupted by {signal.Signals(signum).name}; the partial output is removed")

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# Some writers create their files private whatever the umask (safetensors writes `model.safetensors` with mode
# 0600), so before publishing, everything in the folder (all of it ours) gets the modes the umask gives a new file
# or folder: with the usual umask 022, readable by everyone, writable by the owner.
def _follow_umask(tmp: Path):
    umask = os.umask(0o022)
    os.umask(umask)
    for folder, subfolders, files in os.walk(tmp):
        os.chmod(folder, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~umask)


# ## Publishing
#
# `rename` of a folder onto an *empty* folder replaces it silently on Linux, so a plain rename could remove a
# folder someone just made. `renameat2` with `RENAME_NOREPLACE` refuses instead; where it is missing (not Linux,
# or a file system without it) we check just before the rename.
def _rename_no_replace(src: Path, dst: Path):
    import ctypes
    import errno
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(dst))  # EEXIST becomes FileExistsError
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, "File exists", str(dst))
    os.rename(src, dst)


def _identity(path: Path):
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _appeared(out: Path, tmp: Path) -> CheckpointError:
    return CheckpointError(f"{out} appeared while we were writing it (another program or another run?). It was "
                           f"left as it is, and our complete output is kept at {tmp}: compare the two, then move "
                           f"or delete one.")


@contextmanager
def atomic_folder(out: "str | Path", *, overwrite: bool = False) -> Iterator[Path]:
    r"""
    Yield a new, empty temporary folder beside `out`; when the block ends without an error, rename it to `out`.
    `out` must not exist unless `overwrite` (then the folder there now is replaced, and only that one).
    """
    out = Path(out).expanduser().absolute()
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise CheckpointError(f"{out} is a file (or a link), not a folder; choose another output folder.")
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} already exists; remove it, choose another name, or pass --overwrite.")
    before = _identity(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = out.parent / f"{out.name}.tmp-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    keep = False  # True once `tmp` is published, or complete and kept: from then on it is never deleted
    try:
        with _CatchSignals():
            _write_marker(tmp)
            yield tmp
            (tmp / MARKER).unlink()
            _follow_umask(tmp)
            now = _identity(out)
            if now is not None and (not overwrite or now != before):
                keep = True
                raise _appeared(out, tmp)
            if now is None:
                try:
                    _rename_no_replace(tmp, out)
                except FileExistsError:
                    keep = True
                    raise _appeared(out, tmp) from None
            else:
                # Move the old folder aside, put the new one in place, and only then delete the old one
                aside = out.parent / f"{out.name}.old-{secrets.token_hex(4)}"
                os.rename(out, aside)
                _rename_no_replace(tmp, out)
                shutil.rmtree(aside, ignore_errors=True)
            keep = True
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
