"""The encoder registry, hub-cache lookups, safe checkpoint reading, the precomputed backend, the
base class, plugins through the `ucl.backends` entry point, and `ucl models` / `ucl doctor`.

Nothing here builds a real model (see test_open_clip_backend.py and test_clap_backend.py).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import HashEncoder
from PIL import Image
from typer.testing import CliRunner

from ucl_cli.cli import app
from ucl_cli.encoders import hub, registry
from ucl_cli.encoders.base import Modality
from ucl_cli.encoders.checkpoints import (
    IncompatibleWeightsError,
    UnsafeCheckpointError,
    load_strict,
    read_state_dict,
)
from ucl_cli.encoders.hub import ChecksumMismatchError, HubFile, MissingModelFileError
from ucl_cli.encoders.precomputed import MissingEmbeddingError
from ucl_cli.encoders.registry import (
    DEFAULT_IMAGE_TEXT,
    DEFAULT_TEXT_AUDIO,
    Backend,
    ModelSpec,
    get_spec,
    list_models,
    load_encoder,
)
from ucl_cli.errors import (
    InputFileError,
    ModelNotAvailableError,
    UnknownModelError,
    UsageError,
)
from ucl_cli.testing.standins import write_hub_file

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_registry():
    """A registry rebuilt from the entry points for this test, and forgotten afterwards."""
    registry.reset_registry()
    yield
    registry.reset_registry()


def put(root: Path, repo: str, filename: str, data: bytes) -> Path:
    return write_hub_file(root / "hub", repo, filename, lambda p: p.write_bytes(data)).path


# --- the table ---------------------------------------------------------------------------------


def test_defaults_are_in_the_table_with_the_papers_models():
    keys = list_models()
    assert DEFAULT_IMAGE_TEXT == "clip:ViT-B-32/laion2b_s34b_b79k"
    assert DEFAULT_TEXT_AUDIO == "clap:630k-audioset-best"
    assert {DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO} <= set(keys)
    clip, clap = get_spec(DEFAULT_IMAGE_TEXT), get_spec(DEFAULT_TEXT_AUDIO)
    assert (clip.backend, clip.architecture, clip.dim) == ("open_clip", "ViT-B-32", 512)
    assert clip.weights.repo == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    assert set(clip.modalities) == {"image", "text"}
    assert (clap.backend, clap.architecture, clap.dim) == ("laion_clap", "HTSAT-tiny", 512)
    assert (clap.weights.repo, clap.weights.filename) == (
        "lukewys/laion_clap",
        "630k-audioset-best.pt",
    )
    assert clap.options["fusion"] is False and clap.preprocessing["crop"] == "center"
    assert clap.preprocessing["sample_rate"] == 48_000
    fusion = get_spec("clap:630k-audioset-fusion-best")
    assert fusion.options["fusion"] is True
    assert {a.repo for a in clap.assets} == {"roberta-base"}


def test_every_entry_is_complete_and_states_no_unverified_checksum():
    for key in list_models():
        spec = get_spec(key)
        assert spec.key == key and spec.dim > 0 and spec.modalities and spec.description
        assert json.loads(json.dumps(spec.preprocessing)) == dict(spec.preprocessing)
        for hub_file in spec.hub_files():
            assert hub_file.sha256 is None  # none could be verified: none is claimed


@pytest.mark.parametrize(
    ("typo", "expected"),
    [
        ("clap:630k-audioset-bset", "clap:630k-audioset-best"),
        ("630k-audioset-best", "clap:630k-audioset-best"),
        ("clip:ViT-B-32/laion2b_s34b_b79k ".upper(), "clip:ViT-B-32/laion2b_s34b_b79k"),
        ("clop:ViT-B-32/laion2b_s34b_b79k", "clip:ViT-B-32/laion2b_s34b_b79k"),
    ],
)
def test_unknown_key_offers_the_closest_names(typo, expected):
    with pytest.raises(UnknownModelError) as err:
        get_spec(typo)
    assert expected in str(err.value)
    assert "ucl models" in str(err.value)
    assert err.value.exit_code == 2


def test_at_path_suffix_names_local_weights(tmp_path):
    spec = get_spec(f"{DEFAULT_TEXT_AUDIO}@{tmp_path / 'mine.pt'}")
    assert spec.local_weights == tmp_path / "mine.pt"
    assert spec.architecture == "HTSAT-tiny"
    assert spec.weights not in spec.hub_files()  # the hub checkpoint is no longer needed
    assert {f.filename for f in spec.hub_files()} == {"config.json", "vocab.json", "merges.txt"}
    with pytest.raises(UsageError):
        get_spec(f"{DEFAULT_TEXT_AUDIO}@")


def declared_backends() -> dict[str, str]:
    """pyproject.toml's `ucl.backends` entry points (tomllib is Python >= 3.11 only)."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10: read the one simple table by hand
        section = text.split('[project.entry-points."ucl.backends"]', 1)[1].split("\n[", 1)[0]
        pairs = (line.split("=", 1) for line in section.splitlines() if "=" in line)
        return {k.strip(): v.strip().strip('"') for k, v in pairs if not k.strip().startswith("#")}
    return tomllib.loads(text)["project"]["entry-points"]["ucl.backends"]


