"""Broken and awkward data files through the real CLI: every broken one ends in one line naming the file and what
to do, exit code 2, no traceback and no output folder; the awkward-but-valid ones load (three of them train).

The files are generated here in tmp_path; none is committed."""

import codecs
import gzip
import io
import json
import os
import zipfile

import pytest

from conftest import run_cli
from llm_tuning.data.formats import load_records

RECS = [
    {"instruction": "把这句话翻译成英文。", "input": "今天天气很好。", "output": "The weather is nice today."},
    {"instruction": "说出一种水果。", "input": "", "output": "苹果"},
    {"instruction": "写一句问候语。", "input": "", "output": "你好，很高兴见到你！"},
]
REC = json.dumps(RECS[1], ensure_ascii=False)
JSON = json.dumps(RECS, ensure_ascii=False)
JSONL = "\n".join(json.dumps(r, ensure_ascii=False) for r in RECS) + "\n"


def _zip(text):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("data.json", text)
    return buf.getvalue()


def _saved(path, damage):
    import datasets

    datasets.Dataset.from_list(RECS).save_to_disk(path)
    for name in os.listdir(path):
        if name.endswith(".arrow"):
            if damage == "missing":
                os.remove(os.path.join(path, name))
            elif damage == "garbled":
                with open(os.path.join(path, name), "wb") as f:
                    f.write(b"\xff\xff\xff\xff garbage, not an arrow stream")


def _parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)


