"""Evaluation results as a markdown report and a plot of EM/F1 against the number of virtual tokens ``k``.

A result row is a dict with ``dataset``, ``method`` (``"Concat"``, ``"Prompt"``, ``"SPRING"``...), ``k`` (an int for
SPRING-family methods, None for baselines), the percentages ``em``, ``f1`` and ``acc``, and optionally their
first-line variants ``em_line``/``f1_line``/``acc_line``, ``count`` and ``seconds_per_question``.

Example:
    >>> rows = [
    ...     {"dataset": "NQ", "method": "Concat", "k": None, "em": 30.0, "f1": 40.0, "acc": 35.0},
    ...     {"dataset": "NQ", "method": "SPRING", "k": 50, "em": 40.0, "f1": 50.0, "acc": 45.0},
    ... ]
    >>> print(markdown_tables(rows))
    | Method | NQ EM | NQ F1 | NQ Acc | Avg EM | Avg F1 | Avg Acc |
    |---|---:|---:|---:|---:|---:|---:|
    | Concat | 30.0 | 40.0 | 35.0 | 30.0 | 40.0 | 35.0 |
    | SPRING k=50 | 40.0 | 50.0 | 45.0 | 40.0 | 50.0 | 45.0 |
    >>> plot_vs_k(rows, "reports/vs_k.png")
    PosixPath('reports/vs_k.png')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Row = Mapping[str, Any]

METRIC_NAMES = {"em": "EM", "f1": "F1", "acc": "Acc"}
MISSING = "–"
LINE_SUFFIX = "_line"
SPEED_KEY = "seconds_per_question"


def method_label(row: Row) -> str:
    """The method name, with `` k=K`` when the row has a ``k``: ``"SPRING k=50"``."""
    k = row.get("k")
    return f"{row['method']} k={k}" if k is not None else str(row["method"])


def _first_seen(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _index(rows: Sequence[Row]) -> dict[tuple[str, str], Row]:
    """Rows by ``(method label, dataset)``; two rows for the same cell are an error."""
    cells: dict[tuple[str, str], Row] = {}
    for row in rows:
        key = (method_label(row), str(row["dataset"]))
        if key in cells:
            raise ValueError(f"two result rows for method {key[0]!r} on dataset {key[1]!r}")
        cells[key] = row
    return cells


def _metric_name(metric: str) -> str:
    if metric.endswith(LINE_SUFFIX):
        base = metric[: -len(LINE_SUFFIX)]
        return f"{METRIC_NAMES.get(base, base)} (1st line)"
    return METRIC_NAMES.get(metric, metric)


def _fmt(value: Any, digits: int) -> str:
    return MISSING if value is None else f"{float(value):.{digits}f}"


def _mean(values: Sequence[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _render(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _table(rows: Sequence[Row], metrics: Sequence[str], *, speed: bool = False, average: bool = True) -> str:
    """One table: a line per method, per dataset a column per metric (and s/q), then the per-method averages."""
    datasets = _first_seen([str(row["dataset"]) for row in rows])
    labels = _first_seen([method_label(row) for row in rows])
    cells = _index(rows)

    def value(label: str, dataset: str, key: str) -> Any:
        row = cells.get((label, dataset))
        return None if row is None else row.get(key)

    # (header, dataset or None for the average, key, decimals)
    columns: list[tuple[str, str | None, str, int]] = []
    for dataset in datasets:
        columns += [(f"{dataset} {_metric_name(metric)}", dataset, metric, 1) for metric in metrics]
        if speed:
            columns.append((f"{dataset} s/q", dataset, SPEED_KEY, 2))
    if average:
        columns += [(f"Avg {_metric_name(metric)}", None, metric, 1) for metric in metrics]

    def cell(label: str, dataset: str | None, key: str, digits: int) -> str:
        if dataset is None:
            return _fmt(_mean([value(label, d, key) for d in datasets]), digits)
        return _fmt(value(label, dataset, key), digits)

    header = ["Method"] + [name for name, *_ in columns]
    body = [[label] + [cell(label, *column[1:]) for column in columns] for label in labels]
    return _render(header, body)


def markdown_tables(rows: Sequence[Row], metrics: Sequence[str] = ("em", "f1", "acc")) -> str:
    """The results as markdown: the main table, then first-line scores and seconds/question when the rows have them.

    Methods are lines and datasets column groups, both in the order first seen; ``Avg`` is the mean over the
    datasets a method has. Scores have one decimal, a missing cell shows ``–``.
    """
    if not rows:
        raise ValueError("no result rows to report")
    parts = [_table(rows, metrics)]
    line_metrics = [metric + LINE_SUFFIX for metric in metrics]
    has_line = any(row.get(metric) is not None for row in rows for metric in line_metrics)
    has_speed = any(row.get(SPEED_KEY) is not None for row in rows)
    if has_line or has_speed:
        titles = {(True, True): "First-line scores and speed", (True, False): "First-line scores"}
        parts.append(f"**{titles.get((has_line, has_speed), 'Speed')}**")
        parts.append(_table(rows, line_metrics if has_line else [], speed=has_speed, average=has_line))
    return "\n\n".join(parts)


def plot_vs_k(rows: Sequence[Row], path: str | Path) -> Path:
    """Plot EM and F1 against ``k`` (one subplot per dataset) with baselines as dashed lines; save a PNG at ``path``
    atomically (a failed write, e.g. on a full disk, leaves the earlier plot as it was).

    Methods with ``k`` are drawn as lines over their ``k`` values (a single ``k`` gives a single point); methods
    without ``k`` are horizontal dashed (EM) and dash-dotted (F1) lines. Raises ``ValueError`` if no row has a ``k``.
    """
    from spring_core.artifacts.manifest import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, render_vs_k(rows))
    return path


def render_vs_k(rows: Sequence[Row]) -> bytes:
    """The PNG that ``plot_vs_k`` writes, as bytes."""
    import io

    k_values = sorted({int(row["k"]) for row in rows if row.get("k") is not None})
    if not k_values:
        raise ValueError("no result row has a k: there is nothing to plot against k (only baselines)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    datasets = _first_seen([str(row["dataset"]) for row in rows])
    methods = _first_seen([str(row["method"]) for row in rows])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {method: colors[i % len(colors)] for i, method in enumerate(methods)}

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.5), squeeze=False, layout="constrained")
    for ax, dataset in zip(axes[0], datasets, strict=True):
        here = [row for row in rows if str(row["dataset"]) == dataset]
        for method in _first_seen([str(row["method"]) for row in here]):
            _plot_method(ax, [row for row in here if str(row["method"]) == method], method, color_of[method])
        if k_values[0] > 0:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(k_values, [str(k) for k in k_values])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_title(dataset)
        ax.set_xlabel("k (virtual tokens)")
        ax.set_ylabel("score (%)")
        ax.grid(True, alpha=0.3)

    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    ncol = min(len(handles), 4)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=ncol, fontsize="small")
    fig.suptitle("EM and F1 against the number of virtual tokens k")

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()


def _plot_method(ax: Any, rows: Sequence[Row], method: str, color: str) -> None:
    """One method on one subplot: EM/F1 over ``k``, or horizontal lines for a method without ``k``."""
    with_k = sorted((row for row in rows if row.get("k") is not None), key=lambda row: int(row["k"]))
    for metric, name in (("em", "EM"), ("f1", "F1")):
        if with_k:
            points = [(int(row["k"]), float(row[metric])) for row in with_k if row.get(metric) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                style = "-o" if metric == "em" else ":s"
                ax.plot(xs, ys, style, color=color, label=f"{method} {name}")
        for row in rows:
            if row.get("k") is None and row.get(metric) is not None:
                style = "--" if metric == "em" else "-."
                ax.axhline(float(row[metric]), linestyle=style, color=color, alpha=0.8, label=f"{method} {name}")
