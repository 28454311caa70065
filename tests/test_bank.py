"""The on-disk bank: alignment, round trips, model checks, appends, crashes, concurrency, search."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import HashEncoder

from ucl_cli.bank import (
    BankItem,
    IndexOptions,
    ModelRecord,
    audioset_labels,
    audioset_texts,
    builtin_bank,
    builtin_bank_name,
    index_items,
    load_bank,
    save_bank,
    text_item,
)
from ucl_cli.bank.items import KeySet
from ucl_cli.bank.staging import Staging
from ucl_cli.bank.writer import BankWriter, WriterOptions
from ucl_cli.config import banks_dir
from ucl_cli.errors import BankError, UsageError

TESTS = Path(__file__).parent
REPO = TESTS.parent


def encoders(dim_a: int = 16, dim_b: int = 8) -> list[HashEncoder]:
    return [HashEncoder(key="fake:clip", dim=dim_a), HashEncoder(key="fake:clap", dim=dim_b)]


def items_of(texts):
    return [text_item(text) for text in texts]


def corpus(count: int, start: int = 0) -> list[str]:
    return [f"caption number {i}" for i in range(start, start + count)]


def batches_embedded(encoder: HashEncoder) -> list[int]:
    return [size for _, size in encoder.calls]


class FailingEncoder(HashEncoder):
    """Raises on its `fail_on`-th batch, like a crash or an out-of-memory in the middle of a run."""

    def __init__(self, fail_on: int, **kwargs):
        super().__init__(**kwargs)
        self.fail_on = fail_on

    def _embed_batch(self, modality, batch):
        if len(self.calls) + 1 == self.fail_on:
            self.calls.append((modality, -len(batch)))
            raise RuntimeError("simulated crash")
        return super()._embed_batch(modality, batch)


# --- layout, alignment, round trip -------------------------------------------------------------


def test_rows_are_aligned_across_models_and_items(tmp_path):
    models = encoders()
    texts = [*corpus(50), "caption number 3", "  caption   number 7 "]
    report = index_items(tmp_path / "b", models, items_of(texts), IndexOptions(batch_size=8))
    assert (report.added, report.duplicates, report.total) == (50, 2, 50)
    with load_bank(tmp_path / "b") as bank:
        stored = [item.text for item in bank.items()]
        assert stored == corpus(50)
        for encoder in models:
            expected = HashEncoder(key=encoder.key, dim=encoder.dim).embed("text", stored)
            np.testing.assert_array_equal(bank.vectors(encoder), expected)
        assert bank.texts([49, 0]) == ["caption number 49", "caption number 0"]
        assert bank.item(3) == text_item("caption number 3")


def test_save_and_load_round_trip_with_checksums(tmp_path):
    rng = np.random.default_rng(0)
    matrices = [rng.standard_normal((40, d)).astype(np.float32) for d in (6, 4)]
    matrices = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in matrices]
    items = items_of(corpus(40))
    models = [ModelRecord("m:a", 6, 100.0, {"size": 224}), ModelRecord("m:b", 4, 33.4)]
    save_bank(tmp_path / "b", items, matrices, models).close()

    with load_bank(tmp_path / "b") as bank:
        assert list(bank.items()) == items
        assert bank.models == tuple(models)
        for position, matrix in enumerate(matrices):
            np.testing.assert_array_equal(bank.vectors(models[position].key), matrix)
        manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
        for name, record in manifest["files"].items():
            data = (tmp_path / "b" / name).read_bytes()
            assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        assert (manifest["count"], manifest["faiss_index"], manifest["modality"]) == (
            40,
            "Flat",
            "text",
        )
        assert manifest["models"][1]["logit_scale"] == 33.4
        assert np.load(tmp_path / "b" / manifest["models"][0]["vectors"]).shape == (40, 6)


def test_a_changed_byte_is_caught_by_the_checksum(tmp_path):
    model = ModelRecord("m", 2, 1.0)
    save_bank(tmp_path / "b", items_of(["a", "b"]), [np.eye(2, dtype=np.float32)], [model]).close()
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    vectors = tmp_path / "b" / manifest["models"][0]["vectors"]
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF
    vectors.write_bytes(bytes(data))
    with pytest.raises(BankError) as err:
        load_bank(tmp_path / "b")
    expected = manifest["files"][vectors.name]["sha256"][:12]
    assert f"is corrupt: {vectors.name} has SHA-256 " in str(err.value)
    assert str(err.value).endswith(f"the manifest says {expected}…")
    load_bank(tmp_path / "b", verify="on_read").close()  # sizes and shapes still agree


def test_damaged_banks_are_refused_in_one_sentence(tmp_path):
    with pytest.raises(BankError) as err:
        load_bank(tmp_path / "nothing")
    assert str(err.value) == (
        f"no bank at {tmp_path / 'nothing'} (manifest.json is missing); build one with `ucl index`"
    )
    bank = tmp_path / "b"
    save_bank(bank, items_of(["a"]), [np.ones((1, 1), np.float32)], [ModelRecord("m", 1, 1.0)])
    manifest = json.loads((bank / "manifest.json").read_text())
    (bank / manifest["items"]).write_text("")
    with pytest.raises(BankError, match=r"items\.000001\.jsonl has 0 bytes; the manifest says \d+"):
        load_bank(bank)
    (bank / manifest["items"]).unlink()
    with pytest.raises(BankError, match=r"is incomplete: items\.000001\.jsonl is missing"):
        load_bank(bank)
    (bank / "manifest.json").write_text(json.dumps({**manifest, "format_version": 9}))
    with pytest.raises(BankError, match="uses format version 9; this ucl reads versions up to 1"):
        load_bank(bank)
    (bank / "manifest.json").write_text("{")
    with pytest.raises(BankError, match="is corrupt: not valid JSON"):
        load_bank(bank)


# --- model checks ------------------------------------------------------------------------------


def test_query_with_other_models_is_refused_naming_both(tmp_path):
    index_items(tmp_path / "b", encoders(), items_of(corpus(5)))
    with load_bank(tmp_path / "b") as bank:
        bank.check_models(encoders())
        bank.check_models(list(reversed(encoders())))  # order does not matter
        with pytest.raises(BankError) as err:
            bank.check_models([HashEncoder(key="fake:other", dim=16), encoders()[1]])
        assert str(err.value) == (
            "bank b was built with fake:clip (dim 16) and fake:clap (dim 8); "
            "the query uses fake:other (dim 16) and fake:clap (dim 8)"
        )
        with pytest.raises(BankError) as err:
            bank.check_models([HashEncoder(key="fake:clip", dim=32)])
        assert str(err.value) == (
            "bank b was built with fake:clip (dim 16); the query's encoder fake:clip has dim 32"
        )
        changed = HashEncoder(key="fake:clip", dim=16, sample_rate=48_000)
        with pytest.raises(BankError, match="embedded fake:clip with preprocessing"):
            bank.check_models([changed])
        rescaled = HashEncoder(key="fake:clip", dim=16, logit_scale=55.0)
        bank.check_models([rescaled])  # a different logit scale does not change the vectors


def test_indexing_into_a_bank_of_other_models_is_refused(tmp_path):
    index_items(tmp_path / "b", encoders(), items_of(corpus(5)))
    with pytest.raises(BankError) as err:
        index_items(tmp_path / "b", encoders(dim_b=12), items_of(corpus(5, 5)))
    assert str(err.value) == (
        f"bank {tmp_path / 'b'} was built with fake:clap (dim 8); this run's encoder fake:clap "
        "has dim 12"
    )
    with pytest.raises(BankError, match="this run uses fake:clip"):
        index_items(tmp_path / "b", encoders()[:1], items_of(corpus(5, 5)))
    with pytest.raises(
        UsageError, match="embeds only image, text, so it cannot index a bank of audio clips"
    ):
        index_items(
            tmp_path / "c",
            [HashEncoder(key="fake:clip", modalities=("text", "image"))],
            [],
            IndexOptions(modality="audio"),
        )


# --- appends and crashes -----------------------------------------------------------------------


def test_appending_a_grown_corpus_embeds_only_the_new_items(tmp_path):
    index_items(tmp_path / "b", encoders(), items_of(corpus(30)), IndexOptions(batch_size=10))
    models = encoders()
    report = index_items(tmp_path / "b", models, items_of(corpus(45)), IndexOptions(batch_size=10))
    assert (report.added, report.duplicates, report.total) == (15, 30, 45)
    assert batches_embedded(models[0]) == [10, 5]
    assert batches_embedded(models[1]) == [10, 5]
    with load_bank(tmp_path / "b") as bank:
        assert [item.text for item in bank.items()] == corpus(45)
        fresh = HashEncoder(key="fake:clap", dim=8).embed("text", corpus(45))
        np.testing.assert_array_equal(bank.vectors("fake:clap"), fresh)


def test_a_crash_after_k_batches_keeps_them_and_the_rerun_does_not_redo_them(tmp_path):
    crashing = [FailingEncoder(3, key="fake:clip", dim=16), HashEncoder(key="fake:clap", dim=8)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        index_items(tmp_path / "b", crashing, items_of(corpus(50)), IndexOptions(batch_size=10))
    with load_bank(tmp_path / "b") as bank:
        assert len(bank) == 20  # the two finished batches, published on the way out
        assert [item.text for item in bank.items()] == corpus(20)
        assert bank.vectors("fake:clap").shape == (20, 8)
    models = encoders()
    report = index_items(tmp_path / "b", models, items_of(corpus(50)), IndexOptions(batch_size=10))
    assert (report.added, report.duplicates, report.total) == (30, 20, 50)
    assert batches_embedded(models[0]) == [10, 10, 10]
    with load_bank(tmp_path / "b") as bank:
        np.testing.assert_array_equal(
            bank.vectors("fake:clip"),
            HashEncoder(key="fake:clip", dim=16).embed("text", corpus(50)),
        )


def test_staged_rows_of_a_killed_run_are_recovered_and_a_torn_batch_is_cut(tmp_path):
    bank = tmp_path / "b"
    models = [ModelRecord.from_encoder(e) for e in encoders()]
    writer = BankWriter(bank, models, WriterOptions(commit_seconds=0))
    writer.__enter__()
    for start in (0, 10):
        texts = corpus(10, start)
        writer.add(items_of(texts), [e.embed("text", texts) for e in encoders()])
    writer.staging.close()
    with open(writer.staging.items_path, "ab") as torn:  # a batch the kill interrupted
        torn.write(b'{"id": "x", "te')
    with open(writer.staging.vectors_path(0), "ab") as torn:
        torn.write(b"\0" * 20)
    writer._lock.release()  # what the kernel does for a killed process

    assert Staging.read_state(bank).rows == 20
    with pytest.raises(BankError, match=r"manifest\.json is missing"):
        load_bank(bank)  # nothing was published yet
    again = encoders()
    report = index_items(bank, again, items_of(corpus(25)), IndexOptions(batch_size=10))
    assert (report.resumed, report.added, report.duplicates, report.total) == (20, 5, 20, 25)
    assert batches_embedded(again[0]) == [5]
    with load_bank(bank) as loaded:
        assert [item.text for item in loaded.items()] == corpus(25)
        np.testing.assert_array_equal(
            loaded.vectors("fake:clip"),
            HashEncoder(key="fake:clip", dim=16).embed("text", corpus(25)),
        )
    assert not (bank / ".staging").exists()


def test_large_runs_publish_along_the_way(tmp_path):
    published = []

    class Listener:
        def waiting(self, holder): ...
        def resumed(self, rows): ...
        def progress(self, report): ...
        def skipped(self, name, reason): ...
        def publishing(self, rows):
            published.append(rows)

    options = IndexOptions(batch_size=10, publish_every=20)
    index_items(tmp_path / "b", encoders(), items_of(corpus(100)), options, Listener())
    # publish when staged >= max(20, published so far): 20, 40, 80, then the rest at the end
    assert published == [20, 40, 80, 100]
    assert len(load_bank(tmp_path / "b")) == 100


def test_an_open_bank_survives_a_publish_that_deletes_its_files(tmp_path):
    index_items(tmp_path / "b", encoders(), items_of(corpus(10)))
    bank = load_bank(tmp_path / "b")
    index_items(tmp_path / "b", encoders(), items_of(corpus(20)))
    old_files = set(bank.manifest.files)
    assert not old_files & set(os.listdir(tmp_path / "b"))  # the old generation is gone
    assert len(bank) == 10 and [item.text for item in bank.items()] == corpus(10)
    assert bank.search("fake:clip", bank.vectors("fake:clip")[:2], 1)[1][:, 0].tolist() == [0, 1]
    bank.close()
    assert len(load_bank(tmp_path / "b")) == 20


def test_writer_refuses_rows_that_are_not_unit_norm(tmp_path):
    with pytest.raises(BankError) as err:
        save_bank(
            tmp_path / "b",
            items_of(["a", "b"]),
            [np.array([[1.0, 0.0], [3.0, 4.0]], np.float32)],
            [ModelRecord("m", 2, 1.0)],
        )
    assert str(err.value) == (
        "m gave a vector of norm 5 for batch row 1; bank rows must be finite and unit norm"
    )


def test_a_second_writer_fails_at_once_with_no_wait(tmp_path):
    models = [ModelRecord.from_encoder(e) for e in encoders()]
    with BankWriter(tmp_path / "b", models, WriterOptions()), pytest.raises(BankError) as err:
        index_items(tmp_path / "b", encoders(), items_of(corpus(3)), IndexOptions(lock_timeout=0))
    assert str(err.value) == (
        f"bank {tmp_path / 'b'} is being written by pid {os.getpid()}; wait for it to finish "
        "(or let this run wait for it)"
    )


# --- processes: SIGKILL and concurrent writers -------------------------------------------------

DRIVER = """
import json, sys, time
sys.path.insert(0, {tests!r})
from fakes import HashEncoder
from ucl_cli.bank import IndexOptions, index_items, text_item