# name: (file name, bytes | str | callable(path), fragment of the message, extra CLI arguments)
BROKEN = {
    "gbk-without-flag": ("zh.json", JSON.encode("gbk"), ["not valid UTF-8 at byte", "--encoding gbk"], []),
    "png-renamed": ("img.json", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), ["a PNG image"], []),
    "zip-renamed": ("a.json", _zip(JSON), ["a zip archive"], []),
    "gzip-renamed": ("a.jsonl", gzip.compress(JSONL.encode()), ["gzip-compressed"], []),
    "nul-bytes": ("a.json", b'[{"instruction": "a\x00b", "output": "c"}]', ["NUL byte at offset 19"], []),
    "utf16-without-bom": ("a.json", JSON.encode("utf-16-le"), ["NUL byte", "--encoding utf-16-le"], []),
    "truncated-utf8": ("a.json", JSON.encode()[:-3] + "中".encode()[:2], ["ends in the middle of a UTF-8 character",
                                                                        "cut off"], []),
    "wrong-explicit-encoding": ("a.json", JSON.encode(), ["not valid ascii at byte 18"], ["--encoding", "ascii"]),
    "unknown-encoding": ("a.json", JSON.encode(), ["--encoding 'klingon' is not a known text encoding"],
                         ["--encoding", "klingon"]),
    "non-text-codec": ("a.json", JSON.encode(), ["--encoding 'base64' is not a text encoding"],
                       ["--encoding", "base64"]),
    "empty": ("a.json", b"", ["the file is empty"], []),
    "whitespace-only": ("a.jsonl", b" \n\t\r\n\n", ["the file is empty"], []),
    "empty-list": ("a.json", b"[]", ["no usable records"], []),
    "top-level-number": ("a.json", b"42", ["expected a JSON list of records, found int"], []),
    "top-level-string": ("a.json", b'"hello"', ["found str"], []),
    "top-level-null": ("a.json", b"null", ["found null"], []),
    "one-record-object": ("a.json", REC.encode(), ["one record object", "wrap it in [ ]"], []),
    "dict-of-dicts": ("a.json", json.dumps({"0": RECS[0], "1": RECS[1]}).encode(), ["an object of objects",
                                                                                    "orient='records'"], []),
    "several-lists": ("a.json", b'{"train": [], "test": []}', ["several lists"], []),
    "non-string-output": ("a.json", b'[{"instruction": "a", "output": 3}]',
                          ["record 0: 'output' must be a string, found int", "--skip-bad-records"], []),
    "bool-input": ("a.json", b'[{"instruction": "a", "input": true, "output": "b"}]',
                   ["'input' must be a string, found bool"], []),
    "nested-list": ("a.json", f"[[{REC}]]".encode(), ["record 0: expected an object", "found list"], []),
    "huge-integer": ("a.json", b'[{"instruction": "a", "output": "b", "id": ' + b"7" * 5000 + b"}]",
                     ["4300 digits", "quote the number as a string"], []),
    "huge-float-output": ("a.json", b'[{"instruction": "a", "output": 1e999}]', ["found float"], []),
    "deep-nesting": ("a.json", b"[" * 100000 + b"]" * 100000, ["nested too deeply"], []),
    "nan-output": ("a.json", b'[{"instruction": "a", "output": NaN}]', ["'output' must be a string, found float"], []),
    "infinity-instruction": ("a.jsonl", b'{"instruction": -Infinity, "output": "b"}\n',
                             ["record 0: 'instruction' must be a string", "(line 1; fix it"], []),
    "duplicate-key": ("a.json", b'[{"instruction": "a", "output": "b", "output": "c"}]',
                      ["record 0: the key 'output' appears twice"], []),
    "trailing-comma": ("a.json", f"[{REC},\n]".encode(),
                       ["line 2, column 1: Expecting value: a trailing comma before ']'"], []),
    "python-repr": ("a.json", str(RECS).encode(), ["double quotes"], []),
    "yaml-as-json": ("a.json", b"- instruction: a\n  output: b\n",
                     ["not valid JSON (line 1, column 1", "a .json file holds a list"], []),
    "jsonl-line-is-list": ("a.jsonl", f'["a", "b"]\n{REC}\n'.encode(),
                           ["record 0: expected an object", "found list (line 1;"], []),
    "jsonl-line-is-scalar": ("a.jsonl", f"{REC}\n\n42\n".encode(), ["record 1: expected an object", "(line 3;"], []),
    "jsonl-bad-line": ("a.jsonl", f"{REC}\n{{oops}}\n{REC}\n".encode(), ["line 2 is not valid JSON",
                                                                        "--skip-bad-records"], []),
    "jsonl-pretty-printed": ("a.jsonl", "".join(json.dumps(r, indent=2) + "\n" for r in RECS).encode(),
                             ["line 1 is not valid JSON", "spread over several lines"], []),
    "jsonl-cut-off": ("a.jsonl", (JSONL + REC[:-9]).encode(), ["line 4 is not valid JSON", "cut off"], []),
    "lone-surrogate": ("a.json", b'[{"instruction": "a", "output": "x\\ud800y"}]',
                       ["record 0: 'output' holds an unpaired surrogate", "character 1"], []),
    "lone-low-surrogate": ("a.jsonl", b'{"instruction": "\\udc00", "output": "y"}\n',
                           ["record 0: 'instruction' holds an unpaired surrogate", "(line 1;"], []),
    "csv-ragged-row": ("a.csv", b"instruction,input,output\na,,b\nc,d,e,f\n",
                       ["line 3 has 4 cells, the header has 3"], []),
    "csv-no-output-column": ("a.csv", b"instruction,answer\na,b\n", ["record 0: missing 'output' (line 2;"], []),
    "csv-header-twice": ("a.csv", b"instruction,output,output\na,b,c\n", ["'output' twice"], []),
    "csv-semicolon": ("a.csv", "instruction;input;output\n说出一种水果。;;苹果\n翻译：;你好;Hello, friend\n".encode(),
                      ["looks ';'-separated, not comma-separated", "save it comma-separated"], []),
    "csv-tab-separated": ("a.csv", b"instruction\tinput\toutput\na\t\tb\n", ["looks tab-separated", "name it .tsv"],
                          []),
    "tsv-comma-separated": ("a.tsv", b"instruction,input,output\na,,b\n", ["looks comma-separated", "name it .csv"],
                            []),
    "parquet-garbage": ("a.parquet", JSON.encode(), ["not a readable Parquet file"], []),
    "parquet-no-output": ("a.parquet", lambda p: _parquet(p, [{"instruction": "a", "answer": "b"}]),
                          ["record 0: missing 'output'"], []),
    "parquet-as-json": ("a.json", lambda p: _parquet(p, RECS), ["a Parquet file (name it .parquet)"], []),
    "folder-without-data": ("folder", lambda p: os.makedirs(p) or open(os.path.join(p, "notes.txt"), "w").close(),
                            ["not a dataset saved with `save_to_disk`"], []),
    "folder-with-json": ("folder", lambda p: os.makedirs(p) or open(os.path.join(p, "train.json"), "w").close(),
                         ["it holds train.json: pass one of those files"], []),
    "saved-arrow-missing": ("saved", lambda p: _saved(p, "missing"), ["a saved dataset that cannot be read",
                                                                     "save_to_disk"], []),
    "saved-arrow-garbled": ("saved", lambda p: _saved(p, "garbled"), ["a saved dataset that cannot be read"], []),
    "arrow-file": ("data.json", lambda p: _saved(p + ".d", "none") or os.rename(
        next(os.path.join(p + ".d", n) for n in os.listdir(p + ".d") if n.endswith(".arrow")), p),
        ["an Arrow file"], []),
    "fifo": ("pipe.json", os.mkfifo, ["a FIFO (named pipe)"], []),
    "missing-csv": ("nope.csv", None, ["no such file or directory"], []),
    "broken-symlink": ("link.json", lambda p: os.symlink(p + ".gone", p), ["a symbolic link", "does not exist"], []),
}


