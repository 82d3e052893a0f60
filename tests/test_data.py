import hashlib
import http.server
import threading

import pytest

from minillm import data


@pytest.fixture
def served(tmp_path):
    """Serve files from a folder on 127.0.0.1; yields (folder, base_url)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No data dir, an empty MINILLM_HOME: the loader has to download."""
    monkeypatch.delenv("MINILLM_DATA_DIR", raising=False)
    monkeypatch.setenv("MINILLM_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "data" / data.FILENAME


def test_data_dir_is_used_first(corpus):
    assert len(corpus) == 1_115_394
    assert corpus.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")


def test_download_verifies_and_caches(served, isolated, monkeypatch, corpus):
    root, url = served
    (root / "input.txt").write_bytes(corpus.encode())
    monkeypatch.setenv("MINILLM_SHAKESPEARE_URL", f"{url}/input.txt")
    assert data.load_shakespeare() == corpus
    assert isolated.is_file()
    assert [p.name for p in isolated.parent.iterdir()] == [data.FILENAME]
    (root / "input.txt").unlink()  # the second load must come from the cache
    assert data.load_shakespeare() == corpus


def test_corrupted_download_raises_and_leaves_nothing(served, isolated, monkeypatch, corpus):
    root, url = served
    (root / "input.txt").write_bytes(corpus.encode()[:-1] + b"?")
    monkeypatch.setenv("MINILLM_SHAKESPEARE_URL", f"{url}/input.txt")
    with pytest.raises(data.CorpusError, match="corrupted.*nothing was saved"):
        data.load_shakespeare()
    assert not isolated.parent.exists() or list(isolated.parent.iterdir()) == []


def test_unreachable_server_says_where_to_put_the_file(served, isolated, monkeypatch):
    _, url = served
    monkeypatch.setenv("MINILLM_SHAKESPEARE_URL", f"{url}/missing.txt")
    with pytest.raises(data.CorpusError, match="MINILLM_DATA_DIR") as err:
        data.load_shakespeare()
    assert str(isolated) in str(err.value)
    assert not isolated.exists()


def test_wrong_file_in_data_dir_is_caught(tmp_path, monkeypatch):
    (tmp_path / data.FILENAME).write_text("To be, or not to be\n")
    monkeypatch.setenv("MINILLM_DATA_DIR", str(tmp_path))
    with pytest.raises(data.CorpusError, match="not the tiny Shakespeare corpus"):
        data.load_shakespeare()


def test_known_checksum(corpus):
    assert hashlib.sha256(corpus.encode()).hexdigest() == data.SHA256