bank, start, stop, delay, publish_every = sys.argv[1], *map(float, sys.argv[2:])

class Slow(HashEncoder):
    def _embed_batch(self, modality, batch):
        time.sleep(delay)
        return super()._embed_batch(modality, batch)

models = [Slow(key="fake:clip", dim=16), Slow(key="fake:clap", dim=8)]
texts = (text_item(f"caption number {{i}}") for i in range(int(start), int(stop)))
options = IndexOptions(batch_size=10, publish_every=int(publish_every), commit_seconds=0)
report = index_items(bank, models, texts, options)
print(json.dumps({{"added": report.added, "resumed": report.resumed, "total": report.total}}))
"""


def run_driver(tmp_path, bank, start, stop, delay=0.0, publish_every=100_000):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(TESTS)))
    args = [sys.executable, str(script), str(bank), str(start), str(stop), str(delay)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([*args, str(publish_every)], env=env, stdout=subprocess.PIPE, text=True)


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigkill_mid_index_leaves_a_valid_bank_and_the_rerun_finishes(tmp_path):
    bank = tmp_path / "b"
    process = run_driver(tmp_path, bank, 0, 300, delay=0.05, publish_every=20)

    def published_and_staged():
        state = Staging.read_state(bank)
        return state is not None and state.base_generation >= 1 and state.rows >= 10

    wait_for(published_and_staged)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with load_bank(bank) as killed:  # valid, at its last published state
        published, generation = len(killed), killed.manifest.generation
        assert published >= 20 and published % 10 == 0
        assert [item.text for item in killed.items()] == corpus(published)
    # staged rows count if they extend that state (a kill in the middle of a publish leaves
    # staging that the new manifest already holds, which the next run discards)
    state = Staging.read_state(bank)
    staged = state.rows if state and state.base_generation == generation else 0
    models = encoders()
    report = index_items(bank, models, items_of(corpus(300)), IndexOptions(batch_size=10))
    assert report.resumed == staged and report.resumed % 10 == 0
    assert report.added == 300 - published - staged
    assert sum(batches_embedded(models[0])) == report.added  # nothing embedded twice
    with load_bank(bank) as done:
        assert [item.text for item in done.items()] == corpus(300)
        np.testing.assert_array_equal(
            done.vectors("fake:clap"),
            HashEncoder(key="fake:clap", dim=8).embed("text", corpus(300)),
        )


def test_two_concurrent_writers_leave_every_item_once(tmp_path):
    bank = tmp_path / "b"
    first = run_driver(tmp_path, bank, 0, 120, delay=0.01)
    second = run_driver(tmp_path, bank, 60, 180, delay=0.01)
    reports = [json.loads(p.communicate(timeout=120)[0]) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    # whichever got the lock first added its 120; the other waited, then added only its 60 new
    assert sorted(r["added"] for r in reports) == [60, 120]
    assert sorted(r["total"] for r in reports) == [120, 180]
    with load_bank(bank) as done:
        texts = [item.text for item in done.items()]
        assert sorted(texts) == sorted(corpus(180)) and len(set(texts)) == 180
        np.testing.assert_array_equal(
            done.vectors("fake:clip"), HashEncoder(key="fake:clip", dim=16).embed("text", texts)
        )


# --- search ------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW16"])
def test_faiss_top_k_matches_brute_force(tmp_path, factory):
    models = encoders(dim_a=12)
    index_items(
        tmp_path / "b",
        models,
        items_of(corpus(600)),
        IndexOptions(batch_size=200, faiss_index=factory),
    )
    queries = HashEncoder(key="q", dim=12).embed("text", [f"query {i}" for i in range(20)])
    with load_bank(tmp_path / "b") as bank:
        assert bank.manifest.faiss_index == factory
        scores, rows = bank.search("fake:clip", queries, 5, nprobe=8)
        exact = queries @ bank.vectors("fake:clip").T
        expected = np.argsort(-exact, axis=1)[:, :5]
        if factory == "HNSW16":  # approximate: most of the true top 5 is found
            recall = np.mean(
                [len(set(r) & set(e)) / 5 for r, e in zip(rows, expected, strict=True)]
            )
            assert recall >= 0.9
        else:
            np.testing.assert_array_equal(rows, expected)
            np.testing.assert_allclose(scores, np.take_along_axis(exact, expected, 1), atol=1e-5)


def test_auto_index_and_an_unknown_factory(tmp_path):
    from ucl_cli.bank.search_index import choose_factory

    assert choose_factory("auto", 1000) == "Flat"
    assert choose_factory("auto", 100_000) == "Flat"
    assert choose_factory("auto", 1_000_000) == "IVF4096,Flat"
    assert choose_factory("auto", 4_000_000) == "IVF8192,Flat"
    with pytest.raises(UsageError, match="FAISS cannot build index 'Nonsense'"):
        index_items(
            tmp_path / "b", encoders(), items_of(corpus(3)), IndexOptions(faiss_index="Nonsense")
        )
    assert not (tmp_path / "b" / "manifest.json").exists()


# --- the built-in bank and small parts ---------------------------------------------------------


def test_audioset_labels_ship_with_the_package():
    labels = audioset_labels()
    assert len(labels) == 527 == len(set(labels))
    assert labels[0] == "Speech" and labels[-1] == "Field recording"
    texts = audioset_texts()
    assert len(texts) == 1054
    assert texts[0] == "the sound of Speech" and texts[527] == "Speech"


def test_builtin_bank_is_built_once_per_model_pair(tmp_path):
    models = encoders()
    bank = builtin_bank(models)
    assert bank.path == banks_dir() / builtin_bank_name(models)
    assert bank.name.startswith("audioset-") and len(bank) == 1054
    assert sum(batches_embedded(models[0])) == 1054
    bank.close()
    again = encoders()
    builtin_bank(list(reversed(again))).close()
    assert again[0].calls == [] and again[1].calls == []  # cached
    other = [HashEncoder(key="fake:clip", dim=16), HashEncoder(key="fake:clap2", dim=8)]
    assert builtin_bank_name(other) != builtin_bank_name(models)


def test_keyset_membership_across_merges():
    keys = KeySet()
    keys.MERGE_AT = 7
    values = [f"{i * 2654435761 % 2**64:016x}" for i in range(50)]
    for value in values[:40]:
        keys.add(value)
    assert all(value in keys for value in values[:40])
    assert not any(value in keys for value in values[40:])
    assert keys.contains_many(values[35:45]).tolist() == [True] * 5 + [False] * 5
    keys.add(values[0])  # again: harmless
    assert len(keys) == 40


def test_items_dedupe_on_normalised_text():
    assert text_item("a  dog\tbarks ") == text_item("a dog barks")
    assert text_item("Dog").key != text_item("dog").key
    assert BankItem.from_line(text_item("é").to_line()) == text_item("é")
