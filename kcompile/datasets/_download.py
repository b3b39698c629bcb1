"""A small, dependency-free download helper with a checksum-verified cache.

Files are cached under, in order of preference, the ``cache_dir`` argument, the
``$KCOMPILE_DATA`` environment variable, or ``~/.kcompile/datasets``. A download goes
to a temporary file inside the cache folder and is renamed into place only after its
SHA-256 matches, so the cache never holds a partial or corrupt file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..fileio import current_umask

__all__ = ["DatasetUnavailable", "ChecksumMismatch", "fetch", "default_cache_dir", "sha256_of"]

DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20


class DatasetUnavailable(RuntimeError):
    """A data set could not be obtained: no network, no local copy, or no source."""


class ChecksumMismatch(DatasetUnavailable):
    """A downloaded file's SHA-256 was not the expected one (the file was discarded)."""


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$KCOMPILE_DATA``, else ``~/.kcompile/datasets``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("KCOMPILE_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".kcompile" / "datasets"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, filename: str, sha256: str, cache_dir: str | os.PathLike | None = None,
          timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Return the path of ``filename`` in the cache, downloading it from ``url`` if needed.

    A cached file whose SHA-256 matches is reused without touching the network; one
    that does not match is downloaded again. Raises :class:`ChecksumMismatch` when the
    downloaded bytes are not the expected ones, and :class:`DatasetUnavailable` when
    the URL cannot be reached (both are ``RuntimeError`` subclasses).
    """
    if os.sep in filename or (os.altsep and os.altsep in filename) or filename in ("", ".", ".."):
        raise ValueError(f"filename must be a plain file name, got {filename!r}")
    expected = sha256.lower()
    folder = default_cache_dir(cache_dir)
    target = folder / filename
    if target.is_file() and sha256_of(target) == expected:
        return target

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetUnavailable(
            f"cannot create the dataset cache folder {folder}: {e}. "
            f"Pass cache_dir= or set $KCOMPILE_DATA to a writable folder."
        ) from e

    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=folder)
    os.fchmod(fd, 0o666 & ~current_umask())  # (mkstemp makes it 0600: the cache is readable as a new file is)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            # URLError/HTTPError, socket timeouts, connection resets, bad URLs.
            reason = getattr(e, "reason", None) or e
            raise DatasetUnavailable(
                f"could not download {filename}: the URL {url} could not be reached ({reason}).\n"
                f"The file is cached in {folder} once downloaded; you can place it there yourself "
                f"(it must have SHA-256 {expected}), or pass a local copy with path=, "
                f"e.g. load_data(path='/path/to/{filename}')."
            ) from e
        got = h.hexdigest()
        if got != expected:
            raise ChecksumMismatch(
                f"checksum mismatch for {filename} downloaded from {url}: "
                f"expected SHA-256 {expected}, got {got}. The download was discarded."
            )
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    return target

