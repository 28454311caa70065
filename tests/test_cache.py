"""ucl_cli.cache: a second pass embeds nothing, changes are noticed, models are independent, and
the SQLite file survives errors, kills and concurrent writers."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from fakes import HashEncoder
from media_samples import ALSA_SOUNDS, SKIMAGE_DATA, open_image, sample
from PIL import Image
from typer.testing import CliRunner

from ucl_cli import cache as cache_module
from ucl_cli import config
from ucl_cli.cache import (
    SCHEMA_VERSION,
    CacheKey,
    EmbeddingCache,
    embed_files,
    preprocessing_digest,
)
from ucl_cli.cli import app
from ucl_cli.errors import InputFileError, UclError
from ucl_cli.media import LOADER_VERSION, load_audio, load_image

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("astronaut.png", "camera.png", "chelsea.png")


def sql(path: Path, statement: str, parameters: tuple = ()) -> list[tuple]:
    """Run one statement on the cache file from outside the library (and close the connection)."""
    with closing(sqlite3.connect(path)) as connection, connection:
        return connection.execute(statement, parameters).fetchall()


def calls(encoder: HashEncoder) -> int:
    """Items the encoder has embedded so far."""
    return sum(count for _, count in encoder.calls)


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    return [Path(shutil.copy(sample(SKIMAGE_DATA / name), folder / name)) for name in IMAGES]


@pytest.fixture
def store(tmp_path) -> EmbeddingCache:
    with EmbeddingCache(tmp_path / "cache.sqlite") as opened:
        yield opened


def key(index: int, model: str = "fake:hash", dim_tag: str = "p") -> CacheKey:
    return CacheKey(f"{index:064x}", model, dim_tag, "image")


def unit(index: int, dim: int = 16) -> np.ndarray:
    vector = np.random.default_rng(index).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


# --- embed_files -----------------------------------------------------------------------------


def test_second_call_embeds_nothing_and_returns_the_same_vectors(photos, store):
    encoder = HashEncoder()
    first = embed_files(encoder, "image", photos, store)
    assert calls(encoder) == 3 and first.computed == 3 and first.cached == 0
    expected = encoder.embed("image", [load_image(path) for path in photos])
    np.testing.assert_array_equal(first.vectors, expected)
    assert first.paths == photos

    encoder.calls.clear()
    second = embed_files(encoder, "image", photos, store)
    assert calls(encoder) == 0
    assert second.computed == 0 and second.cached == 3
    np.testing.assert_array_equal(second.vectors, expected)


def test_a_fresh_cache_object_and_a_renamed_copy_reuse_vectors(photos, tmp_path):
    encoder = HashEncoder()
    with EmbeddingCache() as store:  # the default location, under UCL_HOME
        assert store.path == config.cache_path()
        first = embed_files(encoder, "image", photos, store)
    renamed = Path(shutil.copy(photos[1], tmp_path / "copy-of-camera.png"))
    encoder.calls.clear()
    with EmbeddingCache() as store:
        again = embed_files(encoder, "image", [renamed, photos[0]], store)
    assert calls(encoder) == 0
    np.testing.assert_array_equal(again.vectors, first.vectors[[1, 0]])


def test_a_changed_file_is_embedded_again(photos, store):
    encoder = HashEncoder()
    before = embed_files(encoder, "image", photos, store)
    open_image(photos[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos[0])
    encoder.calls.clear()
    after = embed_files(encoder, "image", photos, store)
    assert calls(encoder) == 1 and after.computed == 1
    assert not np.array_equal(after.vectors[0], before.vectors[0])
    np.testing.assert_array_equal(after.vectors[1:], before.vectors[1:])
    np.testing.assert_array_equal(
        after.vectors[0], encoder.embed("image", [load_image(photos[0])])[0]
    )


def test_same_size_rewrite_with_its_old_mtime_is_still_noticed(photos, store, monkeypatch):
    monkeypatch.setattr(cache_module, "RACY_WINDOW_NS", 0)  # trust the memo at once
    encoder = HashEncoder()
    path = photos[1]
    embed_files(encoder, "image", [path], store)
    old = path.stat()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # as `rsync -t` or `touch -r` would
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    hashed = store.hash_files([path])
    assert hashed.read == 1  # ctime moved: the memo is not trusted
    assert hashed.digests[path] == cache_module.sha256_file(path)


def test_unchanged_files_are_not_read_again(photos, store, monkeypatch):
    monkeypatch.setattr(cache_module, "RACY_WINDOW_NS", 0)
    assert store.hash_files(photos).read == 3
    again = store.hash_files(photos)
    assert again.read == 0
    assert again.digests == {path: cache_module.sha256_file(path) for path in photos}


def test_files_modified_just_before_hashing_are_hashed_again(photos, store, monkeypatch):
    # Modified within the window before hashing: a same-size rewrite could share the stat.
    monkeypatch.setattr(cache_module, "RACY_WINDOW_NS", 60_000_000_000)
    assert store.hash_files(photos).read == 3
    assert store.hash_files(photos).read == 3


def test_other_models_vectors_survive_a_model_change_and_a_clear(photos, store):
    small, large = HashEncoder(key="fake:a", dim=8), HashEncoder(key="fake:b", dim=16)
    a = embed_files(small, "image", photos, store)
    b = embed_files(large, "image", photos, store)
    assert a.vectors.shape == (3, 8) and b.vectors.shape == (3, 16)
    assert store.clear(model="fake:a") == 3
    assert [(m.model, m.dim, m.vectors) for m in store.stats().models] == [("fake:b", 16, 3)]
    small.calls.clear()
    large.calls.clear()
    np.testing.assert_array_equal(embed_files(large, "image", photos, store).vectors, b.vectors)
    assert calls(large) == 0
    np.testing.assert_array_equal(embed_files(small, "image", photos, store).vectors, a.vectors)
    assert calls(small) == 3


def test_preprocessing_is_part_of_the_key(tmp_path, store):
    clips = [sample(ALSA_SOUNDS / name) for name in ("Front_Left.wav", "Front_Right.wav")]
    at_16k, at_48k = HashEncoder(sample_rate=16_000), HashEncoder(sample_rate=48_000)
    low = embed_files(at_16k, "audio", clips, store)
    high = embed_files(at_48k, "audio", clips, store)
    assert calls(at_48k) == 2  # same model key, other preprocessing: not a hit
    np.testing.assert_array_equal(
        low.vectors, at_16k.embed("audio", [load_audio(clip, 16_000) for clip in clips])
    )
    assert not np.array_equal(low.vectors, high.vectors)
    at_16k.calls.clear()
    embed_files(at_16k, "audio", clips, store)
    assert calls(at_16k) == 0
    digest = preprocessing_digest(at_16k.preprocessing, loader_version=LOADER_VERSION)
    assert digest != preprocessing_digest(at_16k.preprocessing, loader_version=LOADER_VERSION + 1)
    assert digest == preprocessing_digest(
        dict(reversed(list(at_16k.preprocessing.items()))), loader_version=LOADER_VERSION
    )


def test_identical_files_are_embedded_once(photos, tmp_path, store):
    twin = Path(shutil.copy(photos[0], tmp_path / "twin.png"))
    encoder = HashEncoder()
    progress: list[int] = []
    result = embed_files(
        encoder, "image", [photos[0], twin, photos[2]], store, progress=progress.append
    )
    assert calls(encoder) == 2 and (result.computed, result.cached) == (2, 0)
    np.testing.assert_array_equal(result.vectors[0], result.vectors[1])
    assert sum(progress) == 3


def test_bad_files_are_skipped_or_raised(photos, tmp_path, store):
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    paths = [photos[0], fake, tmp_path / "gone.png", photos[1]]
    warned: list[InputFileError] = []
    result = embed_files(HashEncoder(), "image", paths, store, on_skip=warned.append)
    assert result.paths == [photos[0], photos[1]]
    assert result.vectors.shape == (2, 16)
    assert [(error.path, error.reason) for error in result.skipped] == [
        (
            str(fake),
            "not an image: the content is text ('not a picture'), not a format Pillow reads",
        ),
        (str(tmp_path / "gone.png"), "file not found"),
    ]
    assert sorted(warned, key=lambda e: e.path) == sorted(result.skipped, key=lambda e: e.path)
    with pytest.raises(InputFileError, match="not an image"):
        embed_files(HashEncoder(key="fake:other"), "image", [photos[0], fake], store, strict=True)


# --- the store -------------------------------------------------------------------------------


def test_schema_and_journal(store):
    assert sql(store.path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(2,)]
    assert sql(store.path, "PRAGMA journal_mode") == [("wal",)]
    tables = sql(store.path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert tables == [("embeddings",), ("file_hashes",)]
    columns = [row[1] for row in sql(store.path, "PRAGMA table_info(embeddings)")]
    assert columns[-1] == "checksum"
    store.close()
    with EmbeddingCache(store.path) as reopened:  # migrations are not applied twice
        assert reopened.stats().schema_version == 2


def test_a_newer_schema_is_refused_with_advice(tmp_path):
    path = tmp_path / "cache.sqlite"
    EmbeddingCache(path).close()
    sql(path, "PRAGMA user_version = 7")
    with pytest.raises(UclError) as caught:
        EmbeddingCache(path)
    assert str(caught.value) == (
        f"embedding cache {path} has schema version 7, newer than this ucl knows (2); upgrade "
        "ucl, or delete the file (it holds only embeddings that can be computed again)"
    )


def test_a_file_that_is_not_a_database_is_refused_with_advice(tmp_path):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UclError) as caught:
        EmbeddingCache(path)
    assert str(caught.value) == (
        f"embedding cache {path}: file is not a database; the file is damaged; delete it (it "
        "holds only embeddings that can be recomputed)"
    )


def test_vectors_round_trip_as_float32_and_dim_is_checked_on_read(store):
    items = [(key(i), unit(i)) for i in range(3)]
    assert store.put_many(items) == 3
    found = store.get_many([key(0), key(1), key(2), key(99)], dim=16)
    assert set(found) == {key(0), key(1), key(2)}
    for index in range(3):
        assert found[key(index)].dtype == np.float32
        np.testing.assert_array_equal(found[key(index)], unit(index))
    assert store.get_many([key(0)], dim=8) == {}  # stored with 16: not a hit for an 8-dim model
    # A damaged row (blob shorter than its dimension) is a miss, never a wrong vector.
    sql(store.path, "UPDATE embeddings SET vector = x'0000' WHERE content_hash = ?", (key(1)[0],))
    with pytest.warns(cache_module.CacheWarning, match="1 stored vector was damaged"):
        assert set(store.get_many([key(0), key(1)])) == {key(0)}  # without a callback


def test_a_damaged_row_is_recomputed_and_replaced(photos, store):
    encoder = HashEncoder()
    first = embed_files(encoder, "image", photos, store)
    sql(store.path, "UPDATE embeddings SET vector = x'00'")
    encoder.calls.clear()
    with pytest.warns(cache_module.CacheWarning, match="3 stored vectors were damaged"):
        again = embed_files(encoder, "image", photos, store)
    assert calls(encoder) == 3 and again.damaged == 3
    np.testing.assert_array_equal(again.vectors, first.vectors)
    encoder.calls.clear()
    embed_files(encoder, "image", photos, store)
    assert calls(encoder) == 0


def test_an_error_inside_the_transaction_stores_nothing_of_that_batch(store):
    store.put_many([(key(0), unit(0))])

    def items():
        yield key(1), unit(1)
        yield key(2), unit(2)
        yield key(3), np.full(16, np.nan, dtype=np.float32)

    with pytest.raises(ValueError, match="non-finite"):
        store.put_many(items())
    assert set(store.get_many([key(i) for i in range(4)])) == {key(0)}
    assert sql(store.path, "PRAGMA integrity_check") == [("ok",)]
    assert store.put_many([(key(1), unit(1))]) == 1  # still writable


def test_clear_all_empties_the_cache_and_the_hash_memo(photos, store):
    embed_files(HashEncoder(key="fake:a"), "image", photos, store)
    embed_files(HashEncoder(key="fake:b", dim=8), "image", photos, store)
    stats = store.stats()
    assert (stats.vectors, stats.hashed_files) == (6, 3)
    assert [(m.model, m.modality, m.dim, m.vectors, m.bytes) for m in stats.models] == [
        ("fake:a", "image", 16, 3, 3 * 16 * 4),
        ("fake:b", "image", 8, 3, 3 * 8 * 4),
    ]
    assert store.clear() == 6
    stats = store.stats()
    assert (stats.vectors, stats.hashed_files, stats.models) == (0, 0, [])
    assert store.clear() == 0


# --- processes -------------------------------------------------------------------------------


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"child exited early: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            process.communicate()
            pytest.fail("child never reached the marker")
        time.sleep(0.02)


WRITER_PRELUDE = """
    import sys, time
    from pathlib import Path
    import numpy as np
    from ucl_cli.cache import CacheKey, EmbeddingCache
    path, tag = Path(sys.argv[1] if len(sys.argv) > 1 else {path!r}), {tag!r}
    def item(i):
        return CacheKey(f"{{tag}}{{i:062x}}", "fake:hash", "p", "image"), np.full(16, i, np.float32)