def test_builtin_entry_points_mirror_pyproject():
    assert declared_backends() == registry.BUILTIN_ENTRY_POINTS


def test_the_product_never_imports_the_testing_kit():
    # It only reads the stand-ins' mark (ucl_cli/encoders/standin_marks.py); the writers, in
    # ucl_cli/testing, are for tests, benchmarks and scripts/make_test_models.py.
    package = REPO_ROOT / "ucl_cli"
    an_import = re.compile(r"^\s*(from|import)\s+ucl_cli\.testing\b", re.MULTILINE)
    importers = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.parent.name != "testing" and an_import.search(path.read_text())
    ]
    assert importers == []


def test_builtins_register_through_the_entry_point_group(fresh_registry, monkeypatch):
    loaded = []
    real = registry._entry_points

    def spy():
        points = real()
        loaded.extend(ep.name for ep in points)
        return points

    monkeypatch.setattr(registry, "_entry_points", spy)
    reg = registry.default_registry()
    assert {"open_clip", "laion_clap", "npy"} <= set(loaded)
    assert {"open_clip", "laion_clap", "npy"} <= set(reg.backends)
    assert reg.backend_for_prefix("clip").name == "open_clip"
    assert reg.backend_for_prefix("clap").name == "laion_clap"
    assert not reg.plugin_errors


PLUGIN_SOURCE = """
import numpy as np
from ucl_cli.encoders.registry import Backend, ModelSpec

def build(spec, files, device):
    from fakes import HashEncoder
    encoder = HashEncoder(key=spec.key, modalities=spec.modalities, dim=spec.dim, logit_scale=7.0)
    encoder.plant("hello", np.eye(spec.dim, dtype=np.float32)[0] * 3.0)
    encoder.built_on = device
    return encoder

def register(registry):
    registry.add_backend(Backend(name="planted", prefixes=("planted",), build=build))
    registry.add_model(ModelSpec(key="planted:tiny", backend="planted", architecture="hash",
                                 modalities=("text", "audio"), dim=4, preprocessing={"n": 1},
                                 description="a test plugin"))
"""


