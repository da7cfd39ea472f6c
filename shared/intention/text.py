"""Text normalization and tokenization shared by intention rendering and drift scoring."""

from __future__ import annotations

import re
import threading
import unicodedata
from functools import lru_cache

import snowballstemmer

__all__ = [
    "NOISE_EXTENSIONS",
    "STOP_WORDS",
    "normalize_whitespace",
    "split_identifier",
    "stem",
    "tokenize",
]


def _word_set(text: str) -> frozenset[str]:
    """Return the whitespace-separated words of a word-list literal."""
    return frozenset(text.split())


# A conventional English stop list (close to the Snowball/NLTK lists). Contractions appear as
# the word left after the tokenizer splits at the apostrophe ("don't" → "don").
STOP_WORDS: frozenset[str] = _word_set(
    """
    a about above after again against all also am an and any are aren as at be because been
    before being below between both but by can cannot could couldn did didn do does doesn doing
    don down during each etc few for from further had hadn has hasn have haven having he her
    here hers herself him himself his how if in into is isn it its itself just let me more most
    must mustn my myself no nor not now of off on once only or other ought our ours ourselves
    out over own per same shall shan she should shouldn so some such than that the their theirs
    them themselves then there these they this those through to too under until up upon us
    very via was wasn we were weren what when where which while who whom why will with won
    would wouldn you your yours yourself yourselves
    """
)

# File extensions that only say "this is source/config"; they would otherwise dominate
# candidates listing many files of one language and match nothing in a goal. "lock" is not
# here on purpose: a changed lock file is evidence of dependency work.
NOISE_EXTENSIONS: frozenset[str] = _word_set(
    """
    py pyi pyc pyx js jsx mjs cjs ts tsx go rs java kt kts scala rb php c h cc cpp hpp cs swift
    m sh bash zsh ps1 bat txt cfg ini toml json jsonc yaml yml xml tmp bak orig rst md
    """
)

_MIN_TOKEN_CHARS = 2

# Versions ("3.12", "2.0.1") stay whole because their parts are meaningless on their own;
# everything else is split into runs of Unicode letters/digits (underscore separates words).
_CHUNK_RE = re.compile(r"\d+(?:\.\d+)+|[^\W_]+")

_thread_state = threading.local()


def normalize_whitespace(text: str) -> str:
    """Return *text* NFC-normalized with every whitespace run collapsed to one space."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def split_identifier(word: str) -> list[str]:
    """Split an alphanumeric run at camelCase boundaries: "parseHTTPHeader" → parse HTTP Header."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(word)):
        prev, cur = word[i - 1], word[i]
        nxt = word[i + 1] if i + 1 < len(word) else ""
        lower_to_upper = (prev.islower() or prev.isdigit()) and cur.isupper()
        # The last capital of an acronym starts the next word: "HTTPHeader" → HTTP, Header.
        acronym_end = prev.isupper() and cur.isupper() and nxt.islower()
        if lower_to_upper or acronym_end:
            parts.append(word[start:i])
            start = i
    parts.append(word[start:])
    return [p for p in parts if p]


def _stemmer() -> snowballstemmer.Stemmer:
    # Snowball stemmer objects keep per-call state, so each thread gets its own instance.
    stemmer: snowballstemmer.Stemmer | None = getattr(_thread_state, "stemmer", None)
    if stemmer is None:
        stemmer = snowballstemmer.stemmer("english")
        _thread_state.stemmer = stemmer
    return stemmer


@lru_cache(maxsize=16384)
def stem(word: str) -> str:
    """Return the Snowball English stem of a lowercase word ("testing" → "test")."""
    result: str = _stemmer().stemWord(word)
    return result


def _is_noise_extension(text: str, start: int, end: int, chunk: str) -> bool:
    # An extension is a chunk right after a dot that itself follows a name ("login.py"), and
    # that ends the path; ".github" or "datetime.utcnow" are kept.
    if start < 2 or text[start - 1] != ".":
        return False
    before = text[start - 2]
    if not (before.isalnum() or before in "_-"):
        return False
    if end < len(text) and (text[end].isalnum() or text[end] in "_"):
        return False
    return chunk.lower() in NOISE_EXTENSIONS


def tokenize(text: str) -> list[str]:
    """Return the stemmed content tokens of prose, code identifiers, paths and commands."""
    text = unicodedata.normalize("NFKC", text)
    tokens: list[str] = []
    for match in _CHUNK_RE.finditer(text):
        chunk = match.group()
        if _is_noise_extension(text, match.start(), match.end(), chunk):
            continue
        if chunk[0].isdigit() and "." in chunk:
            tokens.append(chunk)
            continue
        for part in split_identifier(chunk):
            word = part.lower()
            if len(word) < _MIN_TOKEN_CHARS or word in STOP_WORDS:
                continue
            tokens.append(word if word.isdigit() else stem(word))
    return tokens
