"""The method table: each scoring method is registered once, in `ucl_cli.bridge.methods`, and
`ucl query`, `ucl eval` and the Python API all read it."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from ucl_cli.bridge.methods import (
    METHOD_NAMES,
    METHOD_TABLE,
    Bridge,
    BridgeSide,
    ScoringSettings,
    check_direct,
    method_named,
)
from ucl_cli.cli import app
from ucl_cli.errors import UsageError


def model(key: str, dim: int = 8) -> SimpleNamespace:
    return SimpleNamespace(key=key, dim=dim)


# --- one entry per method -----------------------------------------------------------------------


def test_each_method_is_registered_once_and_its_names_come_from_the_table():
    assert METHOD_NAMES == ("lse", "topk", "direct", "caption")
    assert tuple(METHOD_TABLE) == METHOD_NAMES
    assert all(METHOD_TABLE[name].name == name for name in METHOD_NAMES)


def test_the_table_says_what_each_method_needs_and_offers():
    lse, topk, direct, caption = (METHOD_TABLE[name] for name in METHOD_NAMES)
    assert [m.through_bank for m in (lse, topk, direct, caption)] == [True, True, False, True]
    assert [m.explains for m in (lse, topk, direct, caption)] == [True, True, False, False]
    assert [m.pairwise for m in (lse, topk, direct, caption)] == [True, False, True, True]
    assert direct.precondition is check_direct
    assert lse.precondition is topk.precondition is caption.precondition is None


def test_query_eval_and_the_api_see_the_same_methods():
    import ucl_cli.bridge
    import ucl_cli.evaluation
    from ucl_cli.commands import query as query_command
    from ucl_cli.evaluation import EvalOptions

    assert query_command.METHOD_NAMES is METHOD_NAMES
    assert ucl_cli.bridge.METHODS is METHOD_NAMES
    assert ucl_cli.evaluation.METHODS is METHOD_NAMES
    assert EvalOptions().methods == METHOD_NAMES
    runner = CliRunner()
    query_help = runner.invoke(app, ["query", "--help"], env={"COLUMNS": "200"}).stdout
    eval_help = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).stdout
    assert "|".join(METHOD_NAMES) in query_help
    assert ",".join(METHOD_NAMES) in eval_help  # eval's default: every method
    for name in METHOD_NAMES:
        assert f"{name}: {METHOD_TABLE[name].summary.split()[0]}" in query_help


def test_an_unknown_method_is_a_usage_error_that_lists_the_table():
    with pytest.raises(UsageError, match="choose one of: lse, topk, direct, caption"):
        method_named("cosine")


def test_the_cli_reads_the_table_without_importing_torch():
    code = (
        "import sys, ucl_cli.cli, ucl_cli.commands.query, ucl_cli.commands.eval; "
        "import ucl_cli.bridge.methods; "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- dispatch: query and eval call the table's scoring function ----------------------------------


def unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_each_scoring_function_takes_a_bridge_and_the_same_arguments():
    bridge = Bridge(BridgeSide(unit(30, 8, 0), 20.0), BridgeSide(unit(30, 8, 1), 10.0))
    queries, candidates = unit(2, 8, 2), unit(5, 8, 3)
    settings = ScoringSettings()
    lse = METHOD_TABLE["lse"].score(bridge, queries, candidates, settings, 5)
    caption = METHOD_TABLE["caption"].score(bridge, queries, candidates, settings, 5)
    direct = METHOD_TABLE["direct"].score(bridge, queries, candidates, settings, 5)
    assert lse.values.shape == caption.values.shape == direct.values.shape == (2, 5)
    assert caption.bank_rows is not None and lse.bank_rows is None


def spying(monkeypatch, name: str) -> list:
    """Replace `name`'s scoring function in the table by one that records its calls."""
    calls: list = []
    entry = METHOD_TABLE[name]

    def score(bridge, queries, candidates, settings, top):
        calls.append((settings, top))
        return entry.score(bridge, queries, candidates, settings, top)

    monkeypatch.setitem(METHOD_TABLE, name, replace(entry, score=score))
    return calls


