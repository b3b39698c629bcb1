"""kcompile.datasets: download cache, MNIST loaders (npz, IDX), iris, digits."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from kcompile.datasets import DatasetUnavailable, digits, fetch, iris, mnist
from kcompile.datasets._download import ChecksumMismatch, default_cache_dir

# The shared folder sits beside the checkout (../shared); a fresh clone does not have it.
SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "mnist"


# ---------------------------------------------------------------------------- helpers

def fake_mnist(n_train=12, n_test=7, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def idx_bytes(a: np.ndarray) -> bytes:
    assert a.dtype == np.uint8
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx_dir(folder: Path, data, gz: bool, train=True):
    folder.mkdir(parents=True, exist_ok=True)
    names = dict(mnist._IDX_FILES)
    if not train:
        del names["x_train"], names["y_train"]
    for key, stem in names.items():
        raw = idx_bytes(data[key])
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)


def assert_same(loaded, data):
    (xtr, ytr), (xte, yte) = loaded
    for got, key in ((xtr, "x_train"), (ytr, "y_train"), (xte, "x_test"), (yte, "y_test")):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, data[key])


@pytest.fixture
def server(tmp_path):
    """A localhost HTTP server over tmp_path/www that counts the requests it gets."""
    root = tmp_path / "www"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/", hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------- fetch / download

def test_download_checksum_and_cache_reuse(server, tmp_path):
    root, url, hits = server
    data = fake_mnist()
    np.savez(root / "mnist.npz", **data)
    digest = sha256(root / "mnist.npz")
    cache = tmp_path / "cache"

    umask = os.umask(0o022)
    try:
        loaded = mnist.load_data(cache_dir=cache, base_url=url, sha256=digest)
    finally:
        os.umask(umask)
    assert_same(loaded, data)
    assert hits == ["/mnist.npz"]
    assert leftovers(cache) == ["mnist.npz"]  # no temporary file left behind
    assert (cache / "mnist.npz").stat().st_mode & 0o777 == 0o644  # (a new file's mode, not mkstemp's 0600)

    # Second call: served from the cache, the server sees no request.
    loaded = mnist.load_data(cache_dir=cache, base_url=url.rstrip("/"), sha256=digest)
    assert_same(loaded, data)
    assert len(hits) == 1


def test_cache_dir_from_environment(server, tmp_path, monkeypatch):
    root, url, hits = server
    (root / "blob.bin").write_bytes(b"hello")
    monkeypatch.setenv("KCOMPILE_DATA", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    p = fetch(url + "blob.bin", "blob.bin", hashlib.sha256(b"hello").hexdigest())
    assert p == tmp_path / "envcache" / "blob.bin" and p.read_bytes() == b"hello"
    monkeypatch.delenv("KCOMPILE_DATA")
    assert default_cache_dir() == Path.home() / ".kcompile" / "datasets"


def test_corrupt_cached_file_is_downloaded_again(server, tmp_path):
    root, url, hits = server
    (root / "blob.bin").write_bytes(b"good bytes")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "blob.bin").write_bytes(b"stale")
    p = fetch(url + "blob.bin", "blob.bin", hashlib.sha256(b"good bytes").hexdigest(), cache_dir=cache)
    assert p.read_bytes() == b"good bytes"
    assert len(hits) == 1 and leftovers(cache) == ["blob.bin"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    root, url, hits = server
    np.savez(root / "mnist.npz", **fake_mnist())
    got = sha256(root / "mnist.npz")
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatch) as e:
        mnist.load_data(cache_dir=cache, base_url=url)  # default (real) checksum
    msg = str(e.value)
    assert "checksum mismatch" in msg and mnist.SHA256 in msg and got in msg
    assert isinstance(e.value, RuntimeError)
    assert leftovers(cache) == []


def test_offline_error_is_clear(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/"
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailable) as e:
        mnist.load_data(cache_dir=cache, base_url=url)
    msg = str(e.value)
    assert isinstance(e.value, RuntimeError)
    assert url + "mnist.npz" in msg and "could not be reached" in msg
    assert str(cache) in msg and "path=" in msg
    assert leftovers(cache) == []


def test_timeout_is_reported(tmp_path):
    # A socket that listens but never answers: the request must time out, not hang.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.bin"
        with pytest.raises(DatasetUnavailable, match="could not be reached"):
            fetch(url, "x.bin", "0" * 64, cache_dir=tmp_path, timeout=0.3)
    finally:
        s.close()
    assert leftovers(tmp_path) == []


def test_fetch_rejects_paths_as_filenames(tmp_path):
    with pytest.raises(ValueError):
        fetch("http://127.0.0.1:1/x", "../x", "0" * 64, cache_dir=tmp_path)


# ---------------------------------------------------------------------------- mnist, local sources

def test_path_npz(tmp_path):
    data = fake_mnist(5, 3, seed=1)
    np.savez_compressed(tmp_path / "mine.npz", **data)
    assert_same(mnist.load_data(path=tmp_path / "mine.npz"), data)


def test_path_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="missing arrays"):
        mnist.load_data(path=tmp_path / "bad.npz")


@pytest.mark.parametrize("gz", [False, True])
def test_path_idx_directory(tmp_path, gz):
    data = fake_mnist(4, 6, seed=2)
    write_idx_dir(tmp_path / "idx", data, gz=gz)
    assert_same(mnist.load_data(path=tmp_path / "idx"), data)


def test_idx_directory_with_test_files_only(tmp_path):
    data = fake_mnist(0, 5, seed=3)
    write_idx_dir(tmp_path / "idx", data, gz=True, train=False)
    (xtr, ytr), (xte, yte) = mnist.load_data(path=tmp_path / "idx")
    assert xtr.shape == (0, 28, 28) and ytr.shape == (0,)
    assert xtr.dtype == ytr.dtype == np.uint8
    np.testing.assert_array_equal(xte, data["x_test"])
    np.testing.assert_array_equal(yte, data["y_test"])


def test_idx_directory_without_test_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        mnist.load_data(path=tmp_path / "empty")


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        mnist.load_data(path=tmp_path / "nope.npz")


def test_load_idx_dtypes_and_gzip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(a))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(mnist.load_idx(tmp_path / "a"), a)
    np.testing.assert_array_equal(mnist.load_idx(tmp_path / "a.gz"), a)
    f = np.array([1.5, -2.0], dtype=">f4")
    (tmp_path / "f").write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 2) + f.tobytes())
    out = mnist.load_idx(tmp_path / "f")
    assert out.dtype == np.float32 and out.tolist() == [1.5, -2.0]


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx(tmp_path, gz):
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-100]
    p = tmp_path / ("t.gz" if gz else "t")
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match="truncated") as e:
        mnist.load_idx(p)
    assert str(p) in str(e.value)


def test_truncated_gzip_stream(tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8)))[:-20])
    with pytest.raises(ValueError, match="truncated"):
        mnist.load_idx(p)


def test_truncated_header_and_bad_magic(tmp_path):
    (tmp_path / "h").write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x02")
    with pytest.raises(ValueError, match="truncated"):
        mnist.load_idx(tmp_path / "h")
    (tmp_path / "m").write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        mnist.load_idx(tmp_path / "m")
    (tmp_path / "x").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 1) + b"\x00\x01")
    with pytest.raises(ValueError, match="trailing"):
        mnist.load_idx(tmp_path / "x")


def test_idx_directory_wrong_image_shape(tmp_path):
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((2, 8, 8), np.uint8)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(ValueError, match=r"\[n, 28, 28\]"):
        mnist.load_data(path=folder)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST test set not present at {SHARED_MNIST}")
def test_real_shared_mnist():
    (xtr, ytr), (xte, yte) = mnist.load_data(path=SHARED_MNIST)
    assert xtr.shape == (0, 28, 28) and ytr.shape == (0,)
    assert xte.shape == (10000, 28, 28) and yte.shape == (10000,)
    assert xte.dtype == yte.dtype == np.uint8
    assert np.bincount(yte, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert xte.mean() == pytest.approx(33.79, abs=0.01)


# ---------------------------------------------------------------------------- iris

def test_iris():
    x, y = iris.load_data()
    assert x.shape == (150, 4) and x.dtype == np.float32
    assert y.shape == (150,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [50, 50, 50]
    np.testing.assert_allclose(x.mean(axis=0), [5.8433, 3.0573, 3.7580, 1.1993], atol=5e-4)
    # Per-class means (Fisher 1936).
    np.testing.assert_allclose(x[y == 0].mean(0), [5.006, 3.428, 1.462, 0.246], atol=1e-4)
    np.testing.assert_allclose(x[y == 1].mean(0), [5.936, 2.770, 4.260, 1.326], atol=1e-4)
    np.testing.assert_allclose(x[y == 2].mean(0), [6.588, 2.974, 5.552, 2.026], atol=1e-4)
    np.testing.assert_allclose(x[0], [5.1, 3.5, 1.4, 0.2])
    np.testing.assert_allclose(x[-1], [5.9, 3.0, 5.1, 1.8])


def test_iris_split_is_stratified_and_deterministic():
    (xa, ya), (xb, yb) = iris.split()
    assert xa.shape == (120, 4) and xb.shape == (30, 4)
    assert np.bincount(ya).tolist() == [40, 40, 40] and np.bincount(yb).tolist() == [10, 10, 10]
    (xa2, _), (xb2, _) = iris.split(seed=0)
    np.testing.assert_array_equal(xb, xb2)
    (_, _), (xb3, _) = iris.split(seed=1)
    assert not np.array_equal(xb, xb3)
    # Train and test together are the whole data set.
    x, _ = iris.load_data()
    both = np.concatenate([xa, xb])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, x.tolist()))
    (_, y5), (_, yt5) = iris.split(test_fraction=0.5)
    assert np.bincount(yt5).tolist() == [25, 25, 25]
    with pytest.raises(ValueError):
        iris.split(test_fraction=1.5)


# ---------------------------------------------------------------------------- digits

@pytest.mark.skipif(digits.sklearn_data_file() is None, reason="scikit-learn (which ships the digits data) is not installed")
def test_digits_from_sklearn():
    x, y = digits.load_data()
    assert x.shape == (1797, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 16
    assert set(np.unique(y).tolist()) == set(range(10))


def test_digits_unavailable_message(monkeypatch):
    monkeypatch.setattr(digits, "sklearn_data_file", lambda: None)
    with pytest.raises(DatasetUnavailable) as e:
        digits.load_data()
    msg = str(e.value)
    assert "pip install scikit-learn" in msg and "path=" in msg


@pytest.mark.parametrize("gz", [False, True])
def test_digits_from_path(tmp_path, gz):
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 17, size=(5, 64))
    lab = np.arange(5)
    text = "\n".join(",".join(str(v) for v in [*row, l]) for row, l in zip(pix, lab)) + "\n"
    p = tmp_path / ("d.csv.gz" if gz else "d.csv")
    p.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    x, y = digits.load_data(path=p)
    assert x.shape == (5, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x.reshape(5, 64), pix)
    np.testing.assert_array_equal(y, lab)


def test_digits_bad_file(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="65 columns"):
        digits.load_data(path=p)


def test_digits_located_in_sklearn_without_importing_it(tmp_path, monkeypatch):
    import sys

    if "sklearn" in sys.modules or digits.sklearn_data_file() is not None:
        pytest.skip("a real scikit-learn is installed; test_digits_from_sklearn covers it")
    pkg = tmp_path / "site" / "sklearn"
    (pkg / "datasets" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    rows = [",".join(["16"] * 64 + [str(i % 10)]) for i in range(3)]
    (pkg / "datasets" / "data" / "digits.csv.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert digits.sklearn_data_file() == pkg / "datasets" / "data" / "digits.csv.gz"
    x, y = digits.load_data()
    assert x.shape == (3, 8, 8) and float(x.max()) == 16.0 and y.tolist() == [0, 1, 2]
    assert "sklearn" not in sys.modules
