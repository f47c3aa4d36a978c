r"""
# Downloading the 20B slim weights

EleutherAI publishes the GPT-NeoX-20B "slim weights" (fp16 weights without optimizer states, 39 GB) as a plain
folder over HTTP. We fetch the files our reader needs: the tokenizer, the config, `latest`, and the layer files
of both tensor-parallel ranks (stages 0, 2-45, 47 and 48; see `layouts.py` for the index map). The
`mp_rank_XX_model_states.pt` files beside them hold DeepSpeed's bookkeeping and no weights, so we skip them.

A 39 GB download will be interrupted, so each file is fetched **resumably and atomically**:

* bytes go to `NAME.part`; a later run asks the server only for the rest (an HTTP `Range` request) and
  appends;
* when the `.part` file has exactly the size the server announced, it is renamed to `NAME`. A file under its
  final name is therefore always complete, and files already complete are skipped;
* if the size comes out wrong (a connection closed early, or a server that sent more than it announced), no
  file appears under the final name: a short `.part` is kept to resume from, an over-long one is deleted.

Where to? There is no good implicit place for 39 GB, so the command line takes the folder as an argument.
Without one we use `~/.cache/labml_neox/20B_checkpoints` (or `$LABML_NEOX_CACHE/20B_checkpoints`). We do not use
`labml`'s data path: it is resolved from the calling file's folder and ends up inside `site-packages` when the
package is installed.
"""

import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

from .files import CheckpointError

BASE_URL = "https://the-eye.eu/public/AI/models/GPT-NeoX-20B/slim_weights/"
STEP = "global_step150000"
N_LAYERS, N_RANKS = 44, 2
CHUNK = 1 << 20


def default_dir() -> Path:
    return Path(os.environ.get("LABML_NEOX_CACHE", "~/.cache/labml_neox")).expanduser() / "20B_checkpoints"


def slim_20b_files() -> List[str]:
    """The relative paths of the files the reader needs, in download order (small files first)."""
    stages = [0] + [i + 2 for i in range(N_LAYERS)] + [N_LAYERS + 3, N_LAYERS + 4]
    return (["20B_tokenizer.json", "configs/20B.yml", "latest"]
            + [f"{STEP}/layer_{s:02d}-model_{r:02d}-model_states.pt" for s in stages for r in range(N_RANKS)])


class DownloadError(CheckpointError):
    """A file that could not be fetched completely; the message says whether a rerun resumes it."""


# ## One file
def download_file(url: str, dest: Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    r"""
    Fetch `url` to `dest`, resuming from `dest.part` if it exists. Returns `dest`.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # The server has nothing past our offset: the `.part` is at least as long as the file. We cannot
            # tell a complete file from a damaged one without its size, so we start again.
            part.unlink()
            return download_file(url, dest, progress=progress, timeout=timeout)
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}. Check the URL, or try again later.") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: {e}. Check the connection and run again; downloads resume.") from None

    with response:
        # A 206 continues our `.part`; a 200 means the server ignored the range and sends the whole file.
        if response.status == 206:
            total = int(response.headers["Content-Range"].rsplit("/", 1)[1])
        else:
            offset, total = 0, int(response.headers.get("Content-Length", -1))
        with open(part, "ab" if offset else "wb") as f:
            try:
                _copy(response, f, offset, total, dest.name, progress)
            except (OSError, http.client.HTTPException) as e:
                # A timeout or a reset in the middle of the body: what arrived is in the part file
                f.flush()
                raise DownloadError(f"{url}: the connection failed after {f.tell()} bytes ({type(e).__name__}: "
                                    f"{e}); {part.name} is kept. Run again to resume.") from None

    size = part.stat().st_size
    if total >= 0 and size != total:
        if size > total:
            part.unlink()
            raise DownloadError(f"{url}: received {size} bytes but the server announced {total}; the partial "
                                f"file was deleted. Run again to download it afresh.")
        raise DownloadError(f"{url}: the connection ended after {size} of {total} bytes; {part.name} is kept. "
                            f"Run again to resume.")
    part.rename(dest)
    return dest


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


# ## The whole checkpoint
def download_20b(dest: "str | Path | None" = None, *, base_url: str = BASE_URL,
                 files: Optional[List[str]] = None, progress: bool = True) -> Path:
    r"""
    Download the 20B slim weights (or `files`, relative to `base_url`) into `dest`. Rerunning after an
    interruption resumes; files already complete are skipped.
    """
    dest = Path(dest).expanduser() if dest else default_dir()
    base_url = base_url.rstrip("/") + "/"
    for name in files if files is not None else slim_20b_files():
        download_file(base_url + name, dest / name, progress=progress)
    return dest
