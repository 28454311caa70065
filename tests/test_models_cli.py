"""`ucl models` states how each model prepares its inputs, from the registry alone; and the
listing commands (`ucl models`, `ucl banks`, `ucl cache info`) share one `--format` option."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from ucl_cli.cli import app
from ucl_cli.encoders import registry
from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO

runner = CliRunner()
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def model_rows() -> dict[str, dict]:
    result = runner.invoke(app, ["models", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    return {row["key"]: row for row in map(json.loads, result.stdout.splitlines())}


def table_row(stdout: str, key: str) -> list[str]:
    """The preprocessing cell of `key`'s row: its first line and those under it, up to the next
    row's key."""
    lines = stdout.splitlines()
    start = next(n for n, line in enumerate(lines) if f" {key} " in line)
    cell = [lines[start].split("│")[-2].strip()]
    for line in lines[start + 1 :]:
        columns = line.split("│")
        if len(columns) < 3 or columns[1].strip():  # the next row, or the table's end
            break
        cell.append(columns[-2].strip())
    return cell


# --- ucl models: preprocessing -----------------------------------------------------------------


def test_jsonl_states_the_image_towers_size_resize_and_normalisation(empty_hub):
    towers = model_rows()[DEFAULT_IMAGE_TEXT]["preprocessing"]
    assert towers == {
        "image": {
            "image_size": 224,
            "resize_mode": "shortest",
            "interpolation": "bicubic",
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
        },
        "text": {"context_length": 77},
    }


def test_jsonl_states_the_audio_towers_rate_clip_length_and_fusion(empty_hub):
    rows = model_rows()
    assert rows[DEFAULT_TEXT_AUDIO]["preprocessing"] == {
        "audio": {
            "sample_rate": 48_000,
            "clip_samples": 480_000,
            "clip_seconds": 10.0,
            "crop": "center",
            "pad": "repeatpad",
            "fusion": False,
        },
        "text": {"context_length": 77},
    }
    fusion = rows["clap:630k-audioset-fusion-best"]["preprocessing"]["audio"]
    assert fusion["fusion"] is True and fusion["crop"] == "fusion-center"


def test_every_listed_model_states_each_of_its_towers(empty_hub):
    for key, row in model_rows().items():
        assert list(row["preprocessing"]) == row["modalities"], key
        assert row["preprocessing"]["text"]["context_length"] > 0, key


def test_table_shows_the_same_preprocessing(empty_hub):
    result = runner.invoke(app, ["models", "--format", "table"])
    assert result.exit_code == 0, result.output
    assert "preprocessing" in result.stdout
    assert table_row(result.stdout, DEFAULT_IMAGE_TEXT) == [
        "image 224 px (resize shortest, bicubic)",
        "mean 0.481 0.458 0.408, std 0.269 0.261 0.276",
        "text 77 tokens",
    ]
    assert table_row(result.stdout, DEFAULT_TEXT_AUDIO) == [
        "audio 48,000 Hz, 10 s clips (480,000 samples)",
        "center crop, repeatpad, no fusion",
        "text 77 tokens",
    ]


def test_a_plugin_model_shows_only_what_its_spec_states(plugin, empty_hub):
    # The planted backend states a sample rate and nothing else: nothing is invented.
    assert model_rows()["planted:text-audio"]["preprocessing"] == {
        "text": {},
        "audio": {"sample_rate": 16_000},
    }
    table = runner.invoke(app, ["models", "--format", "table"])
    assert table_row(table.stdout, "planted:text-audio") == ["text: not stated", "audio 16,000 Hz"]


def test_listing_models_reads_no_model_files(empty_hub, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("listing models must not locate or load a model")

    monkeypatch.setattr(registry, "locate_files", refuse)
    monkeypatch.setattr(registry, "build_encoder", refuse)
    assert model_rows()[DEFAULT_IMAGE_TEXT]["preprocessing"]["image"]["image_size"] == 224


# --- one --format for the listing commands -----------------------------------------------------

LISTINGS = [["models"], ["banks"], ["cache", "info"]]


def format_option(path: list[str]):
    """The click parameter behind `--format` of the command at `path`."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    (option,) = [param for param in command.params if "--format" in param.opts]
    return option


def test_the_listing_commands_share_one_format_option():
    options = [format_option(path) for path in LISTINGS]
    described = {(tuple(o.opts), o.metavar, o.help, o.default) for o in options}
    assert described == {
        (
            ("--format", "-f"),
            "table|jsonl",
            "table or jsonl (default: table on a terminal, jsonl in a pipe or file).",
            None,
        )
    }


@pytest.mark.parametrize("path", LISTINGS, ids=[" ".join(p) for p in LISTINGS])
def test_a_listing_refuses_an_unknown_format_with_the_same_message(path):
    result = runner.invoke(app, [*path, "--format", "xml"])
    assert result.exit_code == 2
    assert "unknown --format 'xml'; choose one of: table, jsonl" in result.stderr


def test_a_listing_into_a_pipe_is_json_lines(empty_hub):
    # CliRunner's stdout is not a terminal, as in `ucl models | jq`.
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {row["key"] for row in rows} >= {DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO}
