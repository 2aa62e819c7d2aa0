"""Load alpaca-format records (`instruction`, `input`, `output`) and validate them.

Sources: a `.json` file holding a list (or JSON Lines under that name), a `.jsonl` file, a `.csv` / `.tsv` file
with a header row, a `.parquet` file, a folder written by `datasets.Dataset.save_to_disk`, or (when the name is
not a local path) a hub dataset through `datasets.load_dataset`. Text files are UTF-8 (a byte-order mark is
accepted, UTF-16/32 with one too) unless `encoding` says otherwise.

Every way a file can be unreadable ends in one UserError naming the file (and the line, byte or record) and what
to do: the reading is done here (bytes to text in textfile.py), in one place per kind of source, and the errors
of the readers (codecs, json, csv, pyarrow, datasets) are turned into such messages.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

from ..errors import UserError
from ..paths import looks_like_local_path
from .textfile import check_encoding, check_path, os_error, read_text

REQUIRED = ("instruction", "output")
DATA_FILES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")
_SKIP = "fix it, or pass --skip-bad-records to drop bad records"


@dataclass
class LoadedData:
    records: list[dict]
    skipped: int
    source: str


@dataclass
class _Raw:
    records: list
    lines: list[int] | None = None  # the line of each record, for line-based formats
    skipped: int = 0  # lines that could not be parsed (with skip_bad_records)


class _Object(dict):
    """A JSON object that remembers the keys it held twice (json keeps the last silently)."""

    duplicates: tuple = ()


def _object(pairs):
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        obj.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return obj


def _loads(text: str):
    # strict=False: a raw tab or line break inside a string (some exporters write them) is read as itself
    return json.loads(text, object_pairs_hook=_object, strict=False)


def _json_problem(text: str, e: Exception, one_line: bool = False) -> str:
    """What json could not read, where (the column only, for one line of JSON Lines), and a hint for the usual
    culprits."""
    if isinstance(e, RecursionError):
        return "lists or objects nested too deeply"
    if not isinstance(e, json.JSONDecodeError):
        msg = str(e).split(";")[0].split(": value has")[0]
        return f"{msg}; quote the number as a string" if "digits" in msg else msg  # Python's 4300-digit limit
    where = ("" if one_line else f"line {e.lineno}, ") + f"column {e.colno}: {e.msg}"
    before = text[:e.pos].rstrip()
    at = text[e.pos:e.pos + 1]
    if before.endswith(",") and at in ("]", "}"):
        return f"{where}: a trailing comma before '{at}'; remove it"
    if at == "'":
        return f"{where}: JSON needs double quotes (this looks like a Python repr)"
    return where


def _records_of_document(path: str, data) -> list:
    """The list of records in a parsed .json document, or an error saying what it holds instead."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1:  # some exports wrap the list: {"data": [...]} / {"train": [...]}
            return data[lists[0]]
        if any(k in data for k in REQUIRED):
            raise UserError(f"{path}: one record object, not a list of records; wrap it in [ ] "
                            "(or write one record per line in a .jsonl file)")
        if lists:
            raise UserError(f"{path}: an object holding several lists ({', '.join(map(repr, lists[:5]))}); "
                            "pass a file holding one list of records")
        if data and all(isinstance(v, dict) for v in data.values()):
            raise UserError(f"{path}: an object of objects, not a list of records; write it as [ {{...}}, ... ] "
                            "(from pandas: df.to_json(path, orient='records', force_ascii=False))")
        raise UserError(f"{path}: a JSON object without a list of records; expected [ {{...}}, ... ]")
    found = "null" if data is None else type(data).__name__
    raise UserError(f"{path}: expected a JSON list of records, found {found}; write "
                    "[ {\"instruction\": ..., \"output\": ...}, ... ]")


def _parse_json(path: str, text: str, lines_named: bool, skip_bad: bool) -> _Raw:
    """A .json document, or JSON Lines (also when a .json file holds one object per line)."""
    if not text.strip():
        raise UserError(f"{path}: the file is empty" + (" (only whitespace)" if text else "")
                        + "; expected alpaca records (a JSON list, or one JSON object per line)")
    try:
        data = _loads(text)
    except (ValueError, RecursionError) as e:
        extra = isinstance(e, json.JSONDecodeError) and e.msg == "Extra data"
        if lines_named or (extra and text.lstrip().startswith("{")):
            return _parse_json_lines(path, text, skip_bad)
        raise UserError(f"{path}: not valid JSON ({_json_problem(text, e)}); a .json file holds a list of "
                        "records, a .jsonl file one record per line") from None
    if lines_named and isinstance(data, dict):
        return _Raw([data], [text[:len(text) - len(text.lstrip())].count("\n") + 1])
    return _Raw(_records_of_document(path, data))


