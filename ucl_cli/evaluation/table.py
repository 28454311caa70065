"""The Rich table `ucl eval` prints: one row per method and bank size, drawn from the JSON
record (so a saved report can be shown again the same way)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def results_table(record: dict[str, Any]) -> Table:
    protocol = record["protocol"]
    ks = [str(k) for k in record["options"]["ks"]]
    chance = record["chance"]
    level = round(100 * record["options"]["confidence"])
    calibration = record["options"].get("scoring", {}).get("calibration")
    calibrated = ""
    if calibration is not None and not calibration["paper"]:  # older reports have none
        applies = ", ".join(calibration["applies_to"])
        calibrated = f"; {applies}: {calibration['description']} (not the paper's estimator)"
    table = Table(
        title=(
            f"{protocol['direction']}: {record['manifest']['usable_items']:,} items, "
            f"{protocol['trials']} trials of {protocol['candidates']} candidates, "
            f"bank {record['bank']['name']}"
        ),
        caption=(
            f"mean [{level}% interval over trials]; chance: "
            + ", ".join(f"R@{k} {chance['recall'][k]:.3f}" for k in ks)
            + f", mean rank {chance['mean_rank']:.1f}"
            + calibrated
        ),
    )
    table.add_column("method")
    table.add_column("bank M", justify="right")
    for k in ks:
        table.add_column(f"R@{k}", justify="right")
    table.add_column("mean rank", justify="right")
    for result in record["results"]:
        size = result["bank_size"]
        name = result["method"] + (" (forced)" if result["forced"] else "")
        table.add_row(
            name,
            "-" if size is None else f"{size:,}",
            *(_cell(result["recall"][k], 3) for k in ks),
            _cell(result["mean_rank"], 2),
        )
    return table


def _cell(interval: dict[str, Any], digits: int) -> str:
    mean = f"{interval['mean']:.{digits}f}"
    if interval["low"] is None:
        return mean
    return f"{mean} [{interval['low']:.{digits}f}, {interval['high']:.{digits}f}]"
