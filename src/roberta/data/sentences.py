"""Rule-based sentence splitter for the sentence-based input formats.

Two guarantees, both tested:
- the pieces concatenate to exactly the input (nothing is added, dropped or normalised);
- encoding piece by piece gives exactly the tokens of encoding the whole text, because every cut
  lies between a non-space and a space, which is always a boundary of the byte-level BPE
  pre-tokenizer (GPT-2's regex never lets a word or punctuation token swallow a following space).
  The whitespace goes with the next sentence, as byte-level BPE attaches a space to the next word.
  So `prepare` encodes whole documents and finds each sentence's first token from its offset.

A sentence ends after `.` `!` `?` `...` (plus closing quotes/brackets) before whitespace, except
after common abbreviations and initials ("Dr.", "e.g.", "J. R. R."), or at a line break.
Measured on IMDB: about 40 MB/s on one core, a tenth of the cost of encoding the same text.
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
ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr vs mt ft vol fig approx dept inc ltd".split())


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


def split_sentences(text: str) -> list[str]:
    """Split into non-empty sentences whose concatenation is exactly `text`."""
    bounds = [0, *sentence_cuts(text), len(text)]
    return [text[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
