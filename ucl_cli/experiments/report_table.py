"""Rich tables of a synthetic run, built from its JSON (`SynthResults.to_json()`), so that a
saved run renders exactly like a fresh one."""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text

TOLERANCE = 0.03  # a cell further than this from the published value is flagged
FAMILY_TITLES = {
    "shared": "shared phi_B",
    "independent": "independent A-B, B-C",
    "oracle": "oracle (A, C)",
    "reference": "exact reference",
}
REFERENCE_TITLES = {"bayes": "Bayes-optimal", "lemma1": "Lemma 1, exact ratios"}


def column_title(column: str) -> str:
    if column == "direct":
        return "Direct"
    return f"MC M={_size_label(int(column.removeprefix('mc_')))}"


def comparison_table(results: dict) -> Table:
    """Recall@1 of this run (mean ± 95% CI over seeds) beside the published value, per cell."""
    options = results["options"]
    columns = ["direct", *[f"mc_{size}" for size in sorted(options["bank_sizes"])]]
    seeds = len(options["seeds"])
    table = Table(
        title=f"Recall@1 within groups of {options['group_size']}, rho={options['rho']:g}, "
        f"{seeds} seed{'s' if seeds != 1 else ''}: this run | paper | difference",
        title_justify="left",
    )
    table.add_column("models")
    table.add_column("critic")
    for column in columns:
        table.add_column(column_title(column), justify="right")
        table.add_column("paper", justify="right", style="dim")
        table.add_column("diff", justify="right")
    cells = {(c["family"], c["critic"], c["column"]): c for c in results["table"]}
    rows = sorted({(c["family"], c["critic"]) for c in results["table"]}, key=_row_order)
    previous_family = None
    for family, critic in rows:
        if previous_family is not None and family != previous_family:
            table.add_section()
        previous_family = family
        label = FAMILY_TITLES.get(family, family) if family != "reference" else ""
        name = REFERENCE_TITLES.get(critic, critic) if family == "reference" else critic
        line: list[Text | str] = [label, name]
        for column in columns:
            line += _cell_texts(cells.get((family, critic, column)))
        table.add_row(*line)
    return table


def sweep_table(results: dict) -> Table:
    """Recall@1 and the median effective sample size (matched pairs) against bank size."""
    rows = results["sweep"]
    sizes = rows[0]["sizes"] if rows else []
    table = Table(
        title="Bank-size sweep: recall@1 (median ESS of the matched pairs' bridge weights)",
        title_justify="left",
    )
    table.add_column("models")
    table.add_column("critic")
    for size in sizes:
        table.add_column(f"M={_size_label(size)}", justify="right")
    for row in sorted(rows, key=lambda r: _row_order((r["family"], r["critic"]))):
        family = FAMILY_TITLES.get(row["family"], row["family"])
        critic = REFERENCE_TITLES.get(row["critic"], row["critic"])
        texts = []
        for recall, ess in zip(row["recall"], row["ess_positive"], strict=True):
            ess_text = "" if ess is None else f" ({ess:.1f})"
            mean = recall["mean"]
            texts.append("…" if mean is None else f"{mean:.3f}{ess_text}")
        table.add_row(family, critic, *texts)
    return table


def timing_text(results: dict) -> str:
    timing = results["timing"]
    seeds = len(results.get("completed_seeds", results["options"]["seeds"]))
    text = (
        f"wall time {timing['wall_seconds']:.0f} s for {seeds} seed{'s' if seeds != 1 else ''} "
        f"({timing['seconds_per_seed']:.0f} s per seed) on {timing['workers']} worker"
        f"{'s' if timing['workers'] != 1 else ''}; CPU time "
        f"{timing['cpu_seconds_per_seed']:.0f} s per seed"
    )
    if not results.get("complete", True):
        text += f" (unfinished: {seeds} of {len(results['options']['seeds'])} seeds done)"
    return text


def _cell_texts(cell: dict | None) -> list[Text | str]:
    if cell is None:
        return ["", "", ""]
    mean, ci = cell["mean"], cell["ci95"]
    if mean is None:  # no seed of this cell has finished yet
        return ["…", "", ""]
    run = f"{mean:.3f}" + (f" ±{ci:.3f}" if ci is not None and not math.isnan(ci) else "")
    published = cell["published"]
    if published is None or cell["difference"] is None:
        return [run, "-", ""]
    low, high = published
    paper = _published_label(low) if low == high else f"{low:.2f}-{high:.2f}"
    difference = cell["difference"]
    style = "red bold" if abs(difference) > TOLERANCE else "green"
    return [run, paper, Text(f"{difference:+.3f}", style=style)]


def _published_label(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value > 0.99 else f"{value:.2f}"


def _row_order(key: tuple[str, str]) -> tuple[int, int]:
    family, critic = key
    families = ["shared", "independent", "oracle", "reference"]
    critics = ["cosine", "dot", "neg_sq_l2", "bayes", "lemma1"]
    return (
        families.index(family) if family in families else len(families),
        critics.index(critic) if critic in critics else len(critics),
    )


def _size_label(size: int) -> str:
    if size >= 1000 and size % 1000 == 0:
        return f"{size // 1000}k"
    return str(size)
