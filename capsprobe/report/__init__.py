"""Reports: the folder on disk, the sections a task renders, the suite's section, plots and the HTML/markdown page."""

from __future__ import annotations

from .folder import (  # noqa: F401
    ReportData,
    ReportError,
    ReportExistsError,
    check_report_target,
    compact_table,
    read_probe_outputs,
    write_probe_outputs,
)
from .render import (  # noqa: F401
    COMPARISON_TABLES,
    SectionFor,
    recompare_report,
    render_report,
)
from .section import (  # noqa: F401
    FigureSpec,
    Section,
    figure_png,
    grid_figures,
    pct,
)
from .suite import (  # noqa: F401
    KEY_CONDITIONS,
    METHODS_NOTE,
    SUITE_FIGURES,
    ablation_table,
    headlines,
    lie_figures,
    lie_table,
    suite_section,
)

__all__ = [
    "COMPARISON_TABLES",
    "FigureSpec",
    "KEY_CONDITIONS",
    "METHODS_NOTE",
    "ReportData",
    "ReportError",
    "ReportExistsError",
    "SUITE_FIGURES",
    "Section",
    "SectionFor",
    "ablation_table",
    "check_report_target",
    "compact_table",
    "figure_png",
    "grid_figures",
    "headlines",
    "lie_figures",
    "lie_table",
    "pct",
    "read_probe_outputs",
    "recompare_report",
    "render_report",
    "suite_section",
    "write_probe_outputs",
]
