"""Paper-style figure of a synthetic run, drawn from its JSON (`SynthResults.to_json()`).

One bar chart per critic (model families on the x axis; Direct and each Monte Carlo bank size as
bars, with 95% confidence intervals over seeds; published values as black ticks; chance and
Bayes-optimal as lines), a panel with the bank-size sweep, and for a --calibrated run a last
panel with the tempered and self-normalised scores beside the paper's estimator.
"""

from __future__ import annotations

import math
from pathlib import Path

from ucl_cli.errors import InputFileError
from ucl_cli.experiments.report_table import FAMILY_TITLES, column_title

CRITIC_TITLES = {"cosine": "cosine", "dot": "dot", "neg_sq_l2": "-1/2 ||x - y||^2"}


def plot_results(results: dict, path: Path) -> None:
    """Write the figure to `path` (format from its extension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    critics = list(results["options"]["critics"])
    calibrated = results.get("calibrated") is not None
    panels = len(critics) + 1 + calibrated
    figure, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.6), squeeze=False)
    for axis, critic in zip(axes[0], critics, strict=False):
        _bars(axis, results, critic)
    _sweep(axes[0][len(critics)], results)
    if calibrated:
        _calibrated(axes[0][-1], results)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        loc="lower center",
        ncol=len(labels),
        fontsize=8,
        title="bars: this run, 95% CI over seeds; black ticks: published",
        title_fontsize=8,
        frameon=False,
    )
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    try:
        figure.savefig(path, dpi=130)
    except (OSError, ValueError) as err:
        raise InputFileError(path, f"cannot write the figure: {err}") from None
    finally:
        plt.close(figure)


def _bars(axis, results: dict, critic: str) -> None:
    options = results["options"]
    columns = ["direct", *[f"mc_{size}" for size in sorted(options["bank_sizes"])]]
    cells = {(c["family"], c["critic"], c["column"]): c for c in results["table"]}
    families = ["shared", "independent", "oracle"]
    families_bridged = {f: any((f, critic, c) in cells for c in columns[1:]) for f in families}
    width = 0.8 / len(columns)
    for j, column in enumerate(columns):
        xs, heights, errors, published = [], [], [], []
        for i, family in enumerate(families):
            cell = cells.get((family, critic, column))
            if cell is None or cell["mean"] is None:  # None: no seed finished yet
                continue
            bars = len(columns) if families_bridged[family] else 1
            xs.append(i + (j - (bars - 1) / 2) * width)
            heights.append(cell["mean"])
            errors.append(0.0 if cell["ci95"] is None else cell["ci95"])
            published.append(cell["published"])
        has_interval = any(error > 0 for error in errors)
        axis.bar(
            xs,
            heights,
            width * 0.95,
            yerr=errors if has_interval else None,
            capsize=3,
            label=column_title(column),
        )
        for x, value in zip(xs, published, strict=True):
            if value is not None:
                axis.hlines(
                    sum(value) / 2, x - width / 2, x + width / 2, colors="black", linewidth=1.5
                )
    chance = 1.0 / options["group_size"]
    axis.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    bayes = cells.get(("reference", "bayes", "direct"))
    if bayes is not None:
        axis.axhline(
            bayes["mean"], color="green", linestyle="--", linewidth=1, label="Bayes-optimal"
        )
    axis.set_xticks(range(len(families)))
    axis.set_xticklabels([FAMILY_TITLES[f].replace(" ", "\n", 1) for f in families], fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("recall@1")
    axis.set_title(f"critic: {CRITIC_TITLES.get(critic, critic)}")


def _sweep(axis, results: dict) -> None:
    for row in results["sweep"]:
        if not row["recall"] or any(r["mean"] is None for r in row["recall"]):
            continue
        means = [r["mean"] for r in row["recall"]]
        errors = [
            0.0 if r["ci95"] is None or math.isnan(r["ci95"]) else r["ci95"] for r in row["recall"]
        ]
        if row["family"] == "reference":
            style, label = {"color": "black", "linestyle": "--"}, "Lemma 1, exact ratios"
        else:
            style = {"linestyle": "-" if row["family"] == "shared" else ":"}
            label = f"{row['family']}, {row['critic']}"
        axis.errorbar(
            row["sizes"],
            means,
            yerr=errors,
            marker="o",
            markersize=3,
            capsize=2,
            label=label,
            **style,
        )
    axis.set_xscale("log")
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("bank size M")
    axis.set_ylabel("Monte Carlo recall@1")
    axis.set_title("bank-size sweep")
    axis.legend(fontsize=6, loc="lower right")


VARIANT_STYLES = {  # the paper's estimator, then the --calibrated rows
    "paper": ":",
    "self_normalised": "-.",
    "pseudo_pairs": "-",
    "labels": "--",
}


def _calibrated(axis, results: dict) -> None:
    """Independent models against bank size: one colour per critic, one line style per way of
    scoring (the legend names the rule that picked each)."""
    from matplotlib.lines import Line2D

    calibrated = results["calibrated"]
    family = calibrated["family"]
    rows = [{**row, "variant": "paper"} for row in results["sweep"] if row["family"] == family] + [
        row for row in calibrated["rows"] if not row["unavailable"]
    ]
    critics = list(dict.fromkeys(row["critic"] for row in rows))
    colours = {critic: f"C{i}" for i, critic in enumerate(critics)}
    for row in rows:
        if not row["recall"] or any(r["mean"] is None for r in row["recall"]):
            continue
        axis.errorbar(
            row["sizes"],
            [r["mean"] for r in row["recall"]],
            yerr=[0.0 if r["ci95"] is None else r["ci95"] for r in row["recall"]],
            color=colours[row["critic"]],
            linestyle=VARIANT_STYLES[row["variant"]],
            marker="o",
            markersize=3,
            capsize=2,
        )
    labels = {
        "paper": "the paper's estimator",
        "self_normalised": "self-normalised, t=1",
        "pseudo_pairs": "picked on pseudo-pairs (no labels)",
        "labels": "picked on the first seed's labels, judged on the others",
    }
    shown = {row["variant"] for row in rows}
    handles = [
        Line2D([], [], color="black", linestyle=VARIANT_STYLES[v], label=labels[v])
        for v in VARIANT_STYLES
        if v in shown
    ]
    handles += [Line2D([], [], color=colours[c], label=CRITIC_TITLES.get(c, c)) for c in critics]
    axis.set_xscale("log")
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("bank size M")
    axis.set_ylabel("Monte Carlo recall@1")
    axis.set_title(f"{FAMILY_TITLES[family]}: calibrated scores", fontsize=9)
    axis.legend(handles=handles, fontsize=6, loc="lower right")
