"""The grammar's LALR tables, cached between processes in the user's cache folder
(frontend/parser.py, _table_cache): made on the first parse, read after, rebuilt from a damaged
file, and left out where the folder cannot be made; the parses are the same in every case."""
import lark
import pytest

from kcompile.frontend import parser

SOURCE = "model m {\n    input x: float32[3]\n    y = Dense(2, activation=relu)(x)\n    output y\n}\n"


@pytest.fixture
def fresh_parser():
    parser._parser.cache_clear()
    yield lambda: (parser._parser.cache_clear(), parser._parser())[1]
    parser._parser.cache_clear()


def builds(monkeypatch):
    """A list that gets an entry each time lark builds the tables rather than reading them."""
    built = []
    original = lark.Lark._build_parser
    monkeypatch.setattr(lark.Lark, "_build_parser", lambda self: built.append(1) or original(self))
    return built


def test_the_tables_are_made_once_then_read(tmp_path, monkeypatch, fresh_parser):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = builds(monkeypatch)
    fresh_parser()
    want = parser.parse(SOURCE)
    cached, = (tmp_path / "kcompile").iterdir()
    assert cached.name.startswith("kdl-") and cached.stat().st_size > 1000 and built == [1]
    fresh_parser()
    assert built == [1]  # (read from the file)
    assert parser.parse(SOURCE) == want


def test_a_damaged_cache_file_is_rebuilt(tmp_path, monkeypatch, fresh_parser):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh_parser()
    want = parser.parse(SOURCE)
    cached, = (tmp_path / "kcompile").iterdir()
    good = cached.read_bytes()
    cached.write_bytes(good[:len(good) // 2])  # (a crash mid-write)
    built = builds(monkeypatch)
    fresh_parser()
    assert parser.parse(SOURCE) == want and built == [1]
    fresh_parser()  # (written again whole: read)
    assert parser.parse(SOURCE) == want and built == [1]


def test_an_unwritable_cache_folder_leaves_the_tables_uncached(tmp_path, monkeypatch, fresh_parser):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fresh_parser()
    want = parser.parse(SOURCE)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert parser._table_cache("grammar") is False
    built = builds(monkeypatch)
    fresh_parser()
    assert parser.parse(SOURCE) == want and built == [1] and blocker.read_text() == "not a folder"