def install_plugin(tmp_path: Path, monkeypatch, source: str, name: str = "ucl_planted") -> None:
    """A third-party distribution on sys.path with an entry_points.txt in the ucl.backends group."""
    site = tmp_path / "site"
    (site / f"{name}-1.0.dist-info").mkdir(parents=True)
    (site / f"{name}.py").write_text(source)
    (site / f"{name}-1.0.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    )
    (site / f"{name}-1.0.dist-info" / "entry_points.txt").write_text(
        f"[ucl.backends]\n{name} = {name}:register\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_third_party_backend_plugs_in_through_an_entry_point(tmp_path, monkeypatch, fresh_registry):
    install_plugin(tmp_path, monkeypatch, PLUGIN_SOURCE)
    assert "planted:tiny" in list_models()
    encoder = load_encoder("planted:tiny", logit_scale=3.5)
    assert encoder.key == "planted:tiny" and encoder.built_on == "cpu"
    assert encoder.logit_scale == 3.5
    vectors = encoder.embed("text", ["hello", "other"])
    np.testing.assert_allclose(vectors[0], [1, 0, 0, 0])
    assert encoder.preprocessing["n"] == 1  # the spec's, plus what the backend reports
    with pytest.raises(UnknownModelError, match="planted:tiny"):
        get_spec("planted:tiyn")


def test_a_broken_plugin_is_reported_and_does_not_break_the_others(
    tmp_path, monkeypatch, fresh_registry
):
    install_plugin(tmp_path, monkeypatch, "raise ImportError('needs libfoo')\n", name="ucl_broken")
    reg = registry.default_registry()
    assert "needs libfoo" in reg.plugin_errors["ucl_broken"]
    assert {"open_clip", "laion_clap", "npy"} <= set(reg.backends)
    reg.add_model(ModelSpec("broken:x", "ucl_broken", "a", ("text",), 2, {}))
    with pytest.raises(ModelNotAvailableError, match="needs libfoo"):
        load_encoder("broken:x")


def fake_backend(captured: dict, dim: int = 4, logit_scale: float | None = 2.0):
    def build(spec, files, device):
        captured["device"] = device
        captured["files"] = files
        encoder = HashEncoder(key="wrong", modalities=spec.modalities, dim=dim, logit_scale=1.0)
        encoder.logit_scale = logit_scale
        return encoder

    reg = registry.default_registry()
    reg.add_backend(Backend(name="fake", prefixes=("fake",), build=build))
    reg.add_model(ModelSpec("fake:m", "fake", "hash", ("text",), 4, {"size": 1}))


def test_composer_resolves_the_device_and_attaches_key_and_preprocessing(
    monkeypatch, fresh_registry
):
    captured: dict = {}
    fake_backend(captured)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    encoder = load_encoder("fake:m", device="auto")
    assert captured["device"] == "cuda"  # a GPU is used when torch sees one
    assert encoder.key == "fake:m" and encoder.preprocessing["size"] == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    load_encoder("fake:m", device="auto")
    assert captured["device"] == "cpu"
    with pytest.raises(UsageError, match="no CUDA"):
        load_encoder("fake:m", device="cuda")


def test_composer_checks_logit_scale_and_dimension(monkeypatch, fresh_registry):
    captured: dict = {}
    fake_backend(captured, logit_scale=None)
    with pytest.raises(UsageError, match="logit scale is unknown"):
        load_encoder("fake:m")
    assert load_encoder("fake:m", logit_scale=9.0).logit_scale == 9.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UsageError, match="positive"):
            load_encoder("fake:m", logit_scale=bad)
    registry.reset_registry()
    fake_backend(captured, dim=5)
    with pytest.raises(ModelNotAvailableError, match="5-dimensional"):
        load_encoder("fake:m")


# --- hub cache -----------------------------------------------------------------------------------


def test_hub_cache_location_follows_the_environment(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub.cache_dir() == tmp_path / "cache"


def test_find_cached_prefers_the_named_file_then_fallbacks_then_aliases(empty_hub):
    wanted = HubFile("org/model", "w.safetensors", fallbacks=("w.bin",), aliases=("new/model",))
    assert hub.find_cached(wanted) is None
    alias = put(empty_hub, "new/model", "w.safetensors", b"alias")
    assert hub.find_cached(wanted) == alias
    fallback = put(empty_hub, "org/model", "w.bin", b"bin")
    assert hub.find_cached(wanted) == fallback
    preferred = put(empty_hub, "org/model", "w.safetensors", b"safe")
    assert hub.find_cached(wanted) == preferred
    assert preferred.read_bytes() == b"safe"


def test_checksums_are_verified_when_stated(empty_hub):
    import hashlib

    put(empty_hub, "org/model", "w.bin", b"weights")
    good = HubFile("org/model", "w.bin", sha256=hashlib.sha256(b"weights").hexdigest())
    assert hub.locate(good) is not None
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        hub.locate(HubFile("org/model", "w.bin", sha256="0" * 64))


@pytest.mark.parametrize("key", [DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO])
def test_missing_weights_fail_fast_and_say_how_to_get_them(empty_hub, monkeypatch, key):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even online-configured: no download
    start = time.perf_counter()
    with pytest.raises(MissingModelFileError) as err:
        load_encoder(key)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    spec = get_spec(key)
    assert spec.weights.repo in message and spec.weights.filename in message
    assert f"ucl models fetch {key}" in message
    flag = "--image-text-weights" if key == DEFAULT_IMAGE_TEXT else "--text-audio-weights"
    assert f"`{flag} PATH`" in message  # a flag of ucl index, query and eval
    assert str(hub.cache_dir()) in message
    if key == DEFAULT_TEXT_AUDIO:  # the tokenizer and config of the text tower, named too
        assert "config.json, vocab.json, merges.txt (hub repo roberta-base)" in message
        assert "hf download roberta-base config.json vocab.json merges.txt" in message


def test_missing_local_weights_are_named(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=r"nope\.pt"):
        load_encoder(DEFAULT_TEXT_AUDIO, weights=tmp_path / "nope.pt")


def test_fetch_refuses_at_once_in_offline_mode(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="HF_HUB_OFFLINE"):
        registry.fetch_model(DEFAULT_TEXT_AUDIO)
    assert time.perf_counter() - start < 2


def test_fetch_fails_within_seconds_when_the_hub_is_unreachable(empty_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="not reachable"):
        registry.fetch_model(DEFAULT_IMAGE_TEXT)
    assert time.perf_counter() - start < hub.PROBE_TIMEOUT_S + 2


def test_fetch_of_cached_files_needs_no_network(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_spec(DEFAULT_IMAGE_TEXT)
    path = put(empty_hub, spec.weights.repo, spec.weights.filename, b"x")
    assert registry.fetch_model(DEFAULT_IMAGE_TEXT) == [path]  # the optional config is absent


# --- checkpoints ---------------------------------------------------------------------------------


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_weights_only_reading_strips_prefixes_and_accepts_numpy_metadata(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = {"module.a.weight": torch.ones(2, 2), "module.b": torch.zeros(3)}
    torch.save({"epoch": 3, "best": np.float64(0.5), "state_dict": state}, path)
    loaded = read_state_dict(path)
    assert sorted(loaded) == ["a.weight", "b"]
    torch.testing.assert_close(loaded["a.weight"], torch.ones(2, 2))


def test_a_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    marker = tmp_path / "marker.txt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        read_state_dict(path)
    assert "refusing to load" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def test_safetensors_and_unreadable_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.arange(3.0)}, str(tmp_path / "w.safetensors"))
    torch.testing.assert_close(read_state_dict(tmp_path / "w.safetensors")["w"], torch.arange(3.0))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotAvailableError, match=r"junk\.pt"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(ModelNotAvailableError, match="no such"):
        read_state_dict(tmp_path / "absent.pt")


def test_strict_loading_names_the_keys_and_loads_nothing_on_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.full_like(v, 7.0) for k, v in before.items()}
    state["2.weight"] = torch.ones(1)
    del state["1.bias"]
    state["0.weight"] = torch.ones(5, 5)
    with pytest.raises(IncompatibleWeightsError) as err:
        load_strict(model, state, "ckpt.pt", "a test net")
    message = str(err.value)
    assert "1 missing (1.bias)" in message and "1 unexpected (2.weight)" in message
    assert "0.weight" in message and "ckpt.pt" in message
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])  # nothing half-loaded


