"""Stanford Cars crops reader (format name ``stanford-crops``): ``labels.csv`` + ``images/``, no boxes.

The layout is read by `carid.data.readers._stanford_crops_table`; this module is the registered
reader, which also checks each crop against its official devkit box when it finds the devkit
(`carid.data.readers._stanford_cross_check`, see that module's docstring).
"""

from __future__ import annotations

from pathlib import Path

from carid.data.readers._registry import register_reader
from carid.data.readers._stanford_crops_table import FORMAT, read_crops_table, sniff_stanford_crops
from carid.data.readers._stanford_cross_check import cross_check_crops
from carid.data.samples import SampleTable


@register_reader(
    FORMAT,
    "Stanford Cars crops: labels.csv (fname,class_id,class_name) + images/",
    sniff_stanford_crops,
)
def read_stanford_crops(
    path: Path,
    *,
    annotations: Path | SampleTable | None = None,
    cross_check: bool = True,
) -> SampleTable:
    """Read the pre-cropped Stanford layout into a SampleTable (no boxes: the crop is the box).

    annotations: the devkit (folder, annotation file or table from `read_stanford_annotations`)
        used to check each crop against its official box; None looks for devkit files in the
        crops folder, its devkit/ subfolder, or a sibling folder.
    cross_check: False skips that check.
    """
    table = read_crops_table(path)
    if cross_check:
        table.add_problems(cross_check_crops(table, annotations))
    return table
