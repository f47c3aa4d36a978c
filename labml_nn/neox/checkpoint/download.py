r"""
# Downloading the 20B slim weights

EleutherAI publishes the GPT-NeoX-20B "slim weights" (fp16 weights without optimizer states, 41 GB) as a plain
folder over HTTP. We fetch the files our reader needs: the tokenizer, the config, `latest`, and the layer files
of both tensor-parallel ranks (stages 0, 2-45, 47 and 48; see `parts.py` for the index map). The
`mp_rank_XX_model_states.pt` files beside them hold DeepSpeed's bookkeeping and no weights, so we skip them.

A 41 GB download will be interrupted, so each file is fetched **resumably and atomically**:

* bytes go to `NAME.part`; a later run asks the server only for the rest (an HTTP `Range` request) and
  appends;
* when the `.part` file has exactly the size the server announced, it is renamed to `NAME`. A file under its
  final name is therefore always complete, and files already complete are skipped. A server that does not
  announce the size never gets a file finalised on its word;
* if the size comes out wrong (a connection closed early, or a server that sent more than it announced), no
  file appears under the final name: a short `.part` is kept to resume from, an over-long one is deleted.

What the checksums vouch for: `SHA256SUMS` holds the hash of each file *we* downloaded, taken as it completed.
A file already under its final name with no line there (the sums were lost, or an older version downloaded it)
is not adopted on its word: its size is compared with the server's, and bytes from its start, middle and end with
the server's bytes of the same version (`Range` requests pinned by `If-Range` to the `ETag` of the first answer).
If they disagree, the file is fetched again (into `NAME.part`, replacing the old one only when complete). If they
agree, the file is kept, and its hash goes to `SHA256SUMS.adopted`, not `SHA256SUMS`: it was compared in part,
not downloaded, so `download --verify` names it as a file it cannot vouch for (delete it and download again to
be sure).

Where to? There is no good implicit place for 41 GB, so the command line takes the folder as an argument.
Without one we use `~/.cache/labml_neox/20B_checkpoints` (or `$LABML_NEOX_CACHE/20B_checkpoints`). We do not use
`labml`'s data path: it is resolved from the calling file's folder and ends up inside `site-packages` when the
package is installed.
"""

import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from .files import CheckpointError
from .parts import all_parts

BASE_URL = "https://the-eye.eu/public/AI/models/GPT-NeoX-20B/slim_weights/"
STEP = "global_step150000"
N_LAYERS, N_RANKS = 44, 2
CHUNK = 1 << 20


def default_dir() -> Path:
    return Path(os.environ.get("LABML_NEOX_CACHE", "~/.cache/labml_neox")).expanduser() / "20B_checkpoints"


def slim_20b_files() -> List[str]:
    """The relative paths of the files the reader needs, in download order (small files first)."""
    return (["20B_tokenizer.json", "configs/20B.yml", "latest"]
            + [f"{STEP}/{part.pipeline_file(N_LAYERS, r)}" for part in all_parts(N_LAYERS) for r in range(N_RANKS)])


class DownloadError(CheckpointError):
    """A file that could not be fetched completely; the message says whether a rerun resumes it."""


