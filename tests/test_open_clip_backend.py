"""The open_clip backend through the production loading path, offline, with a small random-weight
stand-in of the default CLIP written to a temporary hub cache (tests/model_fixtures.py)."""

from __future__ import annotations

import json
import math
import shutil

import model_fixtures
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from ucl_cli.encoders.checkpoints import IncompatibleWeightsError, UnsafeCheckpointError
from ucl_cli.encoders.hub import MissingModelFileError
from ucl_cli.encoders.open_clip_backend import OpenClipEncoder
from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, get_spec, list_models, load_encoder
from ucl_cli.errors import UnknownModelError
from ucl_cli.testing.standins import CLIP_LOGIT_SCALE

REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


def pictures(count: int = 3, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(300, 200), (224, 224), (64, 500)]
    return [
        Image.fromarray((rng.random((*sizes[i % 3][::-1], 3)) * 255).astype(np.uint8), "RGB")
        for i in range(count)
    ]


def test_default_key_loads_offline_from_the_hub_cache(clip_encoder):
    assert isinstance(clip_encoder, OpenClipEncoder)
    assert clip_encoder.key == DEFAULT_IMAGE_TEXT
    assert clip_encoder.dim == 512 and clip_encoder.device == "cpu"
    assert clip_encoder.preprocessing["image_size"] == 224
    # The hub blob's name is the SHA-256 of its content: the weights' identity, read for free.
    assert clip_encoder.weights_id.startswith("sha256:") and len(clip_encoder.weights_id) == 71


def test_logit_scale_is_read_from_the_weights_and_can_be_overridden(clip_encoder, clip_hub):
    # open_clip initialises logit_scale to 1/0.07; the stand-in stores another value.
    assert clip_encoder.logit_scale == pytest.approx(CLIP_LOGIT_SCALE, rel=1e-5)
    assert not math.isclose(clip_encoder.logit_scale, 1 / 0.07, rel_tol=1e-3)
    assert load_encoder(DEFAULT_IMAGE_TEXT, logit_scale=42.0).logit_scale == 42.0


def test_embeddings_are_unit_norm_float32_and_deterministic(clip_encoder):
    images = pictures()
    first = clip_encoder.embed("image", images)
    again = clip_encoder.embed("image", images[::-1], batch_size=2)
    texts = clip_encoder.embed("text", ["a dog", "rain on a roof", "a dog"])
    one = clip_encoder.embed("text", ["rain on a roof"])
    for vectors, rows in ((first, 3), (texts, 3), (one, 1)):
        assert vectors.dtype == np.float32 and vectors.shape == (rows, 512)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(first, again[::-1], atol=1e-5)
    np.testing.assert_allclose(texts[0], texts[2], atol=1e-6)
    np.testing.assert_allclose(one[0], texts[1], atol=1e-5)
    assert not np.allclose(texts[0], texts[1])


def test_embeddings_match_open_clips_own_loading_of_the_same_files(clip_encoder, clip_root):
    # open_clip reads the same snapshot folder with its own loader: same weights, same numbers.
    folder = model_fixtures.snapshot(clip_root, REPO)
    reference = open_clip.create_model(f"local-dir:{folder}").eval()
    preprocess = open_clip.image_transform(224, is_train=False)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a dog", "a cat"])
    images = pictures(2)
    with torch.no_grad():
        text = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1).numpy()
        pixels = torch.stack([preprocess(image) for image in images])
        image = torch.nn.functional.normalize(reference.encode_image(pixels), dim=-1).numpy()
    np.testing.assert_allclose(clip_encoder.embed("text", ["a dog", "a cat"]), text, atol=1e-5)
    np.testing.assert_allclose(clip_encoder.embed("image", images), image, atol=1e-5)


