r"""
# Writing a folder or a file all at once, or not at all

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

## One rule for every place a command writes

Every command that writes (a merge, a fine-tuning run, generation's `--output`, evaluation's `--output`, a
figure) asks `check_target` before any work, and writes through `atomic_folder` or `atomic_file`, so the same
rule holds for files and folders alike, kept by `tests/test_hostile_writes.py`:

* **Built aside, published complete.** A file goes to `NAME.tmp-XXXX` beside it and is renamed when closed; a
  failed, interrupted or terminated run removes it, and what was at `NAME` before is untouched.
* **An existing target is refused unless `--overwrite`.** The one exception is a file that is not a regular
  file (`/dev/null`, a named pipe): writing to it replaces nothing, so it is written in place.
* **`--overwrite` never replaces what the command reads**: a target that is a source, holds one, or lies inside
  one (a prompt file given as `--output`, a checkpoint given as its own output) is refused, with or without
  `--overwrite`. Paths are compared after resolving links, so a link to the source is the source.
* **Never the current folder or a folder above it.** Replacing it would pull the working folder from under the
  user (and `..` cannot even be renamed).
* **A folder holding what we did not write is not replaced.** We decided against a marker of our own ("replace
  what carries our mark"): it would delete a note the user saved into an old output, and refuse every folder an
  older version wrote. Instead `--overwrite` replaces a folder only when it is empty or everything in it has a
  name a checkpoint has (`CHECKPOINT_NAMES`: `config.json`, `*.safetensors`, `latest`, `configs/*.yml`,
  `global_stepN/*.pt`, a tokenizer JSON ...). Anything else (`notes.txt`, a `src/` folder, a hidden file) makes
  it refuse and name what it found, so the user moves it or picks another place.

A refusal is a `CheckpointError` (`OutputRefused`), which every command reports as one line with exit status 1.
"""

import fnmatch
import json
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator, List, Optional

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


class OutputRefused(CheckpointError):
    """A place a command must not write to (it exists, it is read, it is the current folder ...): exit status 1."""


# ## May we write there?
#
# `check_target` is the rule above, asked before any work so that a refusal costs a second, not a 41 GB merge.
# It returns the path to write: absolute, and for a file given through a link, the file the link names (the link
# stays a link). `reads` are the paths the command reads (a checkpoint, a prompt file, a text); Hub names among
# them resolve to no existing path and never match.
CHECKPOINT_NAMES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                    "pytorch_model*.bin", "pytorch_model.bin.index.json", "*tokenizer*.json",
                    "special_tokens_map.json", "latest", "SHA256SUMS"]


def _ours(entry: Path) -> bool:
    if entry.is_symlink():
        return False
    if entry.is_dir():
        if entry.name == "configs":
            return all(f.is_file() and f.suffix in (".yml", ".yaml") for f in entry.iterdir())
        if re.fullmatch(r"global_step\d+", entry.name):
            return all(f.is_file() and f.suffix == ".pt" for f in entry.iterdir())
        return False
    return entry.is_file() and any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in CHECKPOINT_NAMES)


def foreign_entries(folder: Path) -> List[str]:
    """The names in `folder` that no checkpoint of ours holds (folders with a trailing `/`), sorted."""
    return sorted(e.name + ("/" if e.is_dir() and not e.is_symlink() else "") for e in Path(folder).iterdir()
                  if not _ours(e))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_target(path: "str | Path", *, overwrite: bool = False, reads: Iterable = (), folder: bool = True,
                 name: Optional[str] = None) -> Path:
    r"""
    Check that a command may write `path` (a folder when `folder`, else a file) under the rule above; raise
    `OutputRefused` saying why not and what to do. `name` is the option that named it (`--output`), for messages.
    """
    label = f"{name} {path}" if name else str(path)
    out = Path(path).expanduser().absolute()
    real = out.resolve()
    exists = out.exists() or out.is_symlink()
    here = Path.cwd().resolve()
    if _inside(here, real):
        raise OutputRefused(f"{label} is the current folder or a folder above it; no command writes over it, even "
                            f"with --overwrite. Name a new folder instead (such as {out / 'out'}).")
    for source in reads:
        if source is None:
            continue
        source = Path(source).expanduser().resolve()
        if real == source or _inside(source, real) or (exists and _inside(real, source)):
            what = "is" if real == source else ("holds" if _inside(source, real) else "lies inside")
            raise OutputRefused(f"{label} {what} {source}, which this command reads; it is never replaced, even "
                                f"with --overwrite. Choose another place to write.")
    if not folder and not real.parent.is_dir():
        raise OutputRefused(f"{label}: the folder {out.parent} does not exist; create it or choose another path.")
    if not exists:
        return out
    if folder and (out.is_symlink() or not out.is_dir()):
        raise OutputRefused(f"{label} is a file (or a link), not a folder; choose another output folder.")
    if not folder:
        if real.is_dir():
            raise OutputRefused(f"{label} is a folder; name a file to write.")
        if real.exists() and not real.is_file():
            return real  # a device or a pipe: written in place, nothing is replaced
    if not overwrite:
        raise OutputRefused(f"{label} already exists; remove it, choose another name, or pass --overwrite.")
    if folder:
        foreign = foreign_entries(out)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputRefused(f"{label} holds what no checkpoint of ours holds ({shown}); --overwrite replaces "
                                f"only an empty folder or a checkpoint. Move those out, or choose another folder.")
    return real if not folder else out


