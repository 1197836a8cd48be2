"""Rule-based sentence splitter for the sentence-based input formats.

Two guarantees, both tested:
- the pieces concatenate to exactly the input (nothing is added, dropped or normalised);
- encoding piece by piece gives exactly the tokens of encoding the whole text, because every cut
  lies between a non-space and a space, which is always a boundary of the byte-level BPE
  pre-tokenizer (GPT-2's regex never lets a word or punctuation token swallow a following space).
  The whitespace goes with the next sentence, as byte-level BPE attaches a space to the next word.

A sentence ends after `.` `!` `?` (plus closing quotes/brackets) before whitespace, except after
common abbreviations and initials ("Dr.", "e.g.", "J. R. R."), or at a line break. Pieces longer
than MAX_SENTENCE_CHARS are cut again (at a space if there is one): a bounded piece bounds the
BPE merge time, which grows faster than linearly in the length of one space-free run.
"""

from __future__ import annotations

import re

# Unicode White_Space, which is what `\s` means to the tokenizer's (Rust) pre-tokenizer regex.
# Python's `\s` also matches \x1c-\x1f, which Rust's does not: using it could cut inside a token.
WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                       + "".join(map(chr, range(0x2000, 0x200B))))
_WS = re.escape("".join(sorted(WHITESPACE)))  # to use inside [...]
# Candidates: end punctuation (plus closing quotes/brackets) followed by space then text; or a
# line break (the cut goes before it and before the spaces in front of it).
_CANDIDATE = re.compile(rf"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=[{_WS}]+[^{_WS}])|\n")
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SPACE_AFTER_TEXT = re.compile(rf"(?<=[^{_WS}])(?=[{_WS}])")
ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr vs mt ft vol fig approx dept inc ltd".split())
MAX_SENTENCE_CHARS = 10_000


def _is_abbreviation(text: str, dot_end: int) -> bool:
    """True if the `.` just before `dot_end` closes an abbreviation or an initial, not a sentence.
    String methods, not a regex: this runs at every full stop of the corpus."""
    start = max(0, dot_end - 9)
    window = text[start: dot_end - 1]  # up to 8 characters before the dot
    word = window[len(window.rstrip(_LETTERS)):]
    if not word or (len(word) == len(window) and start > 0):  # no word, or too long for an abbreviation
        return False
    before = window[-len(word) - 1] if len(word) < len(window) else ""
    if before == ".":  # e.g.  i.e.  U.S.
        return True
    if before.isalnum():  # 1st.  (the letters are the tail of a token, not a word)
        return False
    return (len(word) == 1 and word.isupper()) or word.lower() in ABBREVIATIONS


def sentence_cuts(text: str) -> list[int]:
    """Character offsets where a new sentence starts (0 and len(text) excluded), increasing."""
    cuts = []
    for m in _CANDIDATE.finditer(text):
        if m.group() == "\n":
            end = m.start()
            while end > 0 and text[end - 1] in " \t":
                end -= 1
            if end == 0 or text[end - 1] in WHITESPACE:  # a blank line: already cut after the text
                continue
        else:
            end = m.end()
            if text[end - 1] == "." and _is_abbreviation(text, end):
                continue
        if end < len(text) and (not cuts or end > cuts[-1]):
            cuts.append(end)
    return cuts


def _cut_long(piece: str, limit: int) -> list[str]:
    """Cut a piece into parts of <= limit characters, at the last space-after-text if any."""
    parts = []
    while len(piece) > limit:
        cut = 0
        for m in _SPACE_AFTER_TEXT.finditer(piece, 1, limit + 1):
            cut = m.start()
        cut = cut or limit  # no space to cut at: a hard cut inside one long run
        parts.append(piece[:cut])
        piece = piece[cut:]
    parts.append(piece)
    return parts


def split_sentences(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Split into non-empty sentences whose concatenation is exactly `text`."""
    bounds = [0, *sentence_cuts(text), len(text)]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a > max_chars:
            out.extend(_cut_long(text[a:b], max_chars))
        elif b > a:
            out.append(text[a:b])
    return out
