"""`ucl eval`: the paper's protocol on paired files, with answers known in advance.

Two kits:
- a TABLE backend defined here, whose vectors are designed so that `lse` (and `topk`) recall
  every item while `caption` recalls exactly the even ones: odd items have a "decoy" bank text
  that is the query's single nearest text but points AWAY from the item's audio, while the
  item's "good" text, slightly farther, points at it. The sum over the bank follows the good
  path (s1 * 0.9 + s2 = 19 against at most about 11); the nearest text alone follows the decoy.
- the PLANTED entry-point backend of test_query.py (concept j -> e_j everywhere), through the
  real CLI, where removing one concept's text from the bank moves recall by a known amount.

Media follow the planted encoding: the image of concept j is grey 10*j, its audio the constant
(j + 1) / 20.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import model_fixtures
import numpy as np
import planted_backend as planted
import pytest
import soundfile as sf
from media_samples import ALSA_SOUNDS, FREEDESKTOP_SOUNDS, SKIMAGE_DATA, sample
from PIL import Image
from scipy.stats import t as student_t

from ucl_cli.bank import load_bank, resolve_bank, save_bank, text_item
from ucl_cli.cli import app
from ucl_cli.commands import _shared as shared_commands
from ucl_cli.encoders.base import Encoder
from ucl_cli.errors import InputFileError, UsageError
from ucl_cli.evaluation import (
    EvalOptions,
    ManifestError,
    caption_key,
    draw_trials,
    evaluate,
    read_pairs,
    sub_bank_rows,
    t_interval,
)
from ucl_cli.evaluation.trials import trial_blocks
from ucl_cli.modality import Modality

clip_root = model_fixtures.clip_root
clap_root = model_fixtures.clap_root
clip_encoder = model_fixtures.clip_encoder
clap_encoder = model_fixtures.clap_encoder

DIM = 16
ITEMS = 8
SCALE = 10.0
GOOD = 0.9  # cosine of an image with its item's good text (its decoy text has 1.0)


# --- the table backend -----------------------------------------------------------------------


def unit(j: int, dim: int = DIM) -> np.ndarray:
    vector = np.zeros(dim, dtype=np.float32)
    vector[j] = 1.0
    return vector


def good_text_vector(j: int) -> np.ndarray:
    return GOOD * unit(j) + math.sqrt(1 - GOOD**2) * unit(DIM - 1)


class TableEncoder(Encoder):
    """Vectors looked up by concept (images, audio) or by text; every call is recorded."""

    def __init__(self, key: str, modalities: tuple[str, ...], texts: dict[str, np.ndarray]):
        self.key = key
        self.modalities = frozenset(Modality(m) for m in modalities)
        self.dim = DIM
        self.logit_scale = SCALE
        self.preprocessing = {"sample_rate": planted.SAMPLE_RATE, "table": key}
        self.device = "cpu"
        self.texts = texts
        self.calls: list[tuple[Modality, int]] = []

    def _embed_batch(self, modality: Modality, batch: list) -> np.ndarray:
        self.calls.append((modality, len(batch)))
        if modality is Modality.TEXT:
            return np.stack([self.texts.get(text, unit(DIM - 2)) for text in batch])
        return np.stack([unit(planted.concept_of(modality, item)) for item in batch])

    def embedded(self, modality: Modality) -> int:
        return sum(n for m, n in self.calls if m is modality)


def table_encoders() -> tuple[TableEncoder, TableEncoder]:
    image_text = {f"good {j}": good_text_vector(j) for j in range(ITEMS)}
    image_text |= {f"decoy {j}": unit(j) for j in range(1, ITEMS, 2)}
    text_audio = {f"good {j}": unit(j) for j in range(ITEMS)}
    text_audio |= {f"decoy {j}": -unit(j) for j in range(1, ITEMS, 2)}
    return (
        TableEncoder("table:image-text", ("image", "text"), image_text),
        TableEncoder("table:text-audio", ("text", "audio"), text_audio),
    )


def bank_texts() -> list[str]:
    return [f"good {j}" for j in range(ITEMS)] + [f"decoy {j}" for j in range(1, ITEMS, 2)]


def build_bank(path: Path, texts: list[str], encoders: list[Encoder]):
    vectors = [encoder.embed("text", texts) for encoder in encoders]
    for encoder in encoders:
        if isinstance(encoder, TableEncoder):
            encoder.calls.clear()
    return save_bank(path, [text_item(text) for text in texts], vectors, encoders)


# --- media and manifests ---------------------------------------------------------------------


def write_media(folder: Path, concepts) -> dict[int, tuple[Path, Path]]:
    """An image and an audio file per concept (planted encoding)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(exist_ok=True)
    files = {}
    for j in concepts:
        image = folder / "images" / f"c{j}.png"
        Image.new("RGB", (16, 16), (10 * j,) * 3).save(image)
        audio = folder / "audio" / f"c{j}.wav"
        samples = np.full(planted.SAMPLE_RATE // 8, (j + 1) / 20, dtype=np.float32)
        sf.write(audio, samples, planted.SAMPLE_RATE, subtype="FLOAT")
        files[j] = (image, audio)
    return files


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def concept_manifest(folder: Path, concepts, captions: dict[int, str] | None = None) -> Path:
    """Items of the given concepts, with paths relative to the manifest."""
    write_media(folder, concepts)
    captions = captions or {}
    rows = []
    for j in concepts:
        row = {"id": f"clip{j}", "image": f"images/c{j}.png", "audio": f"audio/c{j}.wav"}
        row["caption"] = captions.get(j, f"a recording number {j}")
        rows.append(row)
    return write_manifest(folder / "manifest.csv", rows)


@pytest.fixture
def table_setup(tmp_path):
    encoders = table_encoders()
    bank = build_bank(tmp_path / "bank", bank_texts(), list(encoders))
    manifest = concept_manifest(tmp_path / "data", range(ITEMS))
    yield encoders, bank, manifest
    bank.close()


def mean_recall(report, method: str, k: int, size: int | None = None) -> float:
    return report.result(method, size).recall[k].mean


# --- recall known in advance -----------------------------------------------------------------


def test_lse_recalls_every_item_and_caption_exactly_the_even_ones(table_setup):
    encoders, bank, manifest = table_setup
    options = EvalOptions(trials=6, candidates=ITEMS, seed=3)
    report = evaluate(manifest, encoders=encoders, bank=bank, options=options)
    for method in ("lse", "topk"):
        result = report.result(method)
        assert [result.recall[k].mean for k in (1, 5, 10)] == [1.0, 1.0, 1.0]
        assert result.mean_rank.mean == 1.0
    caption = report.result("caption")
    # Odd items: the decoy is nearest and scores their own audio -s2, strictly last of 8.
    assert caption.recall[1].per_trial == (0.5,) * 6
    assert caption.recall[5].mean == 0.5
    assert caption.recall[10].mean == 1.0  # k >= candidates
    assert caption.mean_rank.mean == pytest.approx((1 + ITEMS) / 2)
    # Every trial holds every item: no spread, so the interval collapses onto the mean.
    assert (caption.recall[1].low, caption.recall[1].high) == (0.5, 0.5)
    assert report.skipped_methods.keys() == {"direct"}
    assert "trained separately" in report.skipped_methods["direct"]
    assert report.bank_sizes == (len(bank),) and report.usable_bank_rows == len(bank)


def test_per_trial_values_follow_the_drawn_trials_and_the_interval_is_students_t(table_setup):
    encoders, bank, manifest = table_setup
    options = EvalOptions(trials=40, candidates=4, seed=11, methods=("caption", "lse"))
    report = evaluate(manifest, encoders=encoders, bank=bank, options=options)
    trials = draw_trials(ITEMS, 40, 4, seed=11)
    even_share = (trials % 2 == 0).mean(axis=1)
    caption = report.result("caption")
    np.testing.assert_allclose(caption.recall[1].per_trial, even_share)
    # Odd items rank last of 4, even ones first.
    np.testing.assert_allclose(caption.mean_rank.per_trial, even_share * 1 + (1 - even_share) * 4)
    mean = even_share.mean()
    half = student_t.ppf(0.975, 39) * even_share.std(ddof=1) / math.sqrt(40)
    interval = caption.recall[1]
    assert interval.mean == pytest.approx(mean)
    assert interval.half_width == pytest.approx(half)
    assert (interval.low, interval.high) == pytest.approx((mean - half, mean + half))
    assert report.result("lse").recall[1].per_trial == (1.0,) * 40


def test_audio_to_image_uses_the_other_model_first(table_setup):
    """Audio i's nearest text is its good text (the decoy is at -1), so caption recalls all."""
    encoders, bank, manifest = table_setup
    options = EvalOptions(trials=3, candidates=ITEMS, direction="audio->image")
    report = evaluate(manifest, encoders=encoders, bank=bank, options=options)
    assert [m.role for m in report.models] == ["query", "candidate"]
    assert report.models[0].key == "table:text-audio"
    assert mean_recall(report, "caption", 1) == 1.0
    assert mean_recall(report, "lse", 1) == 1.0


def test_every_file_is_embedded_once_and_a_second_run_comes_from_the_cache(table_setup):
    encoders, bank, manifest = table_setup
    options = EvalOptions(trials=50, candidates=4, methods=("lse", "caption"))
    first = evaluate(manifest, encoders=encoders, bank=bank, options=options)
    assert encoders[0].embedded(Modality.IMAGE) == ITEMS
    assert encoders[1].embedded(Modality.AUDIO) == ITEMS
    assert (first.embedded, first.cached) == (2 * ITEMS, 0)
    second = evaluate(manifest, encoders=encoders, bank=bank, options=options)
    assert encoders[0].embedded(Modality.IMAGE) == ITEMS  # nothing new
    assert (second.embedded, second.cached) == (0, 2 * ITEMS)
    assert second.result("caption").recall[1] == first.result("caption").recall[1]


def test_scoring_in_blocks_of_trials_gives_the_same_numbers(table_setup):
    encoders, bank, manifest = table_setup
    whole = EvalOptions(trials=12, candidates=4, seed=5, methods=("lse", "caption", "topk"))
    blocks = EvalOptions(trials=12, candidates=4, seed=5, methods=whole.methods, block_items=5)
    one = evaluate(manifest, encoders=encoders, bank=bank, options=whole)
    many = evaluate(manifest, encoders=encoders, bank=bank, options=blocks)
    for method in whole.methods:
        assert one.result(method).recall == many.result(method).recall
        assert one.result(method).mean_rank == many.result(method).mean_rank


def test_trial_blocks_cover_every_trial_once_within_the_limit():
    trials = draw_trials(30, 25, 6, seed=1)
    seen = []
    for trial_ids, items in trial_blocks(trials, limit=10):
        assert len(items) <= 10 or len(trial_ids) == 1
        assert set(trials[trial_ids].ravel()) <= set(items.tolist())
        seen.extend(trial_ids.tolist())
    assert seen == list(range(25))


def test_trials_are_seeded_distinct_and_independent_of_the_bank_sizes():
    first = draw_trials(40, 100, 25, seed=7)
    assert first.shape == (100, 25)
    assert all(len(set(row)) == 25 for row in first)
    np.testing.assert_array_equal(first, draw_trials(40, 100, 25, seed=7))
    assert not np.array_equal(first, draw_trials(40, 100, 25, seed=8))
    rows = sub_bank_rows(np.arange(100), (10, 50, 100), seed=7)
    assert set(rows[10]) <= set(rows[50]) <= set(rows[100]) == set(range(100))
    with pytest.raises(UsageError, match="25 distinct items"):
        draw_trials(10, 1, 25, seed=0)


def test_direct_is_measured_where_one_model_embeds_both_sides(tmp_path):
    joint = planted.PlantedEncoder("planted:joint", "cpu")
    texts = [f"concept {j}" for j in range(planted.CONCEPTS)]
    with build_bank(tmp_path / "bank", texts, [joint]) as bank:
        manifest = concept_manifest(tmp_path / "data", range(planted.CONCEPTS))
        options = EvalOptions(trials=4, candidates=5, methods=("direct", "lse"))
        report = evaluate(manifest, encoders=[joint], bank=bank, options=options)
    direct = report.result("direct")
    assert direct.bank_size is None and not direct.forced
    assert direct.recall[1].per_trial == (1.0,) * 4
    assert mean_recall(report, "lse", 1) == 1.0
    assert report.skipped_methods == {}


# --- intervals -------------------------------------------------------------------------------


def test_t_interval_against_a_hand_computation():
    values = [0.2, 0.4, 0.6, 0.9]
    mean = 0.525
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3}
    interval = t_interval(values, 0.95, (0.0, 1.0))
    assert interval.mean == pytest.approx(mean)
    assert interval.half_width == pytest.approx(half, rel=1e-9)
    assert interval.low == pytest.approx(mean - half) and interval.high == 1.0  # clipped
    lone = t_interval([0.3])
    assert (lone.mean, lone.low, lone.high, lone.half_width) == (0.3, None, None, None)