def _make(tmp_path, name):
    file_name, content, _, _ = BROKEN[name]
    path = str(tmp_path / file_name)
    if callable(content):
        content(path)
    elif content is not None:
        with open(path, "wb") as f:
            f.write(content)
    return path


def _assert_one_line_refusal(r, named, fragments, out):
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, r.stderr[-2000:]
    assert named in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not os.path.exists(out), "the output folder was created for a run that was refused"


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_file_is_one_line_exit_2_nothing_written(tiny_models, tmp_path, name):
    path = _make(tmp_path, name)
    _, _, fragments, extra = BROKEN[name]
    out = str(tmp_path / "out")
    r = run_cli("train", "--model", tiny_models["llama"], "--data", path, "--output-dir", out, "--max-steps", "1",
                *extra, timeout=120)
    named = "--encoding" if "encoding" in name or "codec" in name else path
    _assert_one_line_refusal(r, named, fragments, out)


@pytest.mark.parametrize("path, fragment", [("/dev/null", "a device"), ("/proc/self/mem", "cannot be read")])
def test_device_and_unreadable_file(tiny_models, tmp_path, path, fragment):
    """A device, and a regular file whose read fails (EIO: unlike chmod 000, this fails for root too)."""
    out = str(tmp_path / "out")
    r = run_cli("train", "--model", tiny_models["llama"], "--data", path, "--output-dir", out)
    _assert_one_line_refusal(r, path, [fragment], out)


