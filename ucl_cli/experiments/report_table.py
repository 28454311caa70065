"""Rich tables of a synthetic run, built from its JSON (`SynthResults.to_json()`), so that a
saved run renders exactly like a fresh one."""

from __future__ import annotations

import math
from collections import Counter

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


def calibrated_table(results: dict) -> Table | None:
    """The --calibrated rows (None for a run without them): recall@1 (mean ± 95% CI over the
    seeds each row is judged on) at every bank size, with the calibration each row picked under
    it, beside the paper's estimator on the same models."""
    calibrated = results.get("calibrated")
    if calibrated is None:
        return None
    rows = calibrated["rows"]
    sizes = rows[0]["sizes"] if rows else []
    family = calibrated["family"]
    notes = dict.fromkeys(  # once, not once per critic
        f"\n{_variant_label(row)}: not reported ({row['unavailable']})."
        for row in rows
        if row["unavailable"]
    )
    table = Table(
        title=f"Tempered and self-normalised bridge scores, {FAMILY_TITLES[family]}: recall@1 "
        "(mean ± 95% CI over the seeds judged), and under it the calibration picked",
        title_justify="left",
        caption=CALIBRATED_CAPTION + "".join(notes),
        caption_justify="left",
    )
    table.add_column("critic")
    table.add_column("scores")
    for size in sizes:
        table.add_column(f"M={_size_label(size)}", justify="right")
    paper = {row["critic"]: row for row in results["sweep"] if row["family"] == family}
    critics = sorted({row["critic"] for row in rows}, key=lambda c: _row_order((family, c)))
    for index, critic in enumerate(critics):
        if index:
            table.add_section()
        if critic in paper:
            reference = paper[critic]
            seeds = len(reference["recall"][0]["values"]) if reference["recall"] else 0
            picks = [[calibrated["paper"]] * seeds for _ in sizes]
            cells = zip(reference["recall"], picks, strict=True)
            table.add_row(critic, "the paper's estimator", *[_pick_cell(*cell) for cell in cells])
        for row in (r for r in rows if r["critic"] == critic):
            if row["unavailable"]:
                texts = ["n/a"] * len(sizes)
            else:
                cells = zip(row["recall"], row["picked"], strict=True)
                texts = [_pick_cell(*cell) for cell in cells]
            table.add_row("" if critic in paper else critic, _variant_label(row), *texts)
    return table


CALIBRATED_CAPTION = (
    "t: temperature on both critics; none: not normalised (as the paper); cand: each "
    "candidate's bridge sum divided by the bank's estimate of 1 (self-normalised). When seeds "
    "picked differently, the most common pick and how many seeds made it. Pseudo-pairs: fresh B "
    "samples through the A-B model's B encoder as queries and the B-C model's as their own "
    "candidates; no labels. A pick made on a seed's labels is never judged on that seed."
)


def _variant_label(row: dict) -> str:
    if row["variant"] == "self_normalised":
        return "self-normalised (t=1, cand)"
    if row["variant"] == "pseudo_pairs":
        return "picked per seed on its pseudo-pairs (no labels)"
    chooser = _seed_list(row["chosen_on"])
    if row["unavailable"]:
        return f"picked on seed {chooser}'s labels"
    judged = row["judged_on"]
    seeds = "seed" if len(judged) == 1 else "seeds"
    return f"picked on seed {chooser}'s labels, judged on {seeds} {_seed_list(judged)}"


def _pick_cell(recall: dict, picks: list[str]) -> str:
    mean, ci = recall["mean"], recall["ci95"]
    if mean is None:  # no seed of this row has finished yet
        return "…"
    text = f"{mean:.3f}" + (f" ±{ci:.3f}" if ci is not None and not math.isnan(ci) else "")
    if not picks:
        return text
    counts = Counter(picks)
    top = max(counts, key=lambda name: (counts[name], -picks.index(name)))
    shown = top.replace(",candidates", ",cand")
    if counts[top] < len(picks):
        shown += f" {counts[top]}/{len(picks)}"
    return f"{text}\n{shown}"


def _seed_list(seeds: list[int]) -> str:
    """1,2,3,5 -> "1-3,5"."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


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