def _parse_json_lines(path: str, text: str, skip_bad: bool) -> _Raw:
    raw = _Raw([], [])
    rows = text.split("\n" if "\n" in text or "\r" not in text else "\r")  # never on U+2028, which JSON allows
    last = max((i for i, r in enumerate(rows, 1) if r.strip()), default=0)
    for lineno, row in enumerate(rows, 1):
        row = row.strip().lstrip("\ufeff").strip()  # a byte-order mark per line: files joined with cat
        if not row:
            continue
        try:
            rec = _loads(row)
        except (ValueError, RecursionError) as e:
            if skip_bad:
                raw.skipped += 1
                continue
            cut = (": the last line looks cut off" if lineno == last and not text.endswith(("\n", "\r"))
                   else ": a record spread over several lines; write each on one line (json.dumps without indent)"
                   if row in ("{", "[") else "")
            raise UserError(f"{path}: line {lineno} is not valid JSON ({_json_problem(row, e, True)}){cut}; each line "
                            f"must be one record ({_SKIP})") from None
        raw.records.append(rec)
        raw.lines.append(lineno)
    if not raw.records and not raw.skipped:
        raise UserError(f"{path}: the file is empty; expected one JSON record per line")
    return raw


def _parse_csv(path: str, text: str, delimiter: str, skip_bad: bool) -> _Raw:
    """A CSV/TSV file with a header row; every cell is a string, as alpaca fields are."""
    import csv
    import io

    old_limit = csv.field_size_limit(2**31 - 1)  # the default 128 KiB per cell is shorter than some answers
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    raw = _Raw([], [])
    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise UserError(f"{path}: the file is empty; expected a header row (instruction, input, output) and "
                            "one record per row")
        _check_delimiter(path, text, delimiter, len(header))
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise UserError(f"{path}: the header names {', '.join(map(repr, twice))} twice; rename one")
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                if skip_bad:
                    raw.skipped += 1
                    continue
                raise UserError(f"{path}: line {reader.line_num} has {len(row)} cells, the header has "
                                f"{len(header)} (quote cells holding '{delimiter}' or line breaks; {_SKIP})")
            raw.records.append(dict(zip(header, row)))
            raw.lines.append(reader.line_num)
    except csv.Error as e:
        raise UserError(f"{path}: line {reader.line_num} is not valid CSV ({e})") from None
    finally:
        csv.field_size_limit(old_limit)
    return raw


_DELIMITERS = {",": "comma", "\t": "tab", ";": "';'", "|": "'|'"}


def _check_delimiter(path: str, text: str, delimiter: str, cells: int) -> None:
    """A file separated by another character than its name says (a ';' CSV, as spreadsheets write in locales whose
    decimal mark is a comma) is named as such, rather than read as rows of one long cell: csv.Sniffer's guess on
    the first lines, when it splits the header into more cells."""
    import csv
    import io
    import itertools

    sample = "".join(itertools.islice(io.StringIO(text, newline=""), 20))
    try:
        found = csv.Sniffer().sniff(sample, delimiters="".join(_DELIMITERS)).delimiter
    except csv.Error:  # no consistent delimiter in the sample: the row checks below say what is wrong
        return
    if found == delimiter or len(next(csv.reader(io.StringIO(sample), delimiter=found), [])) <= cells:
        return
    fix = ("name it .tsv (tab-separated)" if found == "\t" else "name it .csv" if found == "," else
           "save it comma-separated (.csv) or tab-separated (.tsv)")
    raise UserError(f"{path}: looks {_DELIMITERS[found]}-separated, not {_DELIMITERS[delimiter]}-separated as its "
                    f"name says; {fix}")


def _parse_parquet(path: str) -> _Raw:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return _Raw(pq.read_table(path).to_pylist())
    except (OSError, ValueError, TypeError, pa.ArrowException) as e:  # ArrowInvalid is a ValueError
        raise UserError(f"{path}: not a readable Parquet file ({_first_line(e)}); write it again, e.g. with "
                        "df.to_parquet(path)") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _read_saved_dataset(path: str) -> _Raw:
    if not (os.path.isfile(os.path.join(path, "dataset_info.json"))
            or os.path.isfile(os.path.join(path, "dataset_dict.json"))):
        try:
            found = sorted(n for n in os.listdir(path) if n.lower().endswith(DATA_FILES))
        except OSError as e:
            raise os_error(path, e) from None
        holds = (f"it holds {', '.join(found[:5])}{', ...' if len(found) > 5 else ''}: pass one of those files"
                 if found else "pass a .json/.jsonl/.csv/.parquet file or such a folder")
        raise UserError(f"{path}: a folder but not a dataset saved with `save_to_disk` (no dataset_info.json or "
                        f"dataset_dict.json); {holds}")
    import datasets

    try:
        ds = datasets.load_from_disk(path)
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise UserError(f"{path}: dataset has splits {list(ds)} but no 'train' split")
            ds = ds["train"]
        return _Raw(ds.to_list())
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  missing or garbled arrow files, a broken dataset_info.json: any kind
        raise UserError(f"{path}: a saved dataset that cannot be read ({_first_line(e)}); save it again with "
                        "save_to_disk") from None


def _read_hub(name: str) -> _Raw:
    from ..hub import check_reachable

    check_reachable(name, "file or folder", "Give a data file (.json, .jsonl, .csv, .parquet) or a save_to_disk "
                                            "folder")
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # noqa: BLE001  network, missing repo, auth: all one message for the user
        raise UserError(f"{name}: not a local file, and loading it from the hub failed ({_first_line(e)})") from None
    return _Raw(ds.to_list())