# ## A file, all at once
#
# `StagedFile` writes to `NAME.tmp-XXXX` beside the target and renames it in two steps that a caller can keep
# apart: `write` (the content, closed and flushed, so a full disk shows here) and `publish` (the rename). A merge
# writes its report before it publishes its folder and publishes the report after, so that a report that cannot
# be written leaves no folder. A device or a pipe is written in place. A `SIGKILL` can leave `NAME.tmp-XXXX`
# behind; a file has no room for a marker, so, unlike folders, it is left for the user to delete.
class StagedFile:
    def __init__(self, target: Path, *, overwrite: bool = False, binary: bool = False, label: str = ""):
        self.target, self.overwrite, self.label = Path(target), overwrite, label or str(target)
        self.tmp, self.done = None, False
        mode = "b" if binary else ""
        encoding = None if binary else "utf-8"
        if self.target.exists() and not self.target.is_file():
            self.file = open(self.target, "w" + mode, encoding=encoding)
            return
        self.tmp = self.target.parent / f"{self.target.name}.tmp-{secrets.token_hex(4)}"
        self.file: IO = open(self.tmp, "x" + mode, encoding=encoding)

    def write(self, content=None):
        """Write `content` (if given), then close the file; an error names the target and leaves nothing."""
        try:
            if content is not None:
                self.file.write(content)
            self.file.close()
        except OSError as e:
            self.discard()
            raise OutputRefused(f"writing {self.label}: {e.strerror or e}; nothing was written there.") from None

    def publish(self):
        self.write()
        if self.tmp is not None:
            if self.overwrite:
                os.replace(self.tmp, self.target)
            else:
                try:
                    _rename_no_replace(self.tmp, self.target)
                except FileExistsError:
                    self.done = True
                    raise OutputRefused(f"{self.label} appeared while we were writing it (another program or "
                                        f"another run?). It was left as it is, and our output is kept at "
                                        f"{self.tmp}.") from None
        self.done = True

    def discard(self):
        if self.done:
            return
        self.done = True
        try:
            self.file.close()
        except OSError:
            pass
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: "str | Path", *, overwrite: bool = False, reads: Iterable = (), binary: bool = False,
                name: Optional[str] = None) -> Iterator[IO]:
    r"""
    Yield an open file (text in UTF-8, or `binary`) that appears at `path` only when the block ends without an
    error. `path` is checked by `check_target` first.
    """
    target = check_target(path, overwrite=overwrite, reads=reads, folder=False, name=name)
    staged = StagedFile(target, overwrite=overwrite, binary=binary, label=f"{name} {path}" if name else str(path))
    try:
        with _CatchSignals():
            yield staged.file
            staged.publish()
    finally:
        staged.discard()


@contextmanager
def atomic_folder(out: "str | Path", *, overwrite: bool = False, reads: Iterable = ()) -> Iterator[Path]:
    r"""
    Yield a new, empty temporary folder beside `out`; when the block ends without an error, rename it to `out`.
    `out` must not exist unless `overwrite` (then the folder there now is replaced, and only that one), and is
    checked by `check_target` (never a folder it `reads`, the current folder, or a folder holding foreign files).
    """
    out = check_target(out, overwrite=overwrite, reads=reads, folder=True)
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
