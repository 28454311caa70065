"""The bank owns every FAISS index: the query layer asks it for neighbours, never the reverse."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ucl_cli import config
from ucl_cli.bank import ModelRecord, save_bank, text_item
from ucl_cli.bank.nearest import LazyNearest, flat_nearest, save_index_scans, scan_path


def imported_after(statement: str) -> list[str]:
    """The modules a fresh interpreter holds after `statement` (no test imports leak in)."""
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_bank_and_ucl_index_import_neither_the_query_layer_nor_faiss():
    modules = imported_after("import ucl_cli.bank, ucl_cli.commands.index")
    assert [name for name in modules if name.startswith("ucl_cli.bridge")] == []
    assert "faiss" not in modules


def test_the_bank_search_module_does_not_import_the_query_layer():
    modules = imported_after("import ucl_cli.bank.nearest")
    assert [name for name in modules if name.startswith("ucl_cli.bridge")] == []
    assert "faiss" not in modules  # until the first search


def unit_rows(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    matrix = np.random.default_rng(seed).standard_normal((rows, dim))
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def ivf_bank(tmp_path):
    matrix = unit_rows(400, 8)
    items = [text_item(f"caption {i}") for i in range(len(matrix))]
    bank = save_bank(
        tmp_path / "b", items, [matrix], [ModelRecord("m", 8, 10.0)], faiss_index="IVF4,Flat"
    )
    yield bank, matrix
    bank.close()


def test_bank_nearest_reads_the_index_on_first_search_and_keeps_its_scan(ivf_bank):
    bank, matrix = ivf_bank
    nearest = bank.nearest("m")
    assert isinstance(nearest, LazyNearest)
    assert not bank._indexes  # nothing read yet: lse and caption never search
    queries = unit_rows(5, 8, seed=1)
    found = nearest(queries, 10, nprobe=4)  # every list: the exact top 10
    exact = np.sort(queries @ matrix.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(found.values, exact, atol=1e-5)
    assert (found.ceiling >= exact[:, -1] - 1e-6).all()
    groups, count = nearest.row_groups()
    assert count == 4 and groups.shape == (len(matrix),)
    path = scan_path(bank, "m")
    assert path == config.index_bounds_dir() / f"{bank.index_sha256('m')}.npz"
    assert path.exists()  # the scan is kept where the next process looks


def test_save_index_scans_saves_each_ivf_scan_once(ivf_bank):
    bank, _ = ivf_bank
    assert save_index_scans(bank) == 1
    assert scan_path(bank, "m").exists()
    assert save_index_scans(bank) == 0  # already saved
    groups, _ = bank.nearest("m").row_groups()
    with np.load(scan_path(bank, "m")) as saved:
        np.testing.assert_array_equal(saved["groups"], groups)


def test_a_flat_bank_has_no_scan_to_save(tmp_path):
    matrix = unit_rows(20, 4)
    items = [text_item(f"caption {i}") for i in range(len(matrix))]
    with save_bank(tmp_path / "b", items, [matrix], [ModelRecord("m", 4, 10.0)]) as bank:
        assert save_index_scans(bank) == 0
        assert not bank._indexes


def test_flat_nearest_searches_a_sub_bank_exactly():
    matrix = unit_rows(50, 6)
    queries = unit_rows(3, 6, seed=2)
    found = flat_nearest(matrix, 1.0)(queries, 5)
    exact = np.sort(queries @ matrix.T, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(found.values, exact, atol=1e-5)
    assert found.group_ceiling.shape == (len(queries), 1)
