"""Load alpaca-format records (`instruction`, `input`, `output`) and validate them.

Sources: a `.json` file holding a list, a `.jsonl` file, a folder written by
`datasets.Dataset.save_to_disk`, or (when the name is not a local path) a hub
dataset through `datasets.load_dataset`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import UserError
from ..paths import looks_like_local_path

REQUIRED = ("instruction", "output")


@dataclass
class LoadedData:
    records: list[dict]
    skipped: int
    source: str


def _read_json(path: str, encoding: str | None = None) -> list:
    with open(path, encoding=encoding or "utf-8-sig") as f:
        text = f.read()
    if not text.strip():
        raise UserError(f"{path}: the file is empty; expected a JSON list of alpaca records")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if isinstance(data, dict):
        # Some exports wrap the list: {"data": [...]} / {"train": [...]}.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, found {type(data).__name__}")
    return data


def _read_jsonl(path: str, encoding: str | None = None) -> list:
    out = []
    with open(path, encoding=encoding or "utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {lineno} is not valid JSON ({e.msg}); each line must be one record") from None
    if not out:
        raise UserError(f"{path}: the file is empty; expected one JSON record per line")
    return out


def _read_saved_dataset(path: str) -> list:
    if not (os.path.exists(os.path.join(path, "dataset_info.json")) or os.path.exists(os.path.join(path, "dataset_dict.json"))):
        raise UserError(
            f"{path}: a directory but not a dataset saved with `save_to_disk` "
            "(no dataset_info.json or dataset_dict.json); pass a .json/.jsonl file or such a folder"
        )
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UserError(f"{path}: dataset has splits {list(ds)} but no 'train' split")
        ds = ds["train"]
    return ds.to_list()


def _read_hub(name: str) -> list:
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # network, missing repo, auth: all one message for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{name}: not a local file, and loading it from the hub failed ({first})") from None
    return ds.to_list()


def read_raw(source: str, encoding: str | None = None) -> list:
    """Return the raw records of `source` without validation."""
    if os.path.isdir(source):
        return _read_saved_dataset(source)
    if os.path.isfile(source):
        if source.endswith(".jsonl"):
            return _read_jsonl(source, encoding)
        return _read_json(source, encoding)
    if looks_like_local_path(source):
        raise UserError(f"{source}: no such file or directory")
    return _read_hub(source)


def validate_record(rec, index: int, source: str) -> dict:
    """Return the normalised record or raise UserError naming the record."""
    where = f"{source}: record {index}"
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected an object with 'instruction' and 'output', found {type(rec).__name__}")
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
    return {"instruction": rec["instruction"], "input": inp, "output": rec["output"]}


def load_records(source: str, skip_bad_records: bool = False, encoding: str | None = None) -> LoadedData:
    """Load and validate alpaca records.

    A bad record raises UserError naming the source and index, unless
    `skip_bad_records` is set, in which case it is dropped and counted.
    """
    raw = read_raw(source, encoding)
    records, skipped = [], 0
    for i, rec in enumerate(raw):
        try:
            records.append(validate_record(rec, i, source))
        except UserError as e:
            if not skip_bad_records:
                raise UserError(f"{e} (fix it, or pass --skip-bad-records to drop bad records)") from None
            skipped += 1
    if not records:
        raise UserError(f"{source}: no usable records" + (f" ({skipped} bad records skipped)" if skipped else ""))
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
