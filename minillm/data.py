"""The tiny Shakespeare corpus: found on disk, or downloaded once and verified.

Where ``load_shakespeare`` looks, in order:

1. ``$MINILLM_DATA_DIR/tinyshakespeare.txt`` (how CI and offline machines provide it);
2. ``<MINILLM_HOME>/data/tinyshakespeare.txt`` (the user cache, filled by an earlier download);
3. the char-rnn repository's raw URL (override with ``$MINILLM_SHAKESPEARE_URL``): the download
   is checked against the known SHA-256 and written atomically, so a failed or corrupted
   download never leaves a file behind.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from minillm.chat import SPECIAL_TOKENS
from minillm.files import atomic_write
from minillm.settings import home_dir
from minillm.tokenizer import CharTokenizer

FILENAME = "tinyshakespeare.txt"
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


class CorpusError(RuntimeError):
    """The corpus is missing, unreachable or corrupted (the message says what to do)."""


def load_shakespeare() -> str:
    """Return the 1,115,394-character tiny Shakespeare corpus as one string."""
    return _read_verified(shakespeare_path())


def shakespeare_path() -> Path:
    """The path of a verified copy of the corpus, downloading it if no copy exists."""
    data_dir = os.environ.get("MINILLM_DATA_DIR")
    if data_dir and (Path(data_dir).expanduser() / FILENAME).is_file():
        return Path(data_dir).expanduser() / FILENAME
    cached = home_dir() / "data" / FILENAME
    if not cached.is_file():
        download(os.environ.get("MINILLM_SHAKESPEARE_URL", URL), cached, SHA256)
    return cached


def download(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> None:
    """Fetch ``url`` to ``dest``, verifying its SHA-256; ``dest`` appears only if it is right."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CorpusError(
            f"Could not download {FILENAME} from {url} ({reason}). Offline? Put the file in "
            f"$MINILLM_DATA_DIR or at {dest}."
        ) from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != sha256:
        raise CorpusError(
            f"The download from {url} is corrupted (sha256 {digest[:12]}…, expected "
            f"{sha256[:12]}…); nothing was saved. Try again, or put a good copy at {dest}."
        )
    with atomic_write(dest) as f:
        f.write(payload)


def _read_verified(path: Path) -> str:
    payload = path.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != SHA256:
        raise CorpusError(
            f"{path} is not the tiny Shakespeare corpus (sha256 {digest[:12]}…, expected "
            f"{SHA256[:12]}…). Delete it and let minillm download it again."
        )
    return payload.decode("utf-8")


def char_tokenizer() -> CharTokenizer:
    """The tokenizer of lessons 02-06: the corpus's 65 characters plus the course's special
    tokens (``minillm.chat.SPECIAL_TOKENS``, ids 65-68)."""
    return CharTokenizer.train(load_shakespeare(), special_tokens=SPECIAL_TOKENS)
