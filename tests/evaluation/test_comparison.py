"""Tests for carid.evaluation.comparison: models side by side as a table, CSV and an HTML page."""

from __future__ import annotations

import re

from carid.evaluation.comparison import ModelSummary, best_in_columns, best_in_rows, comparison_html


def summaries() -> list[ModelSummary]:
    return [
        ModelSummary(
            "small", "member", 10, 0.6, None, 0.5, 1.2, 0.08, per_class_f1={"<b>cab</b>": 0.4, "van": 0.9}
        ),
        ModelSummary(
            "large", "member", 10, 0.8, None, 0.7, 0.9, 0.12, per_class_f1={"<b>cab</b>": 0.8, "van": 0.5}
        ),
        ModelSummary(
            "both", "ensemble", 10, 0.8, None, 0.75, 0.7, 0.05, per_class_f1={"<b>cab</b>": 0.7, "van": 0.7}
        ),
    ]


def test_the_best_of_each_column_is_marked_lowest_where_lower_is_better() -> None:
    rows = [["a", "0.5", "1.0"], ["b", "0.9", "0.3"], ["c", "n/a", "0.3"]]
    marked = best_in_columns(rows, [1, 2], lower_is_better=[2])
    assert [cell[1] for cell in (marked[0][1], marked[1][1], marked[2][1])] == [False, True, False]
    assert [row[2][1] for row in marked] == [False, True, True]  # ties are all best
    assert best_in_rows([["cab", "0.4", "0.8", "0.7"]]) == [
        [("cab", False), ("0.4", False), ("0.8", True), ("0.7", False)]
    ]


def test_the_page_bolds_the_best_and_escapes_every_name() -> None:
    page = comparison_html("Ensemble <x>", summaries(), [("split", "val & test")])
    assert "<title>Ensemble &lt;x&gt;</title>" in page
    assert "val &amp; test" in page
    assert "&lt;b&gt;cab&lt;/b&gt;" in page and "<b>cab</b>" not in page
    best_cells = re.findall(r'<td class="best">([^<]*)</td>', page)
    # accuracy 0.8 (a tie of two), macro F1 0.75, NLL 0.7 and ECE 0.05 (the lowest), then the best
    # F1 of each class: 0.8 for cab, 0.9 for van
    assert best_cells == ["0.8000", "0.8000", "0.7500", "0.7000", "0.0500", "0.8000", "0.9000"]
