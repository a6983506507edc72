"""`CheckReport`: what `carid.data.checks.run_checks` found; its counts, JSON form and printed summary."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from carid.config import CheckConfig
from carid.data.check_duplicates import DuplicateGroup
from carid.data.check_rules import class_names
from carid.data.hashing import ImageFacts
from carid.data.samples import Problem, SampleTable, Severity
from carid.data.text import console_text, safe_for_files

# Example files per problem kind in the printed summary.
SUMMARY_EXAMPLES = 3

_SEVERITY_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


@dataclass(frozen=True)
class CheckReport:
    """The result of `run_checks`.

    table: the checked table: width/height from the real images, partly-outside boxes clipped,
        `problems` = the reader's problems followed by the checks' problems.
    facts: one `ImageFacts` per sample (aligned with `table.samples`), None when unreadable.
    splits: the split of each sample used for the leakage check (None = unknown).
    seconds: wall time of the whole check; probe_seconds: of opening the images.
    workers: processes that opened the images (1 = in process).
    images_opened: distinct files opened (a file listed twice is opened once).
    """

    table: SampleTable
    facts: tuple[ImageFacts | None, ...]
    duplicate_groups: tuple[DuplicateGroup, ...]
    splits: tuple[str | None, ...]
    config: CheckConfig
    seconds: float
    probe_seconds: float
    workers: int
    images_opened: int

    # --- counts ---------------------------------------------------------------------------

    @property
    def problems(self) -> list[Problem]:
        return self.table.problems

    @property
    def problem_counts(self) -> dict[str, int]:
        """Problem kind -> number of problems, sorted by kind."""
        counts = Counter(problem.kind for problem in self.problems)
        return dict(sorted(counts.items()))

    @property
    def severity_counts(self) -> dict[str, int]:
        counts = Counter(problem.severity for problem in self.problems)
        return {str(severity): counts.get(severity, 0) for severity in Severity}

    @property
    def has_errors(self) -> bool:
        return any(problem.severity is Severity.ERROR for problem in self.problems)

    @property
    def has_warnings(self) -> bool:
        return any(problem.severity is Severity.WARNING for problem in self.problems)

    def exit_code(self, strict: bool = False) -> int:
        """The process exit code: 0 unless `strict` and any ERROR or WARNING was found.

        Without `strict` a check succeeds even when samples are excluded: they are listed, and
        the rest of the work goes on with the usable samples.
        """
        return int(strict and (self.has_errors or self.has_warnings))

    def with_problems(self, problems: Sequence[Problem]) -> CheckReport:
        """This report with dataset-level findings of later checks added (e.g. the colour order)."""
        table = self.table.with_samples(self.table.samples)
        table.add_problems(problems)
        return dataclasses.replace(self, table=table)

    def usable(self) -> SampleTable:
        """The checked table without the samples that have an ERROR problem."""
        return self.table.usable()

    @property
    def images_readable(self) -> int:
        return len(
            {str(s.path) for s, f in zip(self.table.samples, self.facts, strict=True) if f is not None}
        )

    @property
    def images_per_second(self) -> float:
        return self.images_opened / self.seconds if self.seconds > 0 else 0.0

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Class -> {"samples": all samples, "usable": samples kept}, in `table.classes` order."""
        everything = self.table.class_counts()
        kept = self.usable().class_counts()
        names = class_names(self.table)
        return {name: {"samples": everything.get(name, 0), "usable": kept.get(name, 0)} for name in names}

    # --- output ---------------------------------------------------------------------------

    def to_dict(self, include_images: bool = True) -> dict[str, object]:
        """JSON-ready, with stable keys; every problem in full. `images` (per-sample facts,
        aligned with the table) can be left out for a short report. Every string is valid UTF-8:
        bytes of a file name that are not show as \\xNN (`carid.data.text.file_text`)."""
        usable = len(self.usable())
        result: dict[str, object] = {
            "root": str(self.table.root),
            "format": self.table.format,
            "summary": {
                "samples": len(self.table),
                "images_opened": self.images_opened,
                "images_readable": self.images_readable,
                "usable": usable,
                "excluded": len(self.table) - usable,
                "classes": len(class_names(self.table)),
                "exact_duplicate_groups": sum(g.kind == "exact" for g in self.duplicate_groups),
                "near_duplicate_groups": sum(g.kind == "near" for g in self.duplicate_groups),
                **self.severity_counts,
            },
            "timing": {
                "seconds": round(self.seconds, 3),
                "probe_seconds": round(self.probe_seconds, 3),
                "images_per_second": round(self.images_per_second, 1),
                "workers": self.workers,
            },
            "config": dataclasses.asdict(self.config),
            "problem_counts": self.problem_counts,
            "class_counts": self.class_counts(),
            "duplicate_groups": [group.to_dict() for group in self.duplicate_groups],
            "problems": [problem.to_dict() for problem in self.problems],
        }
        if include_images:
            result["images"] = [
                {
                    "path": str(sample.path),
                    "readable": facts is not None,
                    **(facts.to_dict() if facts else {}),
                }
                for sample, facts in zip(self.table.samples, self.facts, strict=True)
            ]
        return safe_for_files(result)

    def write_json(self, path: Path | str, include_images: bool = True) -> Path:
        """Write `to_dict()` as indented JSON, atomically (temporary name, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(include_images), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def print_summary(self, console: Console) -> None:
        """One row per problem kind (severity, count, up to 3 example files), then the totals."""
        base = display_base(self.table.root)
        by_kind: dict[str, list[Problem]] = {}
        for problem in self.problems:
            by_kind.setdefault(problem.kind, []).append(problem)
        if by_kind:
            title = f"Data check: {console_text(self.table.root)} ({console_text(self.table.format)})"
            table = Table(title=title, title_justify="left")
            table.add_column("severity")
            table.add_column("problem")
            table.add_column("count", justify="right")
            table.add_column("examples", overflow="fold")
            rows = sorted(
                by_kind.items(),
                key=lambda item: (min(_SEVERITY_RANK[p.severity] for p in item[1]), -len(item[1]), item[0]),
            )
            for kind, problems in rows:
                severity = min((p.severity for p in problems), key=_SEVERITY_RANK.__getitem__)
                table.add_row(
                    f"[{_SEVERITY_STYLE[severity]}]{severity}[/]",
                    console_text(kind),
                    str(len(problems)),
                    console_text(_examples(problems, base)),
                )
            console.print(table)
        else:
            console.print(f"[green]No problems found in {console_text(self.table.root)}[/]")
        summary = self.to_dict(include_images=False)["summary"]
        assert isinstance(summary, dict)
        counts = [entry["usable"] for entry in self.class_counts().values()]
        per_class = f" ({min(counts)}-{max(counts)} usable per class)" if counts else ""
        console.print(
            f"samples {summary['samples']}, files opened {self.images_opened} "
            f"({self.images_opened - self.images_readable} unreadable); "
            f"usable {summary['usable']}, excluded {summary['excluded']}; "
            f"classes {summary['classes']}{per_class}"
        )
        console.print(
            f"duplicate groups: {summary['exact_duplicate_groups']} exact, "
            f"{summary['near_duplicate_groups']} near; "
            f"{self.seconds:.1f} s ({self.images_per_second:.0f} images/s, {self.workers} worker(s))"
        )
        errors, warnings, infos = (summary[str(s)] for s in Severity)
        style = "bold red" if errors else "yellow" if warnings else "green"
        console.print(f"[{style}]{errors} error(s), {warnings} warning(s), {infos} info(s)[/]")


# --- display --------------------------------------------------------------------------------


def display_base(root: Path) -> Path:
    """The folder names are shown relative to: the dataset root, or its folder when it is a file."""
    root = Path(root)
    return root.parent if root.is_file() else root  # a reader may give an annotation file as root


def display_name(path: Path | str, base: Path) -> str:
    """The path relative to the dataset root when it lies under it, else as given."""
    path = Path(path)
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _examples(problems: Sequence[Problem], base: Path) -> str:
    names: list[str] = []
    for problem in problems:
        name = display_name(problem.path, base) if problem.path else problem.source
        if name not in names:
            names.append(name)
    shown = ", ".join(names[:SUMMARY_EXAMPLES])
    more = len(names) - SUMMARY_EXAMPLES
    return f"{shown} (+{more} more)" if more > 0 else shown