# --- the manifest ----------------------------------------------------------------------------


def test_manifest_paths_captions_and_ids(tmp_path):
    files = write_media(tmp_path / "data", [1, 2])
    manifest = tmp_path / "data" / "pairs.csv"
    manifest.write_text(
        "\ufeffID,Image,Audio,Caption,caption_2,notes\n"
        "a,images/c1.png,audio/c1.wav,A dog barks,  ,x\n"
        "\n"
        f'b,{files[2][0]},audio/c2.wav,"Rain, then thunder",rain falls,\n',
        encoding="utf-8",
    )
    pairs = read_pairs(manifest)
    assert [(i.name, i.line) for i in pairs.items] == [("a", 2), ("b", 4)]
    assert pairs.items[0].image == tmp_path / "data" / "images" / "c1.png"
    assert pairs.items[0].captions == ("A dog barks",)
    assert pairs.items[1].captions == ("Rain, then thunder", "rain falls")
    assert pairs.sha256 == hashlib.sha256(manifest.read_bytes()).hexdigest()


def test_manifest_problems_name_the_file_and_every_line(tmp_path):
    write_media(tmp_path, [0, 1])
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,audio\n"
        "images/c0.png,audio/c0.wav\n"
        "images/c1.png,\n"
        "images/missing.png,audio/c1.wav\n"
        "images/c0.png,audio/c0.wav\n"
    )
    with pytest.raises(ManifestError) as caught:
        read_pairs(manifest)
    message = str(caught.value)
    assert message.startswith(f"{manifest}: ")
    assert "line 3: the audio cell is empty" in message
    assert "line 4: the image file images/missing.png does not exist" in message
    assert "line 5: repeats the image and audio of line 2" in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("picture,sound\nx.png,y.wav\n", "line 1: the header lacks the column 'image' and 'audio'"),
        ("image,audio\n", "no items"),
    ],
)
def test_manifest_structure_errors(tmp_path, content, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_pairs(manifest)


def test_an_unreadable_file_leaves_its_item_out_or_fails_with_strict(table_setup, tmp_path):
    encoders, bank, _ = table_setup
    folder = tmp_path / "data"
    rows = [{"image": f"images/c{j}.png", "audio": f"audio/c{j}.wav"} for j in range(ITEMS)]
    (folder / "images" / "broken.png").write_text("not an image")
    rows.append({"image": "images/broken.png", "audio": "audio/c0.wav"})
    manifest = write_manifest(folder / "with_broken.csv", rows)
    options = EvalOptions(trials=2, candidates=ITEMS, methods=("lse",))
    report = evaluate(manifest, encoders=encoders, bank=bank, options=options)
    assert (report.manifest_items, report.items) == (ITEMS + 1, ITEMS)
    assert [(s.line, s.path.name) for s in report.skipped_items] == [(ITEMS + 2, "broken.png")]
    assert mean_recall(report, "lse", 1) == 1.0
    with pytest.raises(InputFileError, match=r"broken\.png"):
        evaluate(
            manifest,
            encoders=encoders,
            bank=bank,
            options=EvalOptions(trials=2, candidates=ITEMS, methods=("lse",), strict=True),
        )


def test_options_are_checked():
    with pytest.raises(UsageError, match="unknown method 'cosine'"):
        EvalOptions(methods=("lse", "cosine"))
    with pytest.raises(UsageError, match="unknown direction"):
        EvalOptions(direction="text->audio")


# --- the CLI with the planted entry-point backend --------------------------------------------

IMAGE_TEXT, TEXT_AUDIO = "planted:image-text", "planted:text-audio"
PLANTED_BANK = [f"concept {j}" for j in range(planted.CONCEPTS)] + [
    "a distractor",
    "another distractor",
    "more noise",
    "a fourth distractor",
]


@pytest.fixture
def planted_bank(plugin, runner, tmp_path) -> str:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(PLANTED_BANK) + "\n")
    models = ["--image-text-model", IMAGE_TEXT, "--text-audio-model", TEXT_AUDIO]
    result = runner.invoke(app, ["index", str(corpus), "--bank", "planted", *models])
    assert result.exit_code == 0, result.output
    return "planted"


