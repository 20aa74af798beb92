"""Reading abstract/title JSONL with file:line errors, cleaning, and building reproducible splits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import REPO, synthetic_pairs, write_jsonl
from titlegen.data.records import read_pairs
from titlegen.data.splits import MANIFEST, SPLITS, SplitSettings, clean_and_dedupe, prepare_splits, title_key
from titlegen.errors import DataError

ABSTRACT = " ".join(["word"] * 40)


def _lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _settings(**kwargs) -> SplitSettings:
    return SplitSettings(source="test", source_hash="x", **kwargs)


# --- read_pairs ---------------------------------------------------------------------------------------------------


def test_read_pairs_good_file(tmp_path):
    rows = synthetic_pairs(5)
    records = read_pairs(write_jsonl(tmp_path / "good.jsonl", rows))
    assert [r["id"] for r in records] == [f"syn-{i}" for i in range(5)]
    assert [r["title"] for r in records] == [r["title"] for r in rows]
    assert [r["abstract"] for r in records] == [r["abstract"] for r in rows]


def test_read_pairs_skips_blank_lines_and_generates_missing_ids(tmp_path):
    path = _lines(
        tmp_path / "pairs.jsonl",
        [
            json.dumps({"abstract": "An abstract.", "title": "First"}),
            "",
            "   ",
            json.dumps({"abstract": "Another abstract.", "title": "Second", "id": 7}),
            json.dumps({"abstract": "Third abstract.", "title": "Third"}),
        ],
    )
    records = read_pairs(path)
    assert [r["title"] for r in records] == ["First", "Second", "Third"]
    # Generated ids name the file and line; given ids become strings.
    assert [r["id"] for r in records] == ["pairs:1", "7", "pairs:5"]
    assert len({r["id"] for r in records}) == 3


def test_read_pairs_accepts_a_str_path(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", synthetic_pairs(2))
    assert len(read_pairs(str(path))) == 2


def test_read_pairs_not_json(tmp_path):
    path = _lines(tmp_path / "bad.jsonl", [json.dumps({"abstract": "a", "title": "t"}), "{not json"])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: not valid JSON")):
        read_pairs(path)


def test_read_pairs_array_instead_of_object(tmp_path):
    path = _lines(tmp_path / "bad.jsonl", [json.dumps(["abstract", "title"])])
    with pytest.raises(DataError, match=re.escape(f"{path}:1: expected a JSON object, got list")):
        read_pairs(path)


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"title": "A Title"}, "abstract"),
        ({"abstract": "", "title": "A Title"}, "abstract"),
        ({"abstract": "   ", "title": "A Title"}, "abstract"),
        ({"abstract": 42, "title": "A Title"}, "abstract"),
        ({"abstract": "An abstract."}, "title"),
        ({"abstract": "An abstract.", "title": ""}, "title"),
        ({"abstract": "An abstract.", "title": None}, "title"),
        ({"abstract": "An abstract.", "title": ["A", "Title"]}, "title"),
    ],
)
def test_read_pairs_bad_field(tmp_path, record, field):
    good = json.dumps({"abstract": "ok", "title": "ok"})
    path = _lines(tmp_path / "bad.jsonl", [good, good, json.dumps(record)])
    with pytest.raises(DataError, match=re.escape(f"{path}:3: field '{field}' must be a non-empty string")):
        read_pairs(path)


def test_read_pairs_reports_every_bad_line_in_one_error(tmp_path):
    path = _lines(
        tmp_path / "bad.jsonl",
        [
            json.dumps({"abstract": "fine", "title": "fine"}),  # 1 good
            "not json at all",  # 2
            json.dumps([1, 2]),  # 3
            json.dumps({"title": "no abstract"}),  # 4
            json.dumps({"abstract": "fine", "title": "fine"}),  # 5 good
            json.dumps({"abstract": "", "title": 3}),  # 6: two problems
        ],
    )
    with pytest.raises(DataError, match=r"5 problem\(s\)") as info:
        read_pairs(path)
    message = str(info.value)
    for expected in (
        f"{path}:2: not valid JSON",
        f"{path}:3: expected a JSON object",
        f"{path}:4: field 'abstract'",
        f"{path}:6: field 'abstract'",
        f"{path}:6: field 'title'",
    ):
        assert expected in message
    assert f"{path}:1:" not in message
    assert f"{path}:5:" not in message
    assert "Fix:" in message


def test_read_pairs_caps_the_listed_problems(tmp_path):
    path = _lines(tmp_path / "bad.jsonl", ["oops"] * 25)
    with pytest.raises(DataError, match=r"25 problem\(s\)") as info:
        read_pairs(path)
    message = str(info.value)
    assert f"{path}:20: not valid JSON" in message
    assert f"{path}:21:" not in message
    assert "... and 5 more" in message


def test_read_pairs_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="holds no records"):
        read_pairs(path)


def test_read_pairs_only_blank_lines(tmp_path):
    path = _lines(tmp_path / "blank.jsonl", ["", "  ", ""])
    with pytest.raises(DataError, match="holds no records"):
        read_pairs(path)


def test_read_pairs_not_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    good = json.dumps({"abstract": "fine", "title": "fine"}).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + b'{"abstract": "\xff\xfe bad", "title": "t"}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:3: not UTF-8")):
        read_pairs(path)


def test_read_pairs_not_utf8_first_line(tmp_path):
    path = tmp_path / "bom16.jsonl"
    path.write_bytes(b"\xff\xfe{\x00}\x00")
    with pytest.raises(DataError, match=re.escape(f"{path}:1: not UTF-8")):
        read_pairs(path)


def test_read_pairs_missing_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=re.escape(f"{path}: no such file")):
        read_pairs(path)


def test_read_pairs_directory_is_not_a_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_pairs(tmp_path)


# --- clean_and_dedupe -----------------------------------------------------------------------------------------------


def test_title_key_ignores_case_punctuation_and_spacing():
    assert title_key("Deep   Nets: A Survey!") == title_key("deep nets -- a survey") == "deepnetsasurvey"
    assert title_key("Deep Nets 2") != title_key("Deep Nets 3")


def test_clean_and_dedupe_word_limits():
    records = [
        {"id": "short-title", "title": "Two Words", "abstract": ABSTRACT},
        {"id": "min-title", "title": "Exactly Three Words", "abstract": ABSTRACT},
        {"id": "max-title", "title": " ".join(f"w{i}" for i in range(30)), "abstract": ABSTRACT},
        {"id": "long-title", "title": " ".join(f"x{i}" for i in range(31)), "abstract": ABSTRACT},
        {"id": "short-abstract", "title": "A Fine Title", "abstract": " ".join(["w"] * 29)},
        {"id": "min-abstract", "title": "Another Fine Title", "abstract": " ".join(["w"] * 30)},
        {"id": "max-abstract", "title": "Yet Another Title", "abstract": " ".join(["w"] * 500)},
        {"id": "long-abstract", "title": "One More Title", "abstract": " ".join(["w"] * 501)},
    ]
    kept = clean_and_dedupe(records, _settings())
    assert [r["id"] for r in kept] == ["min-title", "max-title", "min-abstract", "max-abstract"]


def test_clean_and_dedupe_custom_limits():
    records = [
        {"id": "a", "title": "Two Words", "abstract": "one two three"},
        {"id": "b", "title": "Now Three Words", "abstract": "one two"},
    ]
    kept = clean_and_dedupe(records, _settings(title_words=(2, 2), abstract_words=(3, 3)))
    assert [r["id"] for r in kept] == ["a"]


def test_clean_and_dedupe_drops_titles_differing_only_in_case_or_punctuation():
    records = [
        {"id": "1", "title": "Deep Nets: A Survey", "abstract": ABSTRACT},
        {"id": "2", "title": "deep nets -- a survey!", "abstract": ABSTRACT + " other"},
        {"id": "3", "title": "DEEP  NETS, A SURVEY", "abstract": ABSTRACT},
        {"id": "4", "title": "Deep Nets: A Second Survey", "abstract": ABSTRACT},
    ]
    kept = clean_and_dedupe(records, _settings())
    assert [r["id"] for r in kept] == ["1", "4"]
    assert kept[0]["title"] == "Deep Nets: A Survey"


def test_clean_and_dedupe_collapses_whitespace_and_keeps_only_known_fields():
    records = [{"id": 5, "title": "  A \n Spaced\tTitle ", "abstract": "  " + ABSTRACT.replace(" ", "  \n"), "x": 1}]
    (kept,) = clean_and_dedupe(records, _settings())
    assert kept == {"id": "5", "title": "A Spaced Title", "abstract": ABSTRACT}


# --- prepare_splits -------------------------------------------------------------------------------------------------


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def source(tmp_path) -> Path:
    return write_jsonl(tmp_path / "source.jsonl", synthetic_pairs(400))


def test_prepare_splits_writes_splits_and_manifest(source, tmp_path):
    out = tmp_path / "splits"
    paths = prepare_splits(str(source), out)
    assert set(paths) == set(SPLITS)
    assert all(paths[s] == out / f"{s}.jsonl" and paths[s].is_file() for s in SPLITS)
    rows = {s: _read(paths[s]) for s in SPLITS}
    assert {s: len(r) for s, r in rows.items()} == {"train": 360, "validation": 20, "test": 20}

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["counts"] == {"train": 360, "validation": 20, "test": 20}
    assert manifest["records_read"] == 400
    assert manifest["settings"]["source"] == str(source)
    assert set(manifest["sha256"]) == set(SPLITS)

    # Every source record lands in exactly one split, with the fields of a clean record.
    all_ids = [r["id"] for s in SPLITS for r in rows[s]]
    assert sorted(all_ids) == sorted(f"syn-{i}" for i in range(400))
    assert all(set(r) == {"id", "title", "abstract"} for s in SPLITS for r in rows[s])

    keys = {s: {title_key(r["title"]) for r in rows[s]} for s in SPLITS}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_prepare_splits_keeps_duplicate_titles_out_of_two_splits(tmp_path):
    rows = synthetic_pairs(300)
    # Each title appears again with other casing/punctuation and another abstract.
    dupes = [
        {**r, "id": r["id"] + "-dup", "title": r["title"].upper() + "!", "abstract": r["abstract"] + " x"} for r in rows
    ]
    source = write_jsonl(tmp_path / "dupes.jsonl", rows + dupes)
    paths = prepare_splits(str(source), tmp_path / "out")
    keys = {s: [title_key(r["title"]) for r in _read(paths[s])] for s in SPLITS}
    flat = [k for s in SPLITS for k in keys[s]]
    assert len(flat) == len(set(flat)) == 300


def test_prepare_splits_is_deterministic(source, tmp_path):
    a = prepare_splits(str(source), tmp_path / "a")
    b = prepare_splits(str(source), tmp_path / "b")
    c = prepare_splits(str(source), tmp_path / "c", seed=1)
    for split in SPLITS:
        assert a[split].read_bytes() == b[split].read_bytes()
    assert a["test"].read_bytes() != c["test"].read_bytes()
    assert {r["id"] for r in _read(a["test"])} != {r["id"] for r in _read(c["test"])}


def test_prepare_splits_max_samples(source, tmp_path):
    paths = prepare_splits(str(source), tmp_path / "out", max_samples=100)
    assert {s: len(_read(paths[s])) for s in SPLITS} == {"train": 90, "validation": 5, "test": 5}


def test_prepare_splits_reuses_then_rebuilds_on_source_change(source, tmp_path):
    out = tmp_path / "splits"
    paths = prepare_splits(str(source), out)
    files = [*paths.values(), out / MANIFEST]
    before = {p: p.stat().st_mtime_ns for p in files}
    contents = {p: p.read_bytes() for p in files}

    again = prepare_splits(str(source), out)
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert {p: p.read_bytes() for p in files} == contents

    # A different seed is a different setting: rebuilt.
    prepare_splits(str(source), out, seed=1)
    assert (out / "test.jsonl").read_bytes() != contents[paths["test"]]
    prepare_splits(str(source), out)
    assert {p: p.read_bytes() for p in files} == contents

    extra = synthetic_pairs(401)[-1]
    with source.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(extra) + "\n")
    prepare_splits(str(source), out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["records_read"] == 401
    assert sum(manifest["counts"].values()) == 401
    ids = {r["id"] for s in SPLITS for r in _read(paths[s])}
    assert extra["id"] in ids


def test_prepare_splits_rebuilds_when_a_split_file_is_missing(source, tmp_path):
    out = tmp_path / "splits"
    paths = prepare_splits(str(source), out)
    expected = paths["validation"].read_bytes()
    paths["validation"].unlink()
    prepare_splits(str(source), out)
    assert paths["validation"].read_bytes() == expected


def test_prepare_splits_too_few_records(tmp_path):
    source = write_jsonl(tmp_path / "small.jsonl", synthetic_pairs(2))
    with pytest.raises(DataError, match="usable record"):
        prepare_splits(str(source), tmp_path / "out")


@pytest.mark.parametrize("bad", ["no-such-source", "owner/name/extra"])
def test_prepare_splits_unknown_source(tmp_path, monkeypatch, bad):
    monkeypatch.chdir(tmp_path)  # relative names that surely exist nowhere
    with pytest.raises(DataError, match="--data.source"):
        prepare_splits(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prepare_splits_missing_jsonl_source(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        prepare_splits(str(tmp_path / "missing.jsonl"), tmp_path / "out")


def test_split_script_writes_the_same_splits_as_the_datamodule(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("split_script", REPO / "datasets" / "split.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(200))
    manifest = script.main(["--source", str(source), "--out", str(tmp_path / "a")])
    assert manifest["counts"] == {"validation": 10, "test": 10, "train": 180}
    prepare_splits(str(source), tmp_path / "b")
    for split in ("train", "validation", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
