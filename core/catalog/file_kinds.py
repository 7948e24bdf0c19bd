"""What a file that is not a readable image looks like, in words (for one-line errors)."""

from __future__ import annotations

#: (offset, signature, what it is) of common files that are not images manet reads.
SIGNATURES = (
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive or office document"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"\x7fELF", "an executable"),
    (4, b"ftypheic", "a HEIC image, which cannot be read here"),
    (4, b"ftypavif", "an AVIF image, which cannot be read here"),
)


def content_kind(head: bytes) -> str:
    """What the file's first bytes look like, in words: never the bytes themselves (the message
    is stored in ``images.error``, and the file may be anything a path or symlink points at)."""
    for offset, signature, kind in SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut off at the end of the head is still text
        cut = exc.reason == "unexpected end of data"
        text = head[:exc.start].decode("utf-8") if cut else ""
    if text and all(char.isprintable() or char in "\t\r\n" for char in text):
        return "text"
    return "an unknown binary format or a damaged header"
