"""Corpus readers: formats, blank and bad lines, missing columns, empty files, streaming."""

from __future__ import annotations

import json

import pytest

from ucl_cli.bank.corpus import (
    CorpusOptions,
    corpus_format,
    corpus_items,
    count_lines,
    read_corpus,
)
from ucl_cli.errors import InputFileError, UsageError


def texts(path, options=None, skips=None):
    on_skip = None if skips is None else (lambda where, reason: skips.append((where, reason)))
    return [record.text for record in read_corpus(path, options, on_skip)]


def test_plain_lines_skip_blanks_normalise_whitespace_and_keep_line_numbers(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"\xef\xbb\xbfa dog barks\r\n\n   \n  rain   on\ta roof \nlast line")
    records = list(read_corpus(path))
    assert [(r.text, r.line) for r in records] == [
        ("a dog barks", 1),
        ("rain on a roof", 4),
        ("last line", 5),
    ]


def test_non_utf8_line_is_skipped_with_file_and_line_or_fails_when_strict(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"good one\nbad \xff byte\ngood two\n")
    skips: list[tuple[str, str]] = []
    assert texts(path, skips=skips) == ["good one", "good two"]
    assert skips == [(f"{path}:2", "not valid UTF-8 (byte 0xff at column 5)")]
    with pytest.raises(InputFileError) as err:
        texts(path, CorpusOptions(strict=True))
    assert str(err.value) == f"{path}: line 2: not valid UTF-8 (byte 0xff at column 5)"


def test_csv_column_with_quotes_commas_and_multiline_fields(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text(
        'id,caption\n1,"a dog, barking"\n2,"two\nlines"\n3,\n4,plain\n', encoding="utf-8"
    )
    assert texts(path, CorpusOptions(column="caption")) == ["a dog, barking", "two lines", "plain"]


def test_csv_defaults_to_the_text_column_or_the_only_one(tmp_path):
    named = tmp_path / "named.csv"
    named.write_text("id,text\n1,hello\n", encoding="utf-8")
    single = tmp_path / "single.csv"
    single.write_text("sentence\nworld\n", encoding="utf-8")
    assert texts(named) == ["hello"]
    assert texts(single) == ["world"]


def test_missing_csv_column_names_the_columns(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text("id,caption\n1,a\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        texts(path, CorpusOptions(column="text"))
    assert str(err.value) == f"{path}:1: no column 'text' (the columns are: id, caption)"
    with pytest.raises(UsageError, match="which column holds the text"):
        texts(tmp_path / "captions.csv", CorpusOptions(format="csv"))


def test_tsv_and_short_rows(tmp_path):
    path = tmp_path / "captions.tsv"
    path.write_text("text\tsource\na cat\tx\nshort row\n\tempty\n", encoding="utf-8")
    skips: list[tuple[str, str]] = []
    assert texts(path, CorpusOptions(column="source"), skips) == ["x", "empty"]
    assert skips == [(f"{path}:3", "row has 1 fields, no 'source'")]


def test_json_lines_field_bad_json_and_wrong_types(tmp_path):
    path = tmp_path / "captions.jsonl"
    rows = [
        json.dumps({"caption": "first", "n": 1}),
        "{not json",
        json.dumps({"n": 2}),
        json.dumps({"caption": 3}),
        "",
        json.dumps({"caption": "é accent"}),
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    skips: list[tuple[str, str]] = []
    assert texts(path, CorpusOptions(field="caption"), skips) == ["first", "é accent"]
    assert [where for where, _ in skips] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert skips[1][1] == "no field 'caption'"
    assert skips[2][1] == "field 'caption' is a int, not text"


def test_json_lines_unknown_field_stops_at_the_first_record(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text(json.dumps({"caption": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        texts(path, CorpusOptions(field="text"))
    assert str(err.value) == f"{path}:1: no field 'text' (the fields are: caption)"


def test_json_lines_of_bare_strings(tmp_path):
    path = tmp_path / "strings.jsonl"
    path.write_text('"one"\n"two"\n', encoding="utf-8")
    assert texts(path) == ["one", "two"]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_corpus_is_an_error_naming_the_file(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(InputFileError) as err:
        texts(path)
    assert str(err.value) == f"{path}: holds no text: it is empty or every line is blank"


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        texts(tmp_path / "absent.txt")
    with pytest.raises(UsageError, match="is a folder"):
        texts(tmp_path)


def test_format_detection():
    assert corpus_format("a.CSV", CorpusOptions()) == "csv"
    assert corpus_format("a.tsv", CorpusOptions()) == "tsv"
    assert corpus_format("a.ndjson", CorpusOptions()) == "jsonl"
    assert corpus_format("a.txt", CorpusOptions()) == "lines"
    assert corpus_format("a.txt", CorpusOptions(field="caption")) == "jsonl"
    with pytest.raises(UsageError, match="unknown corpus format"):
        corpus_format("a.txt", CorpusOptions(format="xml"))


def test_reading_streams_one_line_at_a_time(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100_000)), encoding="utf-8")
    stream = read_corpus(path)
    assert next(stream).text == "line 0"  # nothing forces the whole file into memory
    assert sum(1 for _ in stream) == 99_999
    assert count_lines(path) == 100_000


def test_corpus_items_keep_duplicates_for_the_bank_to_drop(tmp_path):
    first = tmp_path / "a.txt"
    first.write_text("dog\ncat\n", encoding="utf-8")
    second = tmp_path / "b.txt"
    second.write_text("dog \n", encoding="utf-8")
    items = list(corpus_items([first, second]))
    assert [item.text for item in items] == ["dog", "cat", "dog"]
    assert items[0].key == items[2].key != items[1].key