def test_unreadable_permission(tiny_models, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file")
    p = tmp_path / "secret.json"
    p.write_text(JSON, encoding="utf-8")
    p.chmod(0)
    out = str(tmp_path / "out")
    r = run_cli("train", "--model", tiny_models["llama"], "--data", str(p), "--output-dir", out)
    _assert_one_line_refusal(r, str(p), ["permission denied"], out)


def test_eval_refuses_a_broken_file_in_one_line(tiny_models, tmp_path):
    path = _make(tmp_path, "gbk-without-flag")
    r = run_cli("eval", "--model", tiny_models["llama"], "--data", path)
    _assert_one_line_refusal(r, path, ["--encoding gbk"], str(tmp_path / "out"))


def test_hub_name_offline_is_one_line(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = str(tmp_path / "out")
    r = run_cli("train", "--model", tiny_models["llama"], "--data", "nobody/no-such-dataset", "--output-dir", out)
    _assert_one_line_refusal(r, "nobody/no-such-dataset", ["not a local file"], out)


def _write(path, content):
    with open(path, "wb") as f:
        f.write(content)
    return str(path)


# Awkward but valid: each loads as RECS.
VALID = {
    "bom.json": codecs.BOM_UTF8 + JSON.encode(),
    "bom.jsonl": codecs.BOM_UTF8 + JSONL.encode(),
    "bom-every-line.jsonl": b"".join(codecs.BOM_UTF8 + json.dumps(r, ensure_ascii=False).encode() + b"\n"
                                     for r in RECS),  # files joined with cat
    "crlf.jsonl": JSONL.replace("\n", "\r\n").encode(),
    "crlf.json": json.dumps(RECS, ensure_ascii=False, indent=2).replace("\n", "\r\n").encode(),
    "cr-only.jsonl": JSONL.replace("\n", "\r").encode(),
    "utf16-bom.json": JSON.encode("utf-16"),
    "utf32-bom.jsonl": JSONL.encode("utf-32"),
    "jsonl-named.json": JSONL.encode(),
    "list-named.jsonl": json.dumps(RECS, ensure_ascii=False, indent=1).encode(),
    "no-trailing-newline.jsonl": JSONL.rstrip("\n").encode(),
    "wrapped.json": json.dumps({"data": RECS}, ensure_ascii=False).encode(),
    "data.tsv": ("instruction\tinput\toutput\n" + "".join(f"{r['instruction']}\t{r['input']}\t{r['output']}\n"
                                                          for r in RECS)).encode(),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_awkward_but_valid_files_load(tmp_path, name):
    assert load_records(_write(tmp_path / name, VALID[name])).records == RECS


def test_a_comma_csv_with_semicolons_and_tabs_in_its_cells_loads(tmp_path):
    """Only a header that splits into more cells at another separator is refused: cells full of ';' are text."""
    text = "instruction,input,output\n" + "a;b;c;d,\"x;\ty\",1;2;3\ne;f,,\"g\tg;h\"\n"
    recs = load_records(_write(tmp_path / "a.csv", text.encode())).records
    assert recs == [{"instruction": "a;b;c;d", "input": "x;\ty", "output": "1;2;3"},
                    {"instruction": "e;f", "input": "", "output": "g\tg;h"}]


def test_valid_edge_texts_load(tmp_path):
    """U+2028 (legal unescaped in JSON) is not a line break; a paired surrogate escape is one character; a very
    long line; NaN in a field the records do not use; an explicit --encoding utf-8 with a BOM; raw control
    characters inside a string."""
    long = "长" * 2_000_000
    recs = [{"instruction": "a\u2028b", "output": "\U0001F600"}, {"instruction": "c", "output": long}]
    text = '{"instruction": "a\u2028b", "output": "\\ud83d\\ude00", "score": NaN}\n' + json.dumps(recs[1]) + "\n"
    got = load_records(_write(tmp_path / "a.jsonl", text.encode())).records
    assert got == [{**r, "input": ""} for r in recs]
    assert load_records(_write(tmp_path / "b.json", codecs.BOM_UTF8 + JSON.encode()), encoding="utf-8").records == RECS
    raw = JSON.replace("苹果", "苹\t\n果")  # a raw tab and line break inside a string, as some exporters write
    assert load_records(_write(tmp_path / "c.json", raw.encode())).records[1]["output"] == "苹\t\n果"


def test_skip_bad_records_drops_unparsable_lines_and_rows(tmp_path):
    p = _write(tmp_path / "a.jsonl", f'{REC}\n{{oops\n["x"]\n{{"instruction": "\\ud800", "output": "y"}}\n{REC}\n'
               .encode())
    data = load_records(p, skip_bad_records=True)
    assert data.skipped == 3 and data.records == [RECS[1], RECS[1]]
    p = _write(tmp_path / "a.csv", b"instruction,output\na,b\nc,d,e\n")
    data = load_records(p, skip_bad_records=True)
    assert data.skipped == 1 and data.records == [{"instruction": "a", "input": "", "output": "b"}]


def _train_ok(tiny_models, tmp_path, path, *extra):
    out = tmp_path / "out"
    r = run_cli("train", "--model", tiny_models["llama"], "--data", path, "--output-dir", str(out), "--max-steps",
                "1", "--save-steps", "1", *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and os.listdir(out)


def test_gbk_file_trains_with_encoding_gbk(tiny_models, tmp_path):
    path = _write(tmp_path / "zh.json", JSON.encode("gbk"))
    _train_ok(tiny_models, tmp_path, path, "--encoding", "gbk")


def test_parquet_file_trains(tiny_models, tmp_path):
    path = str(tmp_path / "a.parquet")
    _parquet(path, [{**r, "extra": 1} for r in RECS])
    assert load_records(path).records == RECS
    _train_ok(tiny_models, tmp_path, path)


def test_csv_with_bom_crlf_and_quoted_newlines_trains(tiny_models, tmp_path):
    import csv

    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([" instruction", "input", "output"])
    recs = RECS + [{"instruction": "a, b", "input": 'say "hi"', "output": "line one\r\nline two"}]
    w.writerows([r["instruction"], r["input"], r["output"]] for r in recs)
    path = _write(tmp_path / "a.csv", codecs.BOM_UTF8 + buf.getvalue().encode())
    assert load_records(path).records == recs
    _train_ok(tiny_models, tmp_path, path)


def test_source_names(tmp_path, monkeypatch):
    """'~' is expanded (a YAML config is read by no shell); an empty --data and a bare file name that does not
    exist are refused at once instead of being looked up on the hub."""
    from llm_tuning.errors import UserError

    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path / "h.json", JSON.encode())
    assert load_records("~/h.json").records == RECS
    monkeypatch.chdir(tmp_path)
    for source, message in (("", "--data is empty"), ("nope.txt", "nope.txt: no such file or directory")):
        with pytest.raises(UserError, match=message):
            load_records(source)