def test_search_and_evaluate_dispatch_through_the_table(monkeypatch, tmp_path):
    import planted_backend as planted

    from ucl_cli.bank import save_bank, text_item
    from ucl_cli.bridge import QueryOptions, search
    from ucl_cli.cache import open_cache
    from ucl_cli.evaluation import EvalOptions, evaluate, pairs_from
    from ucl_cli.evaluation.manifest import PairedItem

    calls = spying(monkeypatch, "caption")
    keys = ("planted:image-text", "planted:text-audio")
    encoders = [planted.PlantedEncoder(key, "cpu") for key in keys]
    texts = [f"concept {j}" for j in range(planted.CONCEPTS)]
    vectors = [encoder.embed("text", texts) for encoder in encoders]
    media = planted.write_media(tmp_path / "media")
    images, audio = (sorted((media / kind).iterdir()) for kind in ("images", "audio"))
    items = [
        PairedItem(n + 1, f"item{n}", image, clip)
        for n, (image, clip) in enumerate(zip(images, audio, strict=True))
    ]
    settings = ScoringSettings(nearest_rows=3)
    query_options = QueryOptions(method="caption", top=2, scoring=settings)
    eval_options = EvalOptions(trials=2, candidates=3, methods=("caption",), scoring=settings)
    bank = save_bank(tmp_path / "bank", [text_item(t) for t in texts], vectors, encoders)
    with bank, open_cache(enabled=False) as cache:
        search([images[0]], audio, encoders=encoders, bank=bank, options=query_options, cache=cache)
        assert calls == [(settings, 2)]
        evaluate(pairs_from(items), encoders=encoders, bank=bank, options=eval_options, cache=cache)
    assert calls[1:] == [(settings, max(eval_options.ks))]


# --- the precondition ---------------------------------------------------------------------------


def test_direct_is_refused_between_two_models_unless_forced():
    clip, clap = model("clip"), model("clap")
    direct = METHOD_TABLE["direct"]
    assert direct.refusal(clip, clip, ScoringSettings()) is None
    reason = direct.refusal(clip, clap, ScoringSettings())
    assert "trained separately" in reason and "--force-direct" in reason
    forced = ScoringSettings(force_direct=True)
    assert direct.refusal(clip, clap, forced) is None
    assert direct.forced(clip, clap, forced) and not direct.forced(clip, clip, forced)
    with pytest.raises(UsageError, match="no cosine to compute"):
        direct.refusal(clip, model("clap", dim=4), forced)
    assert METHOD_TABLE["lse"].refusal(clip, clap, ScoringSettings()) is None


# --- one ScoringSettings, one Listener ----------------------------------------------------------


def test_query_and_eval_options_hold_the_same_scoring_settings():
    from ucl_cli.bridge import QueryOptions
    from ucl_cli.evaluation import EvalOptions

    assert QueryOptions().scoring == EvalOptions().scoring == ScoringSettings()
    with pytest.raises(UsageError, match="at least 1"):
        ScoringSettings(nearest_rows=0)


def test_search_and_evaluate_take_one_listener_type():
    import ucl_cli
    import ucl_cli.evaluation
    from ucl_cli.bridge.listener import Listener

    assert ucl_cli.SearchListener is ucl_cli.Listener is Listener
    assert ucl_cli.evaluation.EvalListener is ucl_cli.evaluation.Listener is Listener
    stages: list = []
    listener = Listener(on_stage=lambda text, total: stages.append((text, total)))
    listener.stage("embedding", 3)
    listener.advance(1)  # no hook: nothing happens
    assert stages == [("embedding", 3)]


# --- the nearest-rows flags and their old spellings ---------------------------------------------


@pytest.mark.parametrize("command", ["query", "eval"])
def test_help_shows_nearest_and_hides_the_old_k_flags(command):
    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
    assert "--nearest " in text and "--nearest-max" in text
    assert not re.search(r"--k\b", text), text


def test_the_old_spellings_map_onto_the_nearest_rows():
    from ucl_cli.commands._shared import scoring_settings

    new = scoring_settings("cpu", force_direct=False, nearest=5, nearest_max=9)
    old = scoring_settings(
        "cpu", force_direct=False, nearest=64, nearest_max=8192, old_nearest=5, old_nearest_max=9
    )
    assert new == old == ScoringSettings(nearest_rows=5, max_nearest_rows=9)
    # A limit below the start means no growth.
    low = scoring_settings("cpu", force_direct=False, nearest=16, nearest_max=4)
    assert low.max_nearest_rows == 16