# ## One file
#
# What the server says is checked before a byte is kept: an HTML page (an error or login page served with
# status 200) is not a checkpoint file; a `206 Partial Content` must say which bytes it holds (`Content-Range`),
# and they must start where our `.part` ends. A `.part` is resumed only with `If-Range`, carrying the `ETag` (or
# `Last-Modified`) the server gave when the `.part` was begun: if the file changed on the server since, the server
# answers with the whole new file (status 200) instead of splicing its end onto our old beginning. Without such
# a validator we cannot know, so we start again.
def download_file(url: str, dest: Path, *, progress: bool = True, timeout: float = 60.0,
                  replace: bool = False) -> Path:
    r"""
    Fetch `url` to `dest`, resuming from `dest.part` if it exists. Returns `dest`. A complete `dest` is kept as it
    is, unless `replace` (then it is replaced when the new copy is complete).
    """
    dest = Path(dest)
    if dest.is_file() and not replace:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    validator_file = dest.with_name(dest.name + ".part.etag")
    offset = part.stat().st_size if part.is_file() else 0
    validator = validator_file.read_text().strip() if offset and validator_file.is_file() else ""
    if not validator:
        offset = 0
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # The server has nothing past our offset: the `.part` is at least as long as the file. We cannot
            # tell a complete file from a damaged one without its size, so we start again.
            part.unlink()
            return download_file(url, dest, progress=progress, timeout=timeout, replace=replace)
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}. Check the URL, or try again later.") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: {e}. Check the connection and run again; downloads resume.") from None

    with response:
        kind = response.headers.get("Content-Type", "")
        if kind.startswith("text/html") and not dest.name.endswith(".html"):
            raise DownloadError(f"{url}: the server sent an HTML page, not {dest.name} (an error or login page?). "
                                f"Check --base-url; nothing was saved.")
        served = response.headers.get("ETag") or response.headers.get("Last-Modified") or ""
        if response.status == 206:
            # A 206 continues our `.part`, and only if it is the same file and starts at our offset
            start, total = _content_range(response.headers.get("Content-Range"), url)
            if start != offset or (served and served != validator):
                raise DownloadError(f"{url}: the server resumed at byte {start} of a file tagged {served!r}, but "
                                    f"{part.name} has {offset} bytes of a file tagged {validator!r}. Delete "
                                    f"{part.name} and run again.")
        else:
            # A 200 is the whole file: the server ignored the range, or the file changed since the `.part` began
            length = response.headers.get("Content-Length", "")
            offset, total = 0, int(length) if length.isdigit() else None
            if served:
                validator_file.write_text(served)
            else:
                validator_file.unlink(missing_ok=True)
        with open(part, "ab" if offset else "wb") as f:
            try:
                _copy(response, f, offset, total or 0, dest.name, progress)
            except (OSError, http.client.HTTPException) as e:
                # A timeout or a reset in the middle of the body: what arrived is in the part file
                f.flush()
                raise DownloadError(f"{url}: the connection failed after {f.tell()} bytes ({type(e).__name__}: "
                                    f"{e}); {part.name} is kept. Run again to resume.") from None

    # The file gets its final name only when its size is the one the server announced
    size = part.stat().st_size
    if total is None:
        raise DownloadError(f"{url}: the server did not say how long {dest.name} is (no Content-Length), so a "
                            f"complete file cannot be told from a cut one; {part.name} ({size} bytes) is kept. Run "
                            f"again: the resumed request asks for the size.")
    if size != total:
        if size > total:
            part.unlink()
            raise DownloadError(f"{url}: received {size} bytes but the server announced {total}; the partial "
                                f"file was deleted. Run again to download it afresh.")
        raise DownloadError(f"{url}: the connection ended after {size} of {total} bytes; {part.name} is kept. "
                            f"Run again to resume.")
    os.replace(part, dest) if replace else part.rename(dest)
    validator_file.unlink(missing_ok=True)
    return dest


# ## A file we did not download
#
# Is the file at `path` the one the server holds at `url`? We ask for its first `SAMPLE` bytes and read the size
# from the answer (`Content-Range`, or `Content-Length` from a server that ignores ranges), then the same number
# of bytes from the middle and the end, each pinned with `If-Range` to the first answer's `ETag`: a server whose
# file changed in between answers with the whole file (200), and we take that as a disagreement. Returns why the
# two differ, or `None` when every check agrees.
SAMPLE = 1 << 16


def differs_from_server(url: str, path: Path, *, timeout: float = 60.0) -> Optional[str]:
    size = path.stat().st_size
    if size == 0:
        return "the file here is empty"
    total, etag, mismatch = None, None, None
    with open(path, "rb") as f:
        for start in sorted({0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)}):
            end = min(size, start + SAMPLE) - 1
            headers = {"Range": f"bytes={start}-{end}"}
            if etag:
                headers["If-Range"] = etag
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
                    if r.status == 206:
                        first, whole = _content_range(r.headers.get("Content-Range"), url)
                        if first != start:
                            return f"the server answered from byte {first}, not {start}"
                    elif start == 0:
                        length = r.headers.get("Content-Length", "")
                        whole = int(length) if length.isdigit() else None
                    else:
                        return "the server's file changed while we compared (or it ignores ranges)"
                    theirs = r.read(end - start + 1)
                    etag = etag or r.headers.get("ETag")
            except urllib.error.HTTPError as e:
                return f"the server answered HTTP {e.code}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                raise DownloadError(f"{url}: {e}. Check the connection and run again.") from None
            total = whole if start == 0 else total
            if total is None:
                return "the server does not say how long its file is"
            if total != size:
                return f"{size} bytes here, {total} on the server"
            f.seek(start)
            if f.read(end - start + 1) != theirs:
                mismatch = f"bytes {start}-{end} differ from the server's"
                break
    return mismatch


