"""One file read or written safely, for the artifact store and every reader of data files:
``decoding`` turns a decoder's error into an UnreadableFile that names the file and says what
to do (``advice``); ``atomic_write`` and its JSON and torch forms write through a unique
temporary sibling and a rename, so no reader sees half a file; ``writing`` names the file
behind a failed write's OSError (a full disk)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from contextlib import contextmanager
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Iterator, Optional

_ARTIFACT_DIR = re.compile(r"([a-z_]+)-[0-9a-f]{16}")


class UnreadableFile(ValueError):
    """A file that exists but cannot be decoded; the message names it and says what to do."""


def advice(path: str | Path, otherwise: Optional[str] = None) -> str:
    """What to do about a file that cannot be read: an artifact's file is
    recomputed, any other (a data set's) replaced, or ``otherwise``."""
    for parent in Path(path).absolute().parents:
        m = _ARTIFACT_DIR.fullmatch(parent.name)
        if m:
            return (f"it belongs to the {m[1]} artifact {parent}: run `wsss run` again (files that fail their "
                    f"check are recomputed) or `wsss run --force {m[1]}`")
    return otherwise or ("replace the file (`wsss fetch voc` / `wsss fetch coco` fetches a data set again, or "
                         "copy it anew) or remove it from the split")


@contextmanager
def decoding(path: str | Path, what: str, fix: Optional[str] = None) -> Iterator[None]:
    """Wrap the decoding of one file: any error but a missing file becomes an
    UnreadableFile naming the file, what it is and what to do (``fix``, by
    default ``advice``). The one helper every reader of artifact and data files uses."""
    try:
        yield
    except (UnreadableFile, FileNotFoundError):
        raise
    except Exception as e:  # decoders raise many types (OSError, ValueError, RuntimeError, EOFError, ...)
        raise UnreadableFile(f"{path}: cannot read this {what} ({type(e).__name__}: {e}); "
                             f"{fix or advice(path)}") from e


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def unique_tmp(path: Path) -> Path:
    """Temporary sibling of ``path`` for an atomic write (write, then os.replace):
    unique per process and thread, so two writers of one file never share it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself or in its cause/context chain): torch's zip writer
    turns a failed write (ENOSPC) into 'unexpected pos ...' and keeps the real error as context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Re-raise an OSError (disk full, ...) behind a failure of the block naming ``path`` and its errno."""
    try:
        yield
    except BaseException as e:
        err = _os_error(e)
        if err is not None and not (isinstance(e, OSError) and str(path) in str(e)):
            raise OSError(err.errno, f"{os.strerror(err.errno)} while writing", str(path)) from e
        raise


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a unique temporary sibling of ``path`` to write; rename it into place when the
    block succeeds. On any failure the temporary file is removed (an OSError names ``path``)."""
    path, tmp = Path(path), unique_tmp(path)
    with writing(path):
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def torch_save_atomic(obj: Any, path: Path) -> None:
    """torch.save via a unique temp file and a rename. Through a file object:
    given a path, torch names the archive's root folder after the (temp) file
    name, which would put the writer's pid into the bytes."""
    import torch
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))


_COMPACT = json.JSONEncoder(default=str)  # no indent: json's C encoder


def json_rows(table: dict, indent: str = "") -> str:
    """``table`` as a JSON object with one line per entry, each value compact: written by json's C
    encoder (``indent`` would make json use its pure-Python one, twice as slow on the 40k entries
    of a 20k-image CAM store's manifest). ``indent``: the object's own indentation."""
    if not table:
        return "{}"
    rows = f",\n{indent}  ".join(f"{encode_basestring_ascii(k)}: {_COMPACT.encode(v)}" for k, v in table.items())
    return f"{{\n{indent}  {rows}\n{indent}}}"