def _read_file(path: str, encoding: str | None, skip_bad: bool) -> _Raw:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        return _parse_parquet(path)
    text = read_text(path, encoding)
    if ext in (".csv", ".tsv"):
        return _parse_csv(path, text, "\t" if ext == ".tsv" else ",", skip_bad)
    return _parse_json(path, text, ext in (".jsonl", ".ndjson"), skip_bad)


def _read(source: str, encoding: str | None = None, skip_bad: bool = False) -> _Raw:
    encoding = check_encoding(encoding)
    if not source.strip():
        raise UserError("--data is empty; pass a data file (.json, .jsonl, .csv, .parquet), a saved dataset folder "
                        "or a hub dataset name")
    source = os.path.expanduser(source)  # "~/data.json" from a YAML config, which no shell expanded
    if os.path.lexists(source):
        if not os.path.exists(source):
            try:
                target = repr(os.readlink(source))
            except OSError:
                target = "a path"
            raise UserError(f"{source}: a symbolic link to {target}, which does not exist")
        if stat.S_ISDIR(check_path(source).st_mode):
            return _read_saved_dataset(source)
        return _read_file(source, encoding, skip_bad)
    if looks_like_local_path(source) or source.lower().endswith(DATA_FILES) or ("." in source and "/" not in source):
        raise UserError(f"{source}: no such file or directory")
    return _read_hub(source)


def read_raw(source: str, encoding: str | None = None) -> list:
    """Return the raw records of `source` without validation."""
    return _read(source, encoding).records


def validate_record(rec, index: int, source: str) -> dict:
    """Return the normalised record or raise UserError naming the record."""
    from .conversations import alpaca_extras, from_sharegpt, is_sharegpt

    where = f"{source}: record {index}"
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected an object with 'instruction' and 'output', found {type(rec).__name__}")
    if is_sharegpt(rec):
        return from_sharegpt(rec, where)
    for key in REQUIRED:
        if key not in rec or rec[key] is None:
            raise UserError(f"{where}: missing '{key}'")
        if not isinstance(rec[key], str):
            raise UserError(f"{where}: '{key}' must be a string, found {type(rec[key]).__name__}")
        if not rec[key].strip():
            raise UserError(f"{where}: '{key}' is empty")
    inp = rec.get("input")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise UserError(f"{where}: 'input' must be a string, found {type(inp).__name__}")
    return {"instruction": rec["instruction"], "input": inp, "output": rec["output"], **alpaca_extras(rec, where)}


def _lone_surrogate(value, key=None):
    """(field, character index) of the first unpaired UTF-16 surrogate (a JSON escape such as \\ud800 without
    its pair) in the record's text: no tokenizer can encode one, and no UTF-8 file can hold one."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return key, e.start
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _lone_surrogate(v, k if key is None else f"{key}[{k!r}]")
        if found:
            return found
    return None


def _checked(rec, index: int, source: str) -> dict:
    """validate_record, plus the checks on the text every record shape needs."""
    if getattr(rec, "duplicates", ()):
        raise UserError(f"{source}: record {index}: the key {rec.duplicates[0]!r} appears twice (JSON keeps only "
                        "the last)")
    out = validate_record(rec, index, source)
    if all(isinstance(v, str) for v in out.values()):
        try:
            "".join(out.values()).encode("utf-8")  # the common flat record: one C-speed pass
            return out
        except UnicodeEncodeError:
            pass
    found = _lone_surrogate(out)
    if found:
        raise UserError(f"{source}: record {index}: {found[0]!r} holds an unpaired surrogate (a \\ud800-\\udfff "
                        f"escape without its pair) at character {found[1]}")
    return out


def load_records(source: str, skip_bad_records: bool = False, encoding: str | None = None) -> LoadedData:
    """Load and validate alpaca records.

    A bad record raises UserError naming the source and index (and line, for line-based files), unless
    `skip_bad_records` is set, in which case it is dropped and counted (as are unparsable JSON Lines / CSV rows).
    """
    raw = _read(source, encoding, skip_bad_records)
    records, skipped = [], raw.skipped
    for i, rec in enumerate(raw.records):
        try:
            records.append(_checked(rec, i, source))
        except UserError as e:
            if not skip_bad_records:
                line = f"line {raw.lines[i]}; " if raw.lines else ""
                raise UserError(f"{e} ({line}{_SKIP})") from None
            skipped += 1
    if not records:
        what = f" ({skipped} bad records skipped)" if skipped else " (the list of records is empty)"
        raise UserError(f"{source}: no usable records{what}")
    return LoadedData(records=records, skipped=skipped, source=source)


def split_records(records: list[dict], val_size: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic train/validation split. `val_size` < 1 is a fraction, >= 1 a count."""
    if not val_size:
        return records, []
    n_val = int(round(len(records) * val_size)) if val_size < 1 else int(val_size)
    n_val = max(1, n_val)
    if n_val >= len(records):
        raise UserError(f"--val-size {val_size} leaves no training records (have {len(records)})")
    import random

    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val