"""


def test_a_process_killed_mid_transaction_leaves_a_valid_cache(tmp_path):
    path, marker = tmp_path / "cache.sqlite", tmp_path / "mid-write"
    child = _python(
        WRITER_PRELUDE.format(path=str(path), tag="k0")
        + f"""
    cache = EmbeddingCache(path)
    cache.put_many(item(i) for i in range(10))          # committed
    def slow():
        for i in range(10, 5000):
            yield item(i)
            if i == 2500:                                # half of the batch is written...
                Path({str(marker)!r}).touch()
                time.sleep(120)                          # ...when the kill arrives
    cache.put_many(slow())
    """
    )
    _wait_for(marker, child)
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL

    with EmbeddingCache(path) as store:
        assert sql(path, "PRAGMA integrity_check") == [("ok",)]
        assert sql(path, "SELECT COUNT(*) FROM embeddings") == [(10,)]
        keys = [CacheKey(f"k0{i:062x}", "fake:hash", "p", "image") for i in range(20)]
        found = store.get_many(keys, dim=16)
        assert sorted(found) == keys[:10]
        np.testing.assert_array_equal(found[keys[7]], np.full(16, 7, np.float32))
        assert store.put_many([(keys[15], unit(15))]) == 1


def test_two_processes_write_at_once(tmp_path):
    path, go = tmp_path / "fresh" / "cache.sqlite", tmp_path / "go"
    body = f"""
    while not Path({str(go)!r}).exists():
        time.sleep(0.005)
    cache = EmbeddingCache(path)                         # both create/migrate the same new file
    for batch in range(100):
        cache.put_many(item(batch * 5 + j) for j in range(5))
        assert len(cache.get_many([item(batch * 5)[0]])) == 1
    print(cache.stats().vectors >= 500)
    """
    writers = [
        _python(WRITER_PRELUDE.format(path=str(path), tag=tag) + body) for tag in ("w1", "w2")
    ]
    go.touch()
    outputs = [writer.communicate(timeout=120) for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["True", "True"]
    with EmbeddingCache(path) as store:
        assert store.stats().vectors == 1000
        assert sql(path, "PRAGMA integrity_check") == [("ok",)]


# --- the commands ----------------------------------------------------------------------------


def test_cache_commands(photos):
    runner = CliRunner()
    empty = runner.invoke(app, ["cache", "info"])
    assert empty.exit_code == 0 and empty.stdout == ""
    assert "no embedding cache yet at" in empty.stderr

    with EmbeddingCache() as store:
        embed_files(HashEncoder(key="fake:a"), "image", photos, store)
        embed_files(HashEncoder(key="fake:b", dim=8), "image", photos[:2], store)

    info = runner.invoke(app, ["cache", "info", "--format", "table"])
    assert info.exit_code == 0, info.output
    rows = [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in info.stdout.splitlines()
        if "fake:" in line
    ]
    assert rows == [
        ["fake:a", "image", "16", "3", "192 B"],
        ["fake:b", "image", "8", "2", "64 B"],
    ]
    assert "5 vectors" in info.stdout and info.stderr == ""

    unknown = runner.invoke(app, ["cache", "clear", "--model", "fake:zzz"])
    assert unknown.exit_code == 0
    assert "no cached vectors for model fake:zzz (cached models: fake:a, fake:b)" in unknown.stderr

    one = runner.invoke(app, ["cache", "clear", "--model", "fake:a"])
    assert one.exit_code == 0 and one.stdout == ""
    assert f"removed 3 cached vectors of fake:a from {config.cache_path()}" in " ".join(
        one.stderr.split()
    )
    with EmbeddingCache() as store:
        assert [(m.model, m.vectors) for m in store.stats().models] == [("fake:b", 2)]

    everything = runner.invoke(app, ["cache", "clear"])
    assert everything.exit_code == 0
    assert "removed 2 cached vectors from" in everything.stderr


def test_cache_errors_reach_the_user_as_one_line(tmp_path):
    config.cache_path().parent.mkdir(parents=True, exist_ok=True)
    config.cache_path().write_bytes(b"garbage" * 100)
    result = CliRunner().invoke(app, ["cache", "info"])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())  # Rich wraps long lines at the console width
    assert message == (
        f"ucl: error: embedding cache {config.cache_path()}: file is not a database; the file is "
        "damaged; delete it (it holds only embeddings that can be recomputed)"
    )


# --- damaged data ----------------------------------------------------------------------------


@pytest.fixture
def warned() -> list[str]:
    """Warnings the cache reports (the library's callback; it never prints)."""
    return []


def open_store(path: Path, warned: list[str]) -> EmbeddingCache:
    store = EmbeddingCache(path)
    store.on_warning = warned.append  # warnings at open come from `open_cache`'s callback
    return store


def flip_bit_of(path: Path, vector: np.ndarray) -> None:
    """Flip the lowest bit of the first float of `vector` where the file stores it: the value
    stays finite and one ulp off, as a bit rotting on disk would leave it."""
    raw = bytearray(path.read_bytes())
    at = raw.find(vector.astype("<f4").tobytes())
    assert at >= 0 and raw.find(vector.astype("<f4").tobytes(), at + 1) < 0
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_bit_flipped_vector_in_the_file_is_a_miss_recomputed_and_reported_once(photos, tmp_path):
    path, encoder = tmp_path / "cache.sqlite", HashEncoder()
    with EmbeddingCache(path) as store:
        first = embed_files(encoder, "image", photos, store)
    assert not Path(f"{path}-wal").exists()  # checkpointed into the main file on close
    flip_bit_of(path, first.vectors[1])
    flip_bit_of(path, first.vectors[2])
    warned: list[str] = []
    encoder.calls.clear()
    with open_store(path, warned) as store:
        again = embed_files(encoder, "image", photos, store)
    np.testing.assert_array_equal(again.vectors, first.vectors)
    assert calls(encoder) == 2 and (again.cached, again.computed, again.damaged) == (1, 2, 2)
    assert warned == [
        f"embedding cache {path}: 2 stored vectors were damaged (checksum mismatch); they are "
        "recomputed and replaced (if this recurs, check the disk)"
    ]
    encoder.calls.clear()
    with open_store(path, warned) as store:  # replaced: hits again, nothing more to report
        np.testing.assert_array_equal(
            embed_files(encoder, "image", photos, store).vectors, first.vectors
        )
    assert calls(encoder) == 0 and len(warned) == 1


def test_a_non_finite_vector_on_read_is_a_miss(photos, store, warned):
    encoder = HashEncoder()
    first = embed_files(encoder, "image", photos, store)
    nan = np.full(16, np.nan, dtype="<f4").tobytes()
    sql(store.path, "UPDATE embeddings SET vector = ?", (nan,))
    encoder.calls.clear()
    store.on_warning = warned.append
    again = embed_files(encoder, "image", photos, store)
    assert calls(encoder) == 3 and np.isfinite(again.vectors).all()
    np.testing.assert_array_equal(again.vectors, first.vectors)
    # Even with a checksum that matches (a row forged, or written by a buggy ucl): not used.
    row = key(7)
    sql(
        store.path,
        "INSERT INTO embeddings (content_hash, model, preprocessing, modality, dim, vector, "
        "created_ns, checksum) VALUES (?, ?, ?, ?, 16, ?, 0, ?)",
        (*row, nan, cache_module._checksum(row, nan)),
    )
    assert store.get_many([row], dim=16) == {}
    assert store.damaged == 4


def overwrite_page(path: Path, table: str) -> None:
    """Replace the page holding `table`'s rows with random bytes."""
    page_size = sql(path, "PRAGMA page_size")[0][0]
    root = sql(path, "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))[0][0]
    raw = bytearray(path.read_bytes())
    start = (root - 1) * page_size
    raw[start : start + page_size] = np.random.default_rng(0).bytes(page_size)
    path.write_bytes(bytes(raw))


def test_an_overwritten_page_degrades_to_running_without_the_file(photos, tmp_path, warned):
    path, encoder = tmp_path / "cache.sqlite", HashEncoder()
    with EmbeddingCache(path) as store:
        first = embed_files(encoder, "image", photos, store)
    overwrite_page(path, "embeddings")
    encoder.calls.clear()
    with open_store(path, warned) as store:
        again = embed_files(encoder, "image", photos, store)
        assert calls(encoder) == 3
        np.testing.assert_array_equal(again.vectors, first.vectors)
        encoder.calls.clear()
        np.testing.assert_array_equal(  # the rest of this run reuses what it computed
            embed_files(encoder, "image", photos, store).vectors, first.vectors
        )
        assert calls(encoder) == 0
    assert warned == [
        f"embedding cache {path}: database disk image is malformed; the file is damaged: "
        "running without it (delete it; it holds only embeddings that can be recomputed)"
    ]
    assert path.exists()  # set aside, not deleted: the user decides


def test_a_damaged_schema_page_degrades_at_open(photos, tmp_path, warned):
    path = tmp_path / "cache.sqlite"
    EmbeddingCache(path).close()
    raw = bytearray(path.read_bytes())
    raw[100:400] = np.random.default_rng(1).bytes(300)  # page 1, after the file header
    path.write_bytes(bytes(raw))
    with cache_module.open_cache(path, on_warning=warned.append) as store:
        assert isinstance(store, cache_module.MemoryCache)
        assert embed_files(HashEncoder(), "image", photos, store).computed == 3
    assert len(warned) == 1 and warned[0].startswith(f"embedding cache {path}: ")
    assert "running without it" in warned[0]


# --- read-only caches and no cache -----------------------------------------------------------


@pytest.fixture
def make_read_only():
    """Make files and folders really unwritable for this process, root included: chmod for a
    user; for root, whom permissions do not stop, the immutable flag (`chattr +i`), which the
    kernel enforces for everyone. Skips where neither is possible (root on a file system without
    the flag, or without CAP_LINUX_IMMUTABLE); always undone, so the folders can be deleted."""
    undo: list = []

    def protect(*paths: Path) -> None:
        for path in paths:
            if os.geteuid() == 0:
                try:
                    done = subprocess.run(["chattr", "+i", path], capture_output=True, text=True)
                except FileNotFoundError:
                    pytest.skip("running as root without chattr: cannot make a file read-only")
                if done.returncode != 0:
                    pytest.skip(f"running as root, and chattr +i fails: {done.stderr.strip()}")
                undo.append(lambda p=path: subprocess.run(["chattr", "-i", p], check=True))
            else:
                mode = path.stat().st_mode
                path.chmod(0o555 if path.is_dir() else 0o444)
                undo.append(lambda p=path, m=mode: p.chmod(m))
            with pytest.raises(PermissionError):  # the premise of the test: really read-only
                if path.is_dir():
                    (path / "probe").touch()
                else:
                    path.open("r+b").close()

    yield protect
    for step in reversed(undo):
        step()


def test_a_read_only_cache_file_serves_its_vectors_and_keeps_new_ones_in_memory(
    photos, tmp_path, make_read_only, warned
):
    path, encoder = tmp_path / "cache.sqlite", HashEncoder()
    with EmbeddingCache(path) as store:
        first = embed_files(encoder, "image", photos[:2], store)
    make_read_only(path)
    before = path.read_bytes()
    encoder.calls.clear()
    with open_store(path, warned) as store:
        result = embed_files(encoder, "image", photos, store)
        assert (result.cached, result.computed, calls(encoder)) == (2, 1, 1)
        np.testing.assert_array_equal(result.vectors[:2], first.vectors)
        again = embed_files(encoder, "image", photos, store)  # the new one, from memory
        assert (again.cached, calls(encoder)) == (3, 1)
        np.testing.assert_array_equal(again.vectors, result.vectors)
    assert warned == [f"embedding cache {path} is read-only: new vectors are kept in memory only"]
    assert path.read_bytes() == before


def test_a_read_only_cache_folder_is_read_without_writing(photos, tmp_path, make_read_only, warned):
    folder = tmp_path / "shared"
    path, encoder = folder / "cache.sqlite", HashEncoder()
    with EmbeddingCache(path) as store:
        first = embed_files(encoder, "image", photos[:2], store)
    make_read_only(path, folder)
    encoder.calls.clear()
    with EmbeddingCache(path, on_warning=warned.append) as store:
        assert store.read_only
        result = embed_files(encoder, "image", photos, store)
        assert store.stats().vectors == 2
    assert (result.cached, result.computed) == (2, 1)
    np.testing.assert_array_equal(result.vectors[:2], first.vectors)
    assert warned == [f"embedding cache {path} is read-only: new vectors are kept in memory only"]
    assert sorted(p.name for p in folder.iterdir()) == ["cache.sqlite"]


def test_a_cache_that_cannot_be_created_is_replaced_by_memory(photos, tmp_path, make_read_only):
    folder = tmp_path / "shared"
    folder.mkdir()
    make_read_only(folder)
    warned: list[str] = []
    with cache_module.open_cache(folder / "cache.sqlite", on_warning=warned.append) as store:
        assert isinstance(store, cache_module.MemoryCache)
        assert embed_files(HashEncoder(), "image", photos, store).computed == 3
    assert len(warned) == 1
    assert warned[0].startswith(f"cannot create the embedding cache {folder / 'cache.sqlite'}")
    assert warned[0].endswith("new vectors are kept in memory only")


def test_a_full_disk_keeps_new_vectors_in_memory(photos, store, warned):
    store.on_warning = warned.append
    embed_files(HashEncoder(), "image", photos[:1], store)
    pages = sql(store.path, "PRAGMA page_count")[0][0]
    store._connection.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL from now on
    encoder = HashEncoder(key="fake:other", dim=512)
    result = embed_files(encoder, "image", photos, store)
    assert result.computed == 3
    assert warned == [
        f"embedding cache {store.path}: database or disk is full: new vectors are kept in "
        "memory only (free space, or `ucl cache clear`)"
    ]
    encoder.calls.clear()
    assert embed_files(encoder, "image", photos, store).cached == 3 and calls(encoder) == 0


def test_open_cache_without_a_cache(photos, monkeypatch):
    for disabled in (cache_module.open_cache(enabled=False), _with_env(monkeypatch)):
        with disabled as store:
            assert isinstance(store, cache_module.MemoryCache) and store.path is None
            encoder = HashEncoder()
            assert embed_files(encoder, "image", photos, store).computed == 3
            assert embed_files(encoder, "image", photos, store).cached == 3
    assert not config.cache_path().exists()
    monkeypatch.setenv("UCL_NO_CACHE", "0")
    with cache_module.open_cache() as store:
        assert not isinstance(store, cache_module.MemoryCache)
        assert store.path == config.cache_path()


def _with_env(monkeypatch) -> EmbeddingCache:
    monkeypatch.setenv("UCL_NO_CACHE", "1")
    return cache_module.open_cache()


# --- weights ---------------------------------------------------------------------------------


def test_vectors_are_keyed_by_the_weights_that_made_them(photos, store):
    stand_in, real = HashEncoder(), HashEncoder()  # one registry key, two weight files
    stand_in.weights_id = "blob:stand-in"
    real.weights_id = "blob:real"
    for index, path in enumerate(photos):
        real.plant(load_image(path), unit(100 + index))
    expected = real.embed("image", [load_image(path) for path in photos])
    real.calls.clear()
    assert not np.allclose(embed_files(stand_in, "image", photos, store).vectors, expected)
    result = embed_files(real, "image", photos, store)
    assert calls(real) == 3 and result.cached == 0
    np.testing.assert_array_equal(result.vectors, expected)
    same = HashEncoder()
    same.weights_id = "blob:real"
    assert embed_files(same, "image", photos, store).cached == 3 and calls(same) == 0
    anonymous = HashEncoder()  # no weights_id (no attribute at all): its own vectors
    assert embed_files(anonymous, "image", photos, store).cached == 0
    # Without a weights_id the digest is the one it always was: no needless misses.
    assert cache_module.encoder_digest(anonymous) == preprocessing_digest(
        anonymous.preprocessing, loader_version=LOADER_VERSION
    )


# --- the commands: no cache, a read-only or damaged cache ------------------------------------

PLANTED_MODELS = (
    "--image-text-model",
    "planted:image-text",
    "--text-audio-model",
    "planted:text-audio",
)


@pytest.fixture
def planted(plugin, tmp_path) -> Path:
    """A planted bank `planted` and, under the returned folder, an image and six audio clips
    (the planted backend's concepts), with a manifest pairing them for `ucl eval`."""
    import soundfile as sf

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"concept {j}" for j in range(6)) + "\n")
    built = CliRunner().invoke(
        app, ["index", str(corpus), "--bank", "planted", *PLANTED_MODELS, "--device", "cpu"]
    )
    assert built.exit_code == 0, built.output
    media = tmp_path / "media"
    (media / "audio").mkdir(parents=True)
    (media / "images").mkdir()
    rows = ["image,audio"]
    for j in range(6):
        Image.new("RGB", (16, 16), (10 * j,) * 3).save(media / "images" / f"c{j}.png")
        clip = np.full(4000, (j + 1) / 20, dtype=np.float32)
        sf.write(media / "audio" / f"c{j}.wav", clip, 16_000, subtype="FLOAT")
        rows.append(f"images/c{j}.png,audio/c{j}.wav")
    (media / "pairs.csv").write_text("\n".join(rows) + "\n")
    return media


