"""The helpers the readers share: box checks and the label of a multi-object image."""

from __future__ import annotations

import numpy as np

from carid.data.readers._common import check_boxes, label_of_largest_box


def test_check_boxes_and_label_helpers() -> None:
    checked = check_boxes([[-5, 0, 10, 10], [0, 0, 5, 5]], None, None, source="s", path="p.jpg")
    assert checked.usable and [p.kind for p in checked.problems] == ["box_outside_image"]
    np.testing.assert_array_equal(checked.boxes, [[0, 0, 10, 10], [0, 0, 5, 5]])
    assert not check_boxes([[5, 5, 5, 9]], 10, 10, source="s", path="p").usable
    assert not check_boxes([[np.nan, 0, 1, 1]], 10, 10, source="s", path="p").usable
    label, problems = label_of_largest_box(["a", "b"], [[0, 0, 1, 1], [0, 0, 5, 5]], source="s", path="p")
    assert label == "b" and problems[0].kind == "mixed_object_classes"
    assert label_of_largest_box([], [], source="s", path="p") == (None, [])