# `Content-Range: bytes START-END/TOTAL`; anything else in a 206 is a server we cannot trust to resume
def _content_range(header: Optional[str], url: str):
    import re
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*", header or "")
    if not match:
        raise DownloadError(f"{url}: the server answered 206 (partial content) with Content-Range {header!r}, "
                            f"which does not say which bytes it sent; nothing was appended. Run again, or "
                            f"delete the .part file to download the file whole.")
    return int(match[1]), int(match[3])


def _copy(response, f, offset: int, total: int, name: str, progress: bool):
    from labml import monit

    done = offset
    if not progress or total <= 0:
        while chunk := response.read(CHUNK):
            f.write(chunk)
        return
    with monit.section(name, total_steps=total):
        monit.progress(done)
        while chunk := response.read(CHUNK):
            f.write(chunk)
            done += len(chunk)
            monit.progress(done)


# ## The whole checkpoint, and its checksums
#
# Each file's SHA-256 is recorded in `SHA256SUMS` at the top of the folder as the file completes, in the format
# of `sha256sum`, so `sha256sum -c SHA256SUMS` checks the folder too. `verify_20b` (`download --verify`) recomputes
# them: a file that a disk, a copy or an editor damaged later is named, with what to do.
SUMS = "SHA256SUMS"


def sha256_file(path: Path) -> str:
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


ADOPTED = SUMS + ".adopted"


def read_sums(dest: Path, name: str = SUMS) -> Dict[str, str]:
    sums = {}
    path = Path(dest) / name
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            if name:
                sums[name] = digest
    return sums


def download_20b(dest: "str | Path | None" = None, *, base_url: str = BASE_URL,
                 files: Optional[List[str]] = None, progress: bool = True) -> Path:
    r"""
    Download the 20B slim weights (or `files`, relative to `base_url`) into `dest`. Rerunning after an
    interruption resumes; files already complete are skipped.
    """
    dest = Path(dest).expanduser() if dest else default_dir()
    base_url = base_url.rstrip("/") + "/"
    sums, adopted = read_sums(dest), read_sums(dest, ADOPTED)
    for name in files if files is not None else slim_20b_files():
        url, path, record = base_url + name, dest / name, SUMS
        if name in sums or (name in adopted and path.is_file()):
            download_file(url, path, progress=progress)
            continue
        if path.is_file():
            # On disk, but not downloaded by us: compared with the server before it is kept
            why = differs_from_server(url, path)
            if why is None:
                record = ADOPTED
                print(f"{path} was already here without a recorded SHA-256; it matches the server's size and "
                      f"sampled bytes, so it is kept, but `download --verify` cannot vouch for it",
                      file=sys.stderr)
            else:
                print(f"{path} does not match the server ({why}); downloading it again", file=sys.stderr)
                download_file(url, path, progress=progress, replace=True)
        else:
            download_file(url, path, progress=progress)
        (sums if record == SUMS else adopted)[name] = digest = sha256_file(path)
        with open(dest / record, "a", encoding="utf-8") as f:
            f.write(f"{digest}  {name}\n")
    return dest


def verify_20b(dest: "str | Path | None" = None, *, files: Optional[List[str]] = None) -> List[str]:
    r"""
    Recompute the SHA-256 of every downloaded file and compare it with `SHA256SUMS`. Returns the problems, one
    line each (an empty list when every file is as downloaded).
    """
    dest = Path(dest).expanduser() if dest else default_dir()
    sums, adopted, problems = read_sums(dest), read_sums(dest, ADOPTED), []
    for name in files if files is not None else slim_20b_files():
        path = dest / name
        if not path.is_file():
            problems.append(f"{path} is missing; run download again")
        elif name in adopted and name not in sums:
            problems.append(f"{path} was found on disk, not downloaded (it matched the server only in size and "
                            f"sampled bytes, {dest / ADOPTED}); to vouch for it, delete it and run download again")
        elif name not in sums:
            problems.append(f"{path} has no recorded SHA-256 in {dest / SUMS} (downloaded by an older version?); "
                            f"delete it and run download again")
        elif sha256_file(path) != sums[name]:
            problems.append(f"{path} changed since it was downloaded (SHA-256 differs); delete it and run "
                            f"download again")
    return problems