def ucl(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def query_args(media: Path) -> list[object]:
    return [
        "query",
        media / "images" / "c1.png",
        "--candidates",
        media / "audio",
        "--bank",
        "planted",
        "--device",
        "cpu",
        "--format",
        "jsonl",
    ]


def eval_args(media: Path) -> list[object]:
    return [
        "eval",
        media / "pairs.csv",
        "--bank",
        "planted",
        "--device",
        "cpu",
        "--methods",
        "lse",
        "--trials",
        2,
        "--candidates",
        3,
    ]


def messages(result) -> str:
    return " ".join(result.stderr.split())  # Rich wraps long lines at the console width


def test_no_cache_flag_and_variable_embed_everything_and_write_nothing(planted, monkeypatch):
    for _ in range(2):
        queried = ucl(*query_args(planted), "--no-cache")
        assert queried.exit_code == 0, queried.output
        assert "embedded 7 files, 0 from the cache" in messages(queried)
        evaluated = ucl(*eval_args(planted), "--no-cache")
        assert evaluated.exit_code == 0, evaluated.output
        assert "embedded 12 files, 0 from the cache" in messages(evaluated)
    assert not config.cache_path().exists()
    monkeypatch.setenv("UCL_NO_CACHE", "1")
    queried = ucl(*query_args(planted))
    assert queried.exit_code == 0, queried.output
    assert "embedded 7 files, 0 from the cache" in messages(queried)
    assert not config.cache_path().exists()
    assert "--no-cache" in ucl("query", "--help").stdout
    assert "--no-cache" in ucl("eval", "--help").stdout


def test_query_over_a_read_only_cache_uses_it_and_warns_once(planted, make_read_only):
    first = ucl(*query_args(planted))
    assert first.exit_code == 0, first.output
    path = config.cache_path()
    make_read_only(path, path.parent)  # UCL_HOME itself: no file can be added next to it
    again = ucl(*query_args(planted))
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout
    text = messages(again)
    assert "embedded 0 files, 7 from the cache" in text
    warning = f"ucl: embedding cache {path} is read-only: new vectors are kept in memory only"
    assert text.count(warning) == 1 and text.count("embedding cache") == 1


def test_query_without_a_writable_home_runs_without_a_cache(planted, make_read_only):
    home = config.cache_path().parent
    make_read_only(home)
    result = ucl(*query_args(planted))
    assert result.exit_code == 0, result.output
    text = messages(result)
    assert f"ucl: cannot create the embedding cache {config.cache_path()}" in text
    assert "embedded 7 files, 0 from the cache" in text
    assert not config.cache_path().exists()


def test_query_and_eval_over_a_damaged_cache_run_without_it(planted):
    config.cache_path().write_bytes(b"garbage" * 100)
    for args in (query_args(planted), eval_args(planted)):
        result = ucl(*args)
        assert result.exit_code == 0, result.output
        text = messages(result)
        assert (
            f"ucl: embedding cache {config.cache_path()}: file is not a database; the file is "
            "damaged: running without it (delete it; it holds only embeddings that can be "
            "recomputed)"
        ) in text
        assert "0 from the cache" in text
    assert config.cache_path().read_bytes() == b"garbage" * 100


def test_vectors_cached_before_checksums_are_recomputed_once(photos, tmp_path):
    """A cache written by the previous schema (no checksums): its rows cannot be verified, so
    they are misses, replaced as they are recomputed; `ucl cache info` says how many remain."""
    path, encoder = config.cache_path(), HashEncoder()
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as connection, connection:
        for statement in cache_module.MIGRATIONS[0]:
            connection.execute(statement)
        connection.execute("PRAGMA user_version = 1")
    with EmbeddingCache(path) as store:
        digest = preprocessing_digest(encoder.preprocessing, loader_version=LOADER_VERSION)
        hashed = store.hash_files(photos)
        for index, photo in enumerate(photos):
            sql(  # as the previous ucl wrote them
                path,
                "INSERT INTO embeddings (content_hash, model, preprocessing, modality, dim, "
                "vector, created_ns) VALUES (?, ?, ?, 'image', 16, ?, 0)",
                (hashed.digests[photo], encoder.key, digest, unit(index).tobytes()),
            )
    info = ucl("cache", "info", "--format", "table")
    assert info.exit_code == 0, info.output
    assert "3 vectors" in info.stdout and "3 from before checksums" in " ".join(info.stdout.split())
    with EmbeddingCache(path) as store:
        assert store.stats().unverified == 3
        result = embed_files(encoder, "image", photos[:2], store)
        assert result.computed == 2 and result.damaged == 0  # expected misses, not damage
        assert store.stats().unverified == 1
    assert sql(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(2,)]