# --- precomputed embeddings ----------------------------------------------------------------------


@pytest.fixture
def npy_model(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((4, 6)) * np.array([[3.0], [0.5], [10.0], [1.0]])
    path = tmp_path / "emb.npy"
    np.save(path, rows)
    (tmp_path / "emb.ids.txt").write_text("dog.wav\nsounds/cat.flac\nrain\nphoto.jpg\n")
    return path, rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_precomputed_rows_are_renormalised_and_found_by_id_name_or_stem(npy_model, tmp_path):
    path, unit = npy_model
    encoder = load_encoder(f"npy:{path}", logit_scale=50.0)
    assert encoder.dim == 6 and encoder.logit_scale == 50.0
    assert encoder.modalities == frozenset(Modality)
    got = encoder.embed("audio", ["dog.wav", "/elsewhere/dog.wav", "cat", "/x/cat.flac"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, unit[[0, 0, 1, 1]], rtol=1e-6)
    np.testing.assert_allclose(encoder.embed("text", ["rain"]), unit[[2]], rtol=1e-6)
    image = Image.new("RGB", (4, 4))
    image.save(tmp_path / "photo.jpg")
    np.testing.assert_allclose(
        encoder.embed("image", [Image.open(tmp_path / "photo.jpg")]), unit[[3]], rtol=1e-6
    )
    assert encoder.preprocessing["rows"] == 4 and encoder.preprocessing["file"] == str(
        path.resolve()
    )


def test_precomputed_missing_id_and_missing_logit_scale_are_clear(npy_model):
    path, _ = npy_model
    with pytest.raises(UsageError, match="logit scale is unknown"):
        load_encoder(f"npy:{path}")
    encoder = load_encoder(f"npy:{path}", logit_scale=1.0)
    with pytest.raises(MissingEmbeddingError) as err:
        encoder.embed("audio", ["/data/owl.wav"])
    assert "/data/owl.wav" in str(err.value) and "emb.ids.txt" in str(err.value)
    with pytest.raises(MissingEmbeddingError, match="looked up by id"):
        encoder.embed("audio", [np.zeros(10, dtype=np.float32)])


def test_precomputed_json_sidecar_states_modalities_and_scale(tmp_path):
    path = tmp_path / "img@v2.npy"  # an '@' in the path is part of the path
    np.save(path, np.eye(3, dtype=np.float32) * 5)
    (tmp_path / "img@v2.json").write_text(
        json.dumps(
            {
                "ids": ["a", "b", "c"],
                "modalities": ["image"],
                "logit_scale": 30,
                "model": "imagebind",
            }
        )
    )
    encoder = load_encoder(f"npy:{path}")
    assert encoder.logit_scale == 30.0 and encoder.modalities == frozenset({Modality.IMAGE})
    assert encoder.preprocessing["model"] == "imagebind"
    np.testing.assert_allclose(encoder.embed("image", ["b"]), [[0, 1, 0]])
    with pytest.raises(UsageError, match="cannot embed text"):
        encoder.embed("text", ["a"])


def test_precomputed_bad_inputs(tmp_path):
    path = tmp_path / "e.npy"
    np.save(path, np.ones((2, 3), dtype=np.float32))
    with pytest.raises(InputFileError, match="no id list"):
        get_spec(f"npy:{path}")
    (tmp_path / "e.txt").write_text("a\n")
    with pytest.raises(InputFileError, match=r"1 ids but e\.npy has 2 rows"):
        get_spec(f"npy:{path}")
    (tmp_path / "e.txt").write_text("a\na\n")
    with pytest.raises(InputFileError, match="appears twice"):
        load_encoder(f"npy:{path}", logit_scale=1.0)
    (tmp_path / "e.txt").write_text("x/a.wav\ny/a.wav\n")
    encoder = load_encoder(f"npy:{path}", logit_scale=1.0)
    with pytest.raises(MissingEmbeddingError, match="more than one id"):
        encoder.embed("audio", ["a.wav"])
    with pytest.raises(InputFileError, match="no such file"):
        get_spec(f"npy:{tmp_path / 'absent.npy'}")


# --- the base class ------------------------------------------------------------------------------


def test_base_class_batches_checks_modality_and_normalises():
    encoder = HashEncoder(modalities=("text",), dim=8)
    encoder.plant("big", np.full(8, 5.0))
    seen = []
    vectors = encoder.embed(
        "text", ["big", *map(str, range(6))], batch_size=3, progress=seen.append
    )
    assert vectors.shape == (7, 8) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(vectors[0], np.full(8, 8**-0.5), rtol=1e-6)
    assert [n for _, n in encoder.calls] == [3, 3, 1] and seen == [3, 3, 1]
    with pytest.raises(UsageError, match="cannot embed audio"):
        encoder.embed("audio", [np.zeros(3)])
    assert encoder.embed("text", []).shape == (0, 8)


# --- commands ------------------------------------------------------------------------------------


def test_ucl_models_lists_the_table_with_cache_state(empty_hub):
    spec = get_spec(DEFAULT_IMAGE_TEXT)
    put(empty_hub, spec.weights.repo, spec.weights.filename, b"x")
    result = CliRunner().invoke(app, ["models", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = {row["key"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert set(rows) == set(list_models())
    assert rows[DEFAULT_IMAGE_TEXT]["state"] == "cached" and rows[DEFAULT_IMAGE_TEXT]["default"]
    assert rows[DEFAULT_TEXT_AUDIO]["state"] == "missing"
    assert "roberta-base/vocab.json" in rows[DEFAULT_TEXT_AUDIO]["missing"]
    table = CliRunner().invoke(app, ["models", "--format", "table"])
    assert table.exit_code == 0 and DEFAULT_TEXT_AUDIO in table.stdout


def test_ucl_models_fetch_fails_fast_and_clearly_offline(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(app, ["models", "fetch", DEFAULT_TEXT_AUDIO])
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE" in result.output and "Traceback" not in result.output


def test_ucl_doctor_reports_versions_device_and_missing_files(empty_hub):
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for expected in ("python", "torch", "open_clip", "laion_clap", "transformers", "faiss"):
        assert expected in result.stdout
    assert "cpu" in result.stdout or "CUDA" in result.stdout
    assert str(hub.cache_dir()) in result.stdout.replace("\n", "")
    assert f"ucl models fetch {DEFAULT_TEXT_AUDIO}" in result.stdout
    assert "lukewys/laion_clap/630k-audioset-best.pt" in result.stdout
