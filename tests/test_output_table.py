"""The results table on a terminal: it fits the width, and no file or folder name is cut."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ucl_cli.bridge.pipeline import BridgeWeight, Hit, QueryResult
from ucl_cli.modality import Modality
from ucl_cli.output import fold_path, write_results

PATHS = [
    ".demo/media/audio/Front_Center.wav",
    ".demo/media/audio/window-attention.oga",
    ".demo/media/audio/tone_440.wav",
    "/usr/share/sounds/freedesktop/stereo/complete.oga",
]
BRIDGE = (
    BridgeWeight(3, "a dog barks loudly in the distance while cars pass", 0.61),
    BridgeWeight(9, "rain falls on a tin roof", 0.22, truncated=True),
)


def result(*, explain: bool, bounds: bool = False) -> QueryResult:
    hits = [
        Hit(
            rank=i + 1,
            candidate=Path(path),
            score=-1.25 + i,
            certified=(i % 2 == 0) if bounds else None,
            lower=-2.0 + i if bounds else None,
            upper=-0.5 + i if bounds else None,
            bridge=BRIDGE if explain else (),
            effective_sample_size=2.3 if explain else None,
        )
        for i, path in enumerate(PATHS)
    ]
    return QueryResult(
        Path(".demo/media/images/astronaut.png"), Modality.IMAGE, Modality.AUDIO, "lse", "x", hits
    )


def rendered(value: QueryResult, width: int) -> list[str]:
    stream = io.StringIO()
    write_results([value], "table", stream)  # Rich takes the width from COLUMNS, as on a terminal
    return stream.getvalue().splitlines()


def candidate_cells(lines: list[str]) -> list[str]:
    """The text of the candidate column, line by line (second cell of each body row)."""
    cells = []
    for line in lines:
        parts = line.split("│")
        if len(parts) > 3 and parts[2].strip():
            cells.append(parts[2].strip())
    return cells


@pytest.mark.parametrize("width", [60, 70, 80, 100, 140])
@pytest.mark.parametrize("explain", [False, True])
@pytest.mark.parametrize("bounds", [False, True])
def test_names_are_never_cut_and_the_table_fits(monkeypatch, width, explain, bounds):
    monkeypatch.setenv("COLUMNS", str(width))
    lines = rendered(result(explain=explain, bounds=bounds), width)
    assert max(len(line) for line in lines) <= width
    cells = candidate_cells(lines)
    # Every file and folder name appears whole on one line of the candidate column.
    for path in PATHS:
        for name in path.strip("/").split("/"):
            assert any(name in cell for cell in cells), (name, cells)
    # And the cells, joined in order, spell the paths.
    assert "".join(cells) == "".join(PATHS)


def test_a_wide_terminal_keeps_each_path_on_one_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    cells = candidate_cells(rendered(result(explain=True), 200))
    assert cells == PATHS


def test_fold_path_breaks_only_after_separators():
    assert fold_path("a/bb/ccc/dddd", 5) == "a/bb/\nccc/\ndddd"
    assert fold_path("averyverylongname.wav", 4) == "averyverylongname.wav"
