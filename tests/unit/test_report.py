"""Evaluation report: markdown tables with the right numbers in the right cells, and the EM/F1-vs-k PNG."""

from __future__ import annotations

import pytest

from spring_train.report import markdown_tables, method_label, plot_vs_k

ROWS = [
    {"dataset": "NQ", "method": "Concat", "k": None, "em": 30.0, "f1": 40.0, "acc": 35.0},
    {"dataset": "NQ", "method": "SPRING", "k": 10, "em": 36.0, "f1": 46.0, "acc": 41.0},
    {"dataset": "NQ", "method": "SPRING", "k": 50, "em": 40.0, "f1": 50.0, "acc": 45.0},
    {"dataset": "TQA", "method": "Concat", "k": None, "em": 50.0, "f1": 60.0, "acc": 55.0},
    {"dataset": "TQA", "method": "SPRING", "k": 10, "em": 55.0, "f1": 64.25, "acc": 58.0},
    {"dataset": "TQA", "method": "SPRING", "k": 50, "em": 61.0, "f1": 70.0, "acc": 66.0},
    {"dataset": "TQA", "method": "Prompt", "k": None, "em": 45.0, "f1": 52.0, "acc": 50.0},
]


def parse_table(markdown: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The header and ``{method: {column: cell}}`` of the first table in ``markdown``."""
    lines = markdown.split("\n\n")[0].splitlines()
    split = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    header, _separator, *body = split
    return header, {cells[0]: dict(zip(header, cells, strict=True)) for cells in body}


def test_method_label():
    assert method_label({"method": "SPRING", "k": 50}) == "SPRING k=50"
    assert method_label({"method": "SPRING", "k": 0}) == "SPRING k=0"
    assert method_label({"method": "Concat", "k": None}) == "Concat"
    assert method_label({"method": "Concat"}) == "Concat"


def test_table_layout_and_cells():
    header, table = parse_table(markdown_tables(ROWS))
    assert header == [
        "Method",
        "NQ EM", "NQ F1", "NQ Acc",
        "TQA EM", "TQA F1", "TQA Acc",
        "Avg EM", "Avg F1", "Avg Acc",
    ]  # fmt: skip
    assert list(table) == ["Concat", "SPRING k=10", "SPRING k=50", "Prompt"]  # first-seen order
    assert table["SPRING k=50"]["NQ EM"] == "40.0"
    assert table["SPRING k=50"]["TQA Acc"] == "66.0"
    assert table["SPRING k=10"]["TQA F1"] == "64.2"  # one decimal (64.25 rounds half to even)
    assert table["Concat"]["TQA F1"] == "60.0"


def test_average_is_the_mean_over_datasets():
    _, table = parse_table(markdown_tables(ROWS))
    assert table["Concat"]["Avg EM"] == "40.0"  # (30 + 50) / 2
    assert table["SPRING k=50"]["Avg F1"] == "60.0"  # (50 + 70) / 2
    assert table["SPRING k=10"]["Avg F1"] == f"{(46.0 + 64.25) / 2:.1f}"
    assert table["SPRING k=50"]["Avg Acc"] == "55.5"  # (45 + 66) / 2


def test_missing_cells_and_average_over_present_datasets():
    _, table = parse_table(markdown_tables(ROWS))
    prompt = table["Prompt"]
    assert prompt["NQ EM"] == prompt["NQ F1"] == prompt["NQ Acc"] == "–"
    assert prompt["Avg EM"] == "45.0"  # only TQA


def test_only_one_table_without_extras():
    report = markdown_tables(ROWS)
    assert report.count("|---|") == 1
    assert "1st line" not in report and "s/q" not in report


def test_first_line_and_speed_table():
    rows = [
        {**ROWS[0], "em_line": 33.0, "f1_line": 43.0, "acc_line": 36.0, "seconds_per_question": 0.5},
        {**ROWS[2], "em_line": 42.0, "f1_line": 52.0, "acc_line": 46.0, "seconds_per_question": 0.75},
        {**ROWS[3], "em_line": 51.0, "f1_line": 61.0, "acc_line": 56.0},
    ]
    report = markdown_tables(rows)
    assert report.count("|---|") == 2
    header, table = parse_table(report.split("**First-line scores and speed**")[1].strip())
    assert header == [
        "Method",
        "NQ EM (1st line)", "NQ F1 (1st line)", "NQ Acc (1st line)", "NQ s/q",
        "TQA EM (1st line)", "TQA F1 (1st line)", "TQA Acc (1st line)", "TQA s/q",
        "Avg EM (1st line)", "Avg F1 (1st line)", "Avg Acc (1st line)",
    ]  # fmt: skip
    assert table["Concat"]["NQ EM (1st line)"] == "33.0"
    assert table["Concat"]["NQ s/q"] == "0.50"
    assert table["Concat"]["TQA s/q"] == "–"
    assert table["Concat"]["Avg EM (1st line)"] == "42.0"  # (33 + 51) / 2
    assert table["SPRING k=50"]["NQ s/q"] == "0.75"
    assert table["SPRING k=50"]["TQA EM (1st line)"] == "–"
    # the main table is unchanged by the extra keys
    _, main = parse_table(report)
    assert main["Concat"]["NQ EM"] == "30.0"


def test_speed_only_table():
    rows = [{**row, "seconds_per_question": 1.25} for row in ROWS[:2]]
    report = markdown_tables(rows)
    assert "**Speed**" in report
    header, table = parse_table(report.split("**Speed**")[1].strip())
    assert header == ["Method", "NQ s/q"]
    assert table["SPRING k=10"]["NQ s/q"] == "1.25"


def test_custom_metrics():
    header, table = parse_table(markdown_tables(ROWS, metrics=("em",)))
    assert header == ["Method", "NQ EM", "TQA EM", "Avg EM"]
    assert table["SPRING k=50"]["Avg EM"] == "50.5"


def test_table_errors():
    with pytest.raises(ValueError, match="no result rows"):
        markdown_tables([])
    with pytest.raises(ValueError, match="two result rows for method 'SPRING k=10' on dataset 'NQ'"):
        markdown_tables([ROWS[1], ROWS[1]])


def test_plot_writes_a_png(tmp_path):
    rows = ROWS + [
        {"dataset": "NQ", "method": "SPRING+", "k": 10, "em": 38.0, "f1": 48.0, "acc": 43.0},
        {"dataset": "NQ", "method": "SPRING+", "k": 50, "em": 42.0, "f1": 52.0, "acc": 47.0},
    ]
    target = tmp_path / "nested" / "folder" / "vs_k.png"
    result = plot_vs_k(rows, target)
    assert result == target
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


def test_plot_accepts_a_string_path_and_k_zero(tmp_path):
    rows = [
        {"dataset": "NQ", "method": "SPRING", "k": 0, "em": 20.0, "f1": 30.0, "acc": 25.0},
        {"dataset": "NQ", "method": "SPRING", "k": 5, "em": 30.0, "f1": 40.0, "acc": 35.0},
    ]
    result = plot_vs_k(rows, str(tmp_path / "k0.png"))
    assert result.read_bytes().startswith(b"\x89PNG")


def test_plot_needs_a_k(tmp_path):
    baselines = [row for row in ROWS if row["k"] is None]
    with pytest.raises(ValueError, match="no result row has a k"):
        plot_vs_k(baselines, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
