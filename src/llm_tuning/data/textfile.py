"""Read a data file's text, or say in one line why it cannot be: not a regular file, unreadable, binary (told by
its first bytes or a NUL), or not in the encoding asked for (with the byte offset, and GBK suggested when the bytes
read as GBK). UTF-8 is the default, with or without a byte-order mark; UTF-16/32 are recognised by theirs."""

from __future__ import annotations

import codecs
import os
import stat

from ..errors import UserError

# Files that are not text at all, told apart by their first bytes.
_ARROW = "an Arrow file (pass the folder written by save_to_disk, not a file inside it)"
_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"), (b"%PDF", "a PDF"),
    (b"PK\x03\x04", "a zip archive (unzip it and pass the data file inside)"),
    (b"\x1f\x8b", "gzip-compressed (decompress it with gunzip first)"),
    (b"BZh", "bzip2-compressed (decompress it with bunzip2 first)"),
    (b"\xfd7zXZ\x00", "xz-compressed (decompress it with unxz first)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed (decompress it with unzstd first)"),
    (b"PAR1", "a Parquet file (name it .parquet)"), (b"SQLite format 3\x00", "an SQLite database"),
    (b"\xff\xff\xff\xff", _ARROW), (b"ARROW1", _ARROW),
)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def check_encoding(encoding: str | None) -> str | None:
    """The codec to decode with (None: the default), or a UserError for a name Python does not know."""
    if not encoding:
        return None
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise UserError(f"--encoding {encoding!r} is not a known text encoding; "
                        "use e.g. utf-8, gbk, gb18030, big5, utf-16 or cp1252") from None
    return "utf-8-sig" if name == "utf-8" else encoding


def os_error(path: str, e: OSError) -> UserError:
    """The one-line error for an OSError met opening or reading `path`."""
    if isinstance(e, PermissionError):
        return UserError(f"{path}: permission denied; make it readable (chmod +r) or pass a copy you can read")
    return UserError(f"{path}: cannot be read ({e.strerror or e})")


def check_path(path: str) -> os.stat_result:
    """stat() of an existing path; a FIFO, device or socket refused (reading a FIFO would wait forever)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise os_error(path, e) from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise UserError(f"{path}: {kind}, not a data file; write the data to a regular file and pass that")
    return st


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise os_error(path, e) from None


def _decode_error(path: str, data: bytes, e: UnicodeDecodeError, explicit: str | None) -> str:
    off = e.start
    line = data.count(b"\n", 0, off) + 1
    name = explicit or "UTF-8"
    bad = data[off:off + 4].hex(" ")
    if e.end >= len(data) and "end of data" in e.reason:
        return (f"{path}: ends in the middle of a {name} character (byte {off} of {len(data)}, line {line}): "
                "the file looks cut off; restore the complete file")
    if explicit:
        return f"{path}: not valid {name} at byte {off} (line {line}, bytes {bad}); check --encoding {explicit}"
    try:
        data.decode("gbk")
        hint = "it reads as GBK: pass --encoding gbk"
    except UnicodeDecodeError:
        hint = "if it is in another encoding, pass it with --encoding (e.g. gbk, gb18030, big5, cp1252)"
    return f"{path}: not valid UTF-8 at byte {off} (line {line}, bytes {bad}); {hint}"


def read_text(path: str, encoding: str | None) -> str:
    """The file's text: binary files, bad bytes and NUL characters refused with the offset."""
    data = _read_bytes(path)
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise UserError(f"{path}: {what}, not a text data file; pass a .json, .jsonl, .csv or .parquet file")
    enc = encoding or next((e for bom, e in _BOMS if data.startswith(bom)), None) or "utf-8-sig"
    nul = data.find(b"\x00") if enc == "utf-8-sig" else -1
    if nul >= 0:
        raise UserError(f"{path}: binary data (a NUL byte at offset {nul}), not a text file; pass a "
                        ".json, .jsonl, .csv or .parquet file (UTF-16 without a byte-order mark: --encoding utf-16-le)")
    try:
        text = data[3:].decode() if enc == "utf-8-sig" and data.startswith(codecs.BOM_UTF8) else data.decode(
            "utf-8" if enc == "utf-8-sig" else enc)
    except UnicodeDecodeError as e:
        raise UserError(_decode_error(path, data, e, encoding)) from None
    except LookupError as e:  # a codec that is not a text encoding, e.g. base64
        raise UserError(f"--encoding {encoding!r} is not a text encoding ({e})") from None
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise UserError(f"{path}: a NUL character on line {line} (read as {encoding or 'UTF-8'}): binary data or "
                        "the wrong --encoding")
    return text.lstrip("\ufeff")
