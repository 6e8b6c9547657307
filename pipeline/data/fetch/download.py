"""Retrieval and checksums of `wsss fetch` (pipeline/data/fetch/__init__.py).

pooch does the retrieval and the checksum check; the only HTTP code here is a
small pooch downloader that resumes an interrupted transfer with a Range
request (pooch's own downloaders restart from zero) and copies from a local
mirror (file://). Checksums: the publisher's, the WSSS_FETCH_HASHES overrides, or
the one recorded on first download (REGISTRY)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from pipeline.fileio import sha256_file, write_json_atomic

log = logging.getLogger("wsss")

ENV_BASE_URL = "WSSS_FETCH_BASE_URL"
ENV_HASHES = "WSSS_FETCH_HASHES"
REGISTRY = "wsss-fetch-registry.json"


class FetchError(RuntimeError):
    """A download/verification/unpacking problem, naming URL, checksum and path."""


@dataclass(frozen=True)
class Remote:
    name: str                          # file name on disk and in a mirror
    url: str
    known_hash: Optional[str] = None   # "md5:..."/"sha256:..." as the publisher gives it; None: recorded
    sha256_prefix: Optional[str] = None  # a prefix published in the file name (torchvision/mmengine style)
    key: Optional[str] = None          # config key that points at the file (weights)
    note: str = ""



class ResumableDownloader:
    """pooch downloader: HTTP(S) into a persistent `<name>.part` that a later attempt (or a later
    run) continues with a Range request; file:// copies from a mirror. It retries while
    attempts make progress, so a dropped connection resumes and a dead host fails at once."""

    def __init__(self, part: Path, progress: bool = True, timeout: float = 60, max_attempts: int = 50):
        self.part, self.progress, self.timeout, self.max_attempts = part, progress, timeout, max_attempts

    def __call__(self, url: str, output_file, pooch=None, check_only: bool = False):
        if url.startswith("file://"):
            shutil.copyfile(url[len("file://"):], output_file)
            return
        import requests
        from tqdm import tqdm
        for attempt in range(self.max_attempts):
            have = self.part.stat().st_size if self.part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            got = 0
            try:
                with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as r:
                    if r.status_code == 416 and have:  # the .part is already whole
                        break
                    r.raise_for_status()
                    if r.headers.get("Content-Type", "").startswith("text/html"):
                        raise FetchError(f"{url}: the server answered with an HTML page, not the file "
                                         "(a login/quota page?); download it by hand and use --mirror")
                    if have and r.status_code != 206:  # the server ignored Range: start again
                        have = 0
                    size = r.headers.get("Content-Length")
                    total = have + int(size) if size is not None else None
                    with open(self.part, "ab" if have else "wb") as f, \
                            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=self.part.name[:-5],
                                 disable=not self.progress, leave=False) as bar:
                        for chunk in r.iter_content(1 << 16):  # small: a broken read loses at most this
                            f.write(chunk)
                            got += len(chunk)
                            bar.update(len(chunk))
                    if total is not None and self.part.stat().st_size < total:
                        raise requests.ConnectionError(
                            f"connection closed at {self.part.stat().st_size} of {total} bytes")
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                if got == 0 or attempt == self.max_attempts - 1:
                    raise
                log.warning("%s: interrupted after %d bytes (%s); resuming", url, have + got, e)
                time.sleep(min(attempt + 1, 10) * 0.1)
        os.replace(self.part, output_file)


def _override_hashes() -> dict[str, str]:
    path = os.environ.get(ENV_HASHES)
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FetchError(f"{ENV_HASHES}={path}: not a readable JSON file of checksums ({e})") from None


class Fetcher:
    """Retrieves Remotes into `folder` (from the publisher, WSSS_FETCH_BASE_URL or a mirror
    folder), verified; collects what could not be fetched into one error."""

    def __init__(self, folder: Path, mirror: Optional[Path] = None, base_url: Optional[str] = None,
                 progress: bool = True):
        self.folder = Path(folder)
        self.mirror = Path(mirror) if mirror else None
        self.base_url = (base_url or os.environ.get(ENV_BASE_URL) or "").rstrip("/") or None
        self.progress = progress
        self.overrides = _override_hashes()
        self.registry_path = self.folder / REGISTRY

    def _registry(self) -> dict:
        return json.loads(self.registry_path.read_text()) if self.registry_path.exists() else {}

    def _record(self, name: str, digest: str, url: str) -> None:
        reg = self._registry()
        reg[name] = {"sha256": digest, "url": url, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json_atomic(self.registry_path, reg)

    def expected_hash(self, r: Remote) -> Optional[str]:
        if r.name in self.overrides:
            return self.overrides[r.name]
        if r.known_hash:
            return r.known_hash
        rec = self._registry().get(r.name)
        return f"sha256:{rec['sha256']}" if rec else None

    def source(self, r: Remote) -> str:
        if self.mirror:
            return f"file://{(self.mirror / r.name).resolve()}"
        return f"{self.base_url}/{r.name}" if self.base_url else r.url

    def describe(self, r: Remote) -> str:
        h = self.expected_hash(r) or (f"sha256 starting {r.sha256_prefix}" if r.sha256_prefix
                                      else "none published (recorded on first download)")
        part = self.folder / f"{r.name}.part"
        kept = f"\n    partial  {part} ({part.stat().st_size} bytes; run again to resume)" if part.exists() else ""
        return f"{self.source(r)}\n    checksum {h}\n    target   {self.folder / r.name}{kept}"

    def fetch(self, remotes: Iterable[Remote]) -> dict[str, Path]:
        """Retrieve every remote; one FetchError lists all that failed."""
        import pooch
        import requests
        self.folder.mkdir(parents=True, exist_ok=True)
        out, missing, bad = {}, [], []
        for r in remotes:
            src, expected = self.source(r), self.expected_hash(r)
            if self.mirror and not (self.mirror / r.name).is_file() and not (self.folder / r.name).is_file():
                missing.append((r, "not in the mirror"))
                continue
            dl = ResumableDownloader(self.folder / f"{r.name}.part", progress=self.progress)
            try:
                path = Path(pooch.retrieve(src, expected, fname=r.name, path=self.folder, downloader=dl,
                                           progressbar=False))
            except ValueError as e:  # pooch: hash mismatch (the file is deleted, never unpacked)
                bad.append(f"{src}: {e}")
                continue
            except (requests.RequestException, OSError) as e:
                missing.append((r, e))
                continue
            except FetchError as e:
                bad.append(str(e))
                continue
            if r.name not in self.overrides and not r.known_hash:
                digest = sha256_file(path)
                if r.sha256_prefix and not digest.startswith(r.sha256_prefix):
                    path.unlink()
                    bad.append(f"{src}: sha256 {digest} does not start with {r.sha256_prefix} "
                               f"as its published name says; deleted")
                    continue
                if expected is None:
                    self._record(r.name, digest, src)
                    log.info("%s: no published checksum; recorded sha256 %s in %s", r.name, digest, self.registry_path)
            out[r.name] = path
        problems = []
        if bad:
            problems.append("verification failed:\n  " + "\n  ".join(bad))
        if missing:
            where = f"in the mirror {self.mirror}" if self.mirror else "(no network?)"
            problems.append(f"could not fetch {len(missing)} file(s) {where}:\n  " +
                            "\n  ".join(f"{self.describe(r)}\n    ({why})" for r, why in missing))
        if problems:
            raise FetchError("\n".join(problems))
        return out