def run_eval(runner, manifest: Path, *args):
    return runner.invoke(app, ["eval", str(manifest), "--device", "cpu", *map(str, args)])


def recall_of(record: dict, method: str, k: int, size: int | None = None) -> float:
    size = size if size is not None or method == "direct" else record["usable_bank_rows"]
    for result in record["results"]:
        if result["method"] == method and result["bank_size"] == size:
            return result["recall"][str(k)]["mean"]
    raise KeyError((method, size))


def test_leaked_captions_are_reported_and_excluded_unless_allowed(planted_bank, runner, tmp_path):
    # Item 2's caption is the bank text "concept 2" up to case and spaces.
    manifest = concept_manifest(tmp_path / "data", range(6), captions={2: "  Concept   2 "})
    common = ["--bank", planted_bank, "--trials", 5, "--candidates", 6, "--methods", "lse"]
    guarded = run_eval(runner, manifest, *common, "--out", tmp_path / "guarded.json")
    assert guarded.exit_code == 0, guarded.output
    assert "1 bank items equal a manifest caption and were excluded" in guarded.stderr
    assert "'concept 2' (lines 4)" in guarded.stderr
    record = json.loads((tmp_path / "guarded.json").read_text())
    assert record["leakage"]["rows"] == [{"row": 2, "text": "concept 2", "manifest_lines": [4]}]
    assert record["leakage"]["excluded"] and record["usable_bank_rows"] == 9
    # Without "concept 2", query 2 reaches no bank text: the 5 other audios rank above its own.
    assert recall_of(record, "lse", 1) == pytest.approx(5 / 6)
    assert recall_of(record, "lse", 5) == pytest.approx(5 / 6)
    assert recall_of(record, "lse", 10) == 1.0
    assert record["results"][0]["mean_rank"]["mean"] == pytest.approx(11 / 6)

    allowed = run_eval(runner, manifest, *common, "--allow-leak", "--out", tmp_path / "kept.json")
    assert allowed.exit_code == 0, allowed.output
    assert "KEPT (--allow-leak)" in allowed.stderr
    kept = json.loads((tmp_path / "kept.json").read_text())
    assert not kept["leakage"]["excluded"] and kept["usable_bank_rows"] == 10
    assert recall_of(kept, "lse", 1) == 1.0