def test_local_folder_and_weights_argument_load_the_same_model(
    clip_encoder, clip_root, tmp_path, empty_hub
):
    folder = tmp_path / "my-clip"
    shutil.copytree(model_fixtures.snapshot(clip_root, REPO), folder)
    expected = clip_encoder.embed("text", ["a dog"])
    by_key = load_encoder(f"clip:ViT-B-32@{folder}")  # the hub cache is empty here
    by_argument = load_encoder(DEFAULT_IMAGE_TEXT, weights=folder)
    assert by_key.key == f"clip:ViT-B-32@{folder}"
    # Identified by content: the same folder is the same weights, whichever way it is named.
    assert by_key.weights_id.startswith("sha256:") and by_key.weights_id == by_argument.weights_id
    np.testing.assert_allclose(by_key.embed("text", ["a dog"]), expected, atol=1e-6)
    np.testing.assert_allclose(by_argument.embed("text", ["a dog"]), expected, atol=1e-6)


def test_weights_of_another_architecture_are_an_error_not_a_random_model(clip_root, empty_hub):
    # Without its config, the small checkpoint does not fit the real ViT-B-32.
    weights = model_fixtures.snapshot(clip_root, REPO) / "open_clip_model.safetensors"
    with pytest.raises(IncompatibleWeightsError) as err:
        load_encoder(DEFAULT_IMAGE_TEXT, weights=weights)
    assert "another shape" in str(err.value) and "open_clip ViT-B-32" in str(err.value)


def test_a_pickled_object_in_a_checkpoint_is_refused(tmp_path, empty_hub):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"logit_scale": torch.ones(()), "hook": Evil()}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_encoder("clip:ViT-B-32", weights=path)


def test_missing_files_are_named_without_downloading(empty_hub):
    with pytest.raises(MissingModelFileError) as err:
        load_encoder(DEFAULT_IMAGE_TEXT)
    assert REPO in str(err.value) and "open_clip_model.safetensors" in str(err.value)


def test_any_open_clip_name_resolves_and_unknown_tags_get_suggestions():
    spec = get_spec("clip:RN50/openai")
    assert spec.dim == 1024 and spec.options == {"quick_gelu": True}
    assert spec.weights.repo == "timm/resnet50_clip.openai"
    assert spec.weights.filename == "open_clip_model.safetensors"
    assert spec.weights.fallbacks == ("open_clip_pytorch_model.bin",)
    bare = get_spec("clip:ViT-B-16")
    assert bare.weights is None and bare.dim == 512
    with pytest.raises(UnknownModelError, match="clip:ViT-B-32/laion2b_s34b_b79k"):
        get_spec("clip:ViT-B-32/laion2b_s34b_b97k")
    with pytest.raises(UnknownModelError, match="ViT-B-32"):
        get_spec("clip:ViT-B-23/openai")


def test_table_entries_agree_with_open_clips_pretrained_table():
    from ucl_cli.encoders.open_clip_backend import resolve

    for key in (k for k in list_models() if k.startswith("clip:")):
        mine, generic = get_spec(key), resolve(key)  # the table's entry, open_clip's own data
        assert (mine.dim, mine.weights, mine.architecture) == (
            generic.dim,
            generic.weights,
            generic.architecture,
        ), key
        assert dict(mine.preprocessing) == dict(generic.preprocessing), key
        assert bool(mine.options.get("quick_gelu")) == bool(generic.options.get("quick_gelu")), key


def test_hub_config_defines_the_architecture(clip_root):
    config = json.loads(
        (model_fixtures.snapshot(clip_root, REPO) / "open_clip_config.json").read_text()
    )
    assert (
        config["model_cfg"]["vision_cfg"]["layers"] == 1
    )  # the small stand-in was loaded, not B-32
    assert "RANDOM" in config["ucl_standin"]


@pytest.mark.gpu
def test_runs_on_cuda_with_the_same_embeddings(clip_encoder, clip_hub):
    assert clip_encoder.key == DEFAULT_IMAGE_TEXT
    model_fixtures.assert_same_on_cuda(clip_encoder, "image", pictures())
