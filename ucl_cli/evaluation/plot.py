"""The picture of an evaluation: recall@k against bank size M, one panel per k, one line per
method with its confidence interval shaded (as the paper's scaling figure), drawn from the JSON
record. `direct` uses no bank: it is a horizontal line with its band; chance is dotted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ucl_cli.errors import InputFileError


def plot_report(record: dict[str, Any], path: str | Path) -> Path:
    """Write the figure to `path` (PNG, PDF or SVG, from the extension) and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    ks = [str(k) for k in record["options"]["ks"]]
    figure, axes = plt.subplots(1, len(ks), figsize=(4.2 * len(ks), 3.8), squeeze=False)
    for axis, k in zip(axes[0], ks, strict=True):
        _panel(axis, record, k)
    axes[0][0].legend(fontsize=7, loc="best")
    protocol = record["protocol"]
    figure.suptitle(
        f"{protocol['direction']}, bank {record['bank']['name']}: {protocol['trials']} trials "
        f"of {protocol['candidates']} candidates",
        fontsize=9,
    )
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=130)
    except (OSError, ValueError) as err:
        raise InputFileError(path, f"cannot write the figure: {err}") from None
    finally:
        plt.close(figure)
    return path


def _panel(axis, record: dict[str, Any], k: str) -> None:
    sizes = record["bank_sizes"]
    methods = list(dict.fromkeys(result["method"] for result in record["results"]))
    for method in methods:
        rows = [r for r in record["results"] if r["method"] == method]
        if rows[0]["bank_size"] is None:
            _flat(axis, rows[0], k, sizes)
            continue
        xs = [r["bank_size"] for r in rows]
        means = [r["recall"][k]["mean"] for r in rows]
        (line,) = axis.plot(xs, means, marker="o", markersize=3, label=method)
        lows = [_or(r["recall"][k]["low"], r["recall"][k]["mean"]) for r in rows]
        highs = [_or(r["recall"][k]["high"], r["recall"][k]["mean"]) for r in rows]
        axis.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
    axis.axhline(
        record["chance"]["recall"][k], color="grey", linestyle=":", linewidth=1, label="chance"
    )
    if len(sizes) > 1 and min(sizes) > 0 and max(sizes) / min(sizes) >= 10:
        axis.set_xscale("log")
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("bank size M")
    axis.set_ylabel(f"recall@{k}")
    axis.set_title(f"recall@{k}")


def _flat(axis, result: dict[str, Any], k: str, sizes: list[int]) -> None:
    """A bank-free method: its value across the plotted range of M."""
    interval = result["recall"][k]
    xs = [min(sizes), max(sizes)] if len(sizes) > 1 else [sizes[0] * 0.9, sizes[0] * 1.1]
    label = result["method"] + (" (forced)" if result["forced"] else "")
    (line,) = axis.plot(xs, [interval["mean"]] * 2, linestyle="--", label=label)
    low, high = _or(interval["low"], interval["mean"]), _or(interval["high"], interval["mean"])
    axis.fill_between(xs, [low] * 2, [high] * 2, color=line.get_color(), alpha=0.15, linewidth=0)


def _or(value: float | None, fallback: float) -> float:
    return fallback if value is None else value