def expected_planted(present: set[int], concepts: int = 6) -> tuple[dict[int, float], float]:
    """lse on the planted backend, every item in every trial: items whose concept text is in the
    bank come first; the others tie below every candidate whose concept is in the bank."""
    recalls = {1: 0.0, 5: 0.0, 10: 0.0}
    rank = 0.0
    for j in range(concepts):
        if j in present:
            better, group = 0, 1
        else:
            better, group = len(present), concepts - len(present)
        for k in recalls:
            recalls[k] += min(max(k - better, 0), group) / group / concepts
        rank += (better + 1 + (group - 1) / 2) / concepts
    return recalls, rank


def test_bank_size_sweep_matches_the_concepts_each_sub_bank_holds(planted_bank, runner, tmp_path):
    manifest = concept_manifest(tmp_path / "data", range(6))
    out, plot = tmp_path / "sweep.json", tmp_path / "sweep.png"
    result = run_eval(
        runner, manifest, "--bank", planted_bank, "--trials", 3, "--candidates", 6,
        "--methods", "lse,caption", "--bank-sizes", "2,5", "--seed", 4,
        "--out", out, "--plot", plot,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["bank_sizes"] == [2, 5, 10]
    rows = sub_bank_rows(np.arange(10), (2, 5, 10), seed=4)
    with load_bank(resolve_bank(planted_bank)) as bank:
        for size in (2, 5, 10):
            texts = bank.texts(rows[size].tolist())
            present = {int(t.split()[1]) for t in texts if t.startswith("concept")}
            recalls, rank = expected_planted(present)
            for k, value in recalls.items():
                assert recall_of(record, "lse", k, size) == pytest.approx(value), (size, k)
            lse = next(
                r for r in record["results"] if r["method"] == "lse" and r["bank_size"] == size
            )
            assert lse["mean_rank"]["mean"] == pytest.approx(rank)
    assert recall_of(record, "caption", 1, 10) == 1.0
    # The table on stdout, the summary on stderr.
    assert "R@1" in result.stdout and "lse" in result.stdout and "caption" in result.stdout
    assert "embedded 12 files, 0 from the cache" in result.stderr
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 600
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # something was drawn


def test_report_json_names_options_models_versions_and_the_bank_checksum(
    planted_bank, runner, tmp_path
):
    manifest = concept_manifest(tmp_path / "data", range(6))
    out = tmp_path / "report.json"
    result = run_eval(
        runner, manifest, "--bank", planted_bank, "--trials", 7, "--candidates", 4, "--seed", 2,
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["format"] == "ucl-eval/1"
    assert record["options"]["trials"] == 7 and record["options"]["candidates"] == 4
    assert record["options"]["methods"] == ["lse", "topk", "direct", "caption"]
    bank_dir = resolve_bank(planted_bank)
    manifest_json = (bank_dir / "manifest.json").read_bytes()
    assert record["bank"]["manifest_sha256"] == hashlib.sha256(manifest_json).hexdigest()
    assert record["bank"]["rows"] == 10 and record["bank"]["name"] == "planted"
    assert record["manifest"]["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert [(m["role"], m["key"], m["dim"], m["logit_scale"]) for m in record["models"]] == [
        ("query", IMAGE_TEXT, planted.DIM, planted.SCALES[IMAGE_TEXT]),
        ("candidate", TEXT_AUDIO, planted.DIM, planted.SCALES[TEXT_AUDIO]),
    ]
    assert {"ucl", "torch", "numpy", "python"} <= record["versions"].keys()
    assert [r["method"] for r in record["results"]] == ["lse", "topk", "caption"]
    assert "direct" in record["skipped_methods"]
    assert "direct not measured" in result.stderr
    assert record["chance"]["recall"] == {"1": 0.25, "5": 1.0, "10": 1.0}
    for entry in record["results"]:
        for interval in [*entry["recall"].values(), entry["mean_rank"]]:
            values = np.array(interval["per_trial"])
            assert len(values) == 7
            half = student_t.ppf(0.975, 6) * values.std(ddof=1) / math.sqrt(7)
            assert interval["mean"] == pytest.approx(values.mean())
            assert interval["half_width"] == pytest.approx(half, abs=1e-12)


def test_eval_reads_the_nearest_rows_flags_and_their_old_spellings(planted_bank, runner, tmp_path):
    manifest = concept_manifest(tmp_path / "data", range(6))
    common = ["--bank", planted_bank, "--trials", 2, "--candidates", 4, "--methods", "topk"]
    scoring = []
    for n, flags in enumerate([("--nearest", 3, "--nearest-max", 5), ("--k", 3, "--k-max", 5)]):
        out = tmp_path / f"r{n}.json"
        result = run_eval(runner, manifest, *common, *flags, "--out", out)
        assert result.exit_code == 0, result.output
        scoring.append(json.loads(out.read_text())["options"]["scoring"])
    assert scoring[0] == scoring[1]
    assert scoring[0]["nearest_rows"] == 3 and scoring[0]["max_nearest_rows"] == 5
    assert scoring[0]["device"] == "cpu"  # the resolved device is recorded


def test_direct_between_unrelated_models_only_when_forced(planted_bank, runner, tmp_path):
    manifest = concept_manifest(tmp_path / "data", range(6))
    common = ["--bank", planted_bank, "--trials", 2, "--candidates", 6, "--methods", "direct"]
    refused = run_eval(runner, manifest, *common)
    assert refused.exit_code == 2
    assert "trained separately" in refused.stderr and "--force-direct" in refused.stderr
    forced = run_eval(runner, manifest, *common, "--force-direct", "--out", tmp_path / "d.json")
    assert forced.exit_code == 0, forced.output
    record = json.loads((tmp_path / "d.json").read_text())
    assert record["results"][0]["forced"] and record["results"][0]["bank_size"] is None
    assert "direct (forced)" in forced.stdout


def test_audio_to_image_spelled_for_a_shell(planted_bank, runner, tmp_path):
    manifest = concept_manifest(tmp_path / "data", range(6))
    out = tmp_path / "a2i.json"
    common = ["--bank", planted_bank, "--trials", 2, "--candidates", 6, "--methods", "lse"]
    result = run_eval(runner, manifest, *common, "--direction", "audio-to-image", "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["protocol"]["direction"] == "audio->image"
    assert [m["key"] for m in record["models"]] == [TEXT_AUDIO, IMAGE_TEXT]
    assert recall_of(record, "lse", 1) == 1.0
    wrong = run_eval(runner, manifest, *common, "--direction", "text-to-audio")
    assert wrong.exit_code == 2 and "unknown direction" in wrong.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--candidates", "9"], 2, "needs 9 distinct items but the manifest has 6"),
        (
            ["--candidates", "6", "--bank-sizes", "50"],
            2,
            "bank size 50 asked for, but the bank has 10 usable rows",
        ),
        (["--methods", "lse,cosine"], 2, "unknown method 'cosine'"),
        (["--recall-at", "one"], 2, "--recall-at takes whole numbers"),
    ],
)
def test_cli_usage_errors(planted_bank, runner, tmp_path, args, code, message):
    manifest = concept_manifest(tmp_path / "data", range(6))
    result = run_eval(runner, manifest, "--bank", planted_bank, "--trials", 2, *args)
    assert result.exit_code == code, result.output
    assert message in " ".join(result.stderr.split())


def test_cli_bad_manifest_names_the_line(planted_bank, runner, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", [{"image": "nope.png", "audio": "nope.wav"}])
    result = run_eval(runner, manifest, "--bank", planted_bank)
    assert result.exit_code == 1
    assert "line 2: the image file nope.png does not exist" in " ".join(result.stderr.split())


def test_caption_key_normalises_case_and_spaces():
    assert caption_key("  A  Dog\tbarks \n") == caption_key("a dog BARKS") == "a dog barks"
    assert caption_key("a dog barks.") != caption_key("a dog barks")


# --- real sample files through the random-weight stand-ins of the default models -------------

IMAGES = ["astronaut.png", "camera.png", "coffee.png", "chelsea.png", "rocket.jpg", "horse.png",
          "coins.png", "moon.png"]  # fmt: skip
SOUNDS = [
    *(ALSA_SOUNDS / name for name in ("Front_Center.wav", "Noise.wav", "Rear_Left.wav")),
    ALSA_SOUNDS / "Side_Right.wav",
    *(FREEDESKTOP_SOUNDS / f"{name}.oga" for name in ("bell", "complete", "message")),
    FREEDESKTOP_SOUNDS / "camera-shutter.oga",
]
CAPTIONS = [
    "a woman speaks", "a camera shutter clicks", "a bell rings", "static noise",
    "a cat meows", "a rocket launches with a roar", "coins clatter on a table",
    "a horse gallops", "a man says front center", "a short chime", "wind blows",
    "an astronaut talks over the radio",
]  # fmt: skip


def test_stand_in_models_on_real_sample_files_end_to_end(
    clip_encoder, clap_encoder, runner, tmp_path, monkeypatch
):
    loaded = {clip_encoder.key: clip_encoder, clap_encoder.key: clap_encoder}
    monkeypatch.setattr(shared_commands, "load_encoder", lambda key, device: loaded[key])
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(CAPTIONS) + "\n")
    indexed = runner.invoke(app, ["index", str(corpus), "--bank", "standin", "--device", "cpu"])
    assert indexed.exit_code == 0, indexed.output
    rows = [
        {"image": str(sample(SKIMAGE_DATA / image)), "audio": str(sample(sound)), "caption": text}
        for image, sound, text in zip(IMAGES, SOUNDS, [f"sound {i}" for i in range(8)], strict=True)
    ]
    rows[2]["caption"] = "A bell  rings"  # a leak: bank row "a bell rings"
    manifest = write_manifest(tmp_path / "pairs.csv", rows)
    out, plot = tmp_path / "standin.json", tmp_path / "standin.png"
    result = run_eval(
        runner, manifest, "--bank", "standin", "--trials", 20, "--candidates", 5,
        "--bank-sizes", "4,8", "--out", out, "--plot", plot,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["usable_bank_rows"] == len(CAPTIONS) - 1  # the leaked caption left out
    assert record["bank_sizes"] == [4, 8, 11]
    assert {r["method"] for r in record["results"]} == {"lse", "topk", "caption"}
    assert record["embedding"] == {"embedded": 16, "cached": 0}
    for entry in record["results"]:
        for interval in entry["recall"].values():
            assert 0.0 <= interval["mean"] <= 1.0
            assert interval["low"] <= interval["mean"] <= interval["high"]
        assert 1.0 <= entry["mean_rank"]["mean"] <= 5.0
    with Image.open(plot) as image:
        assert image.format == "PNG"
