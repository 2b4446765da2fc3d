"""The generated parts of the documentation site, and the MkDocs hook that puts them in at build time.

A page under ``docs/`` asks for a generated part with a marker on a line of its own, ``<!-- generated: NAME -->`` or
``<!-- generated: NAME ARGUMENT -->``; :data:`GENERATORS` maps each name to a function ``fn(argument) -> markdown``:

- ``cli``: every command of the typer app (``capsprobe.cli.app``) walked through click: usage, help, arguments and
  options with their types, choices and defaults (nothing copied by hand);
- ``transforms``, ``metrics``: the registries (``capsprobe.transforms.suite.TRANSFORMS``,
  ``capsprobe.metrics.registry.METRICS``), each entry with its definition (its function's docstring, or its label)
  and its source;
- ``protocol NAME``: ``experiments/NAME.toml``'s leading comment block, its sizes (data, models, seeds, stopping
  rule, each with its comment) and its declared ``[[claims]]``; ``protocols``: the list of the experiment files;
- ``results``: the declared claims' verdicts from the committed CSVs (``reports/claims.csv``,
  ``reports/*/claims.csv``): every number on that page is read from a CSV when the site is built;
- ``changelog``: ``CHANGELOG.md``.

Links are written as they resolve in the repository (``../reports/affnist/report.md`` from ``docs/results.md``), so
they work on a forge too; the hook mounts the repository files they reach outside ``docs/`` under ``repo/`` in the
site (a report's page, its figures, a CSV, an experiment file) and rewrites the links to them.

``python docs/gen_pages.py OUT`` writes every page with its markers filled into ``OUT`` (to read them without MkDocs).
"""

from __future__ import annotations

import csv
import inspect
import posixpath
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXPERIMENTS = ROOT / "experiments"
REPORTS = ROOT / "reports"
MOUNT = "repo"  # where repository files outside docs/ go in the site

MARKER = re.compile(r"^<!-- generated: ([a-z-]+)(?: (\S+))? -->$", re.M)
# a markdown link or image target, an HTML src/href; the target stops at whitespace or the closing parenthesis
LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))|((?:src|href)=\")([^\"]+)(\")")

__all__ = ["GENERATORS", "expand", "links", "protocol_names", "render_all"]


def _cell(text: Any) -> str:
    """A table cell: one line, pipes escaped, ``<`` and ``>`` outside code spans written as entities (``runs/<name>``
    is text, not an HTML tag)."""
    return _entities(" ".join(str(text).split()).replace("|", "\\|"))


def _entities(text: str) -> str:
    """``<`` and ``>`` outside code spans as entities."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;").replace(">", "&gt;") for i, part in enumerate(parts))


def _first_paragraph(doc: str | None) -> str:
    return _cell(inspect.cleandoc(doc).split("\n\n", 1)[0]) if doc else ""


# --- the command line --------------------------------------------------------------------------------------------


def _help_text(text: str | None) -> str:
    """Click's help text as markdown: ``\\b`` (keep the lines) and the paragraphs kept."""
    if not text:
        return ""
    text = inspect.cleandoc(text).split("\f", 1)[0]
    out = []
    for para in text.split("\n\n"):
        if para.startswith("\b\n"):
            out.append("\n".join(line + "  " for line in para[2:].splitlines()))
        else:
            out.append(" ".join(para.split()))
    return _entities("\n\n".join(out))


def _command(cmd: Any, path: list[str], ctx_parent: Any, level: int) -> list[str]:
    # duck-typed: typer may bring its own copy of click (typer._click), whose classes are not click's
    ctx = cmd.context_class(cmd, info_name=path[-1], parent=ctx_parent)
    usage = " ".join([*path, *cmd.collect_usage_pieces(ctx)])
    lines = [f"{'#' * level} `{' '.join(path)}`", "", _help_text(cmd.help), "", "```text", usage, "```", ""]
    params = [p for p in cmd.params if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    records = [p.get_help_record(ctx) for p in params if p.param_type_name == "option"]
    help_option = cmd.get_help_option(ctx)
    if help_option is not None:
        records.append(help_option.get_help_record(ctx))
    if arguments:
        lines += ["| argument | required | help |", "| --- | --- | --- |"]
        for p in arguments:
            many = " ..." if p.nargs == -1 else ""
            lines.append(f"| `{p.name.upper()}{many}` | {'yes' if p.required else 'no'} | "
                         f"{_cell(getattr(p, 'help', '') or '')} |")
        lines.append("")
    if any(records):
        lines += ["| option | help |", "| --- | --- |"]
        lines += [f"| `{_cell(names)}` | {_cell(text)} |" for names, text in filter(None, records)]
        lines.append("")
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                lines += _command(sub, [*path, name], ctx, level + 1)
    return lines


def cli_reference(_: str | None = None) -> str:
    """Every command of ``capsprobe.cli.app``, from the typer app itself (through click)."""
    import typer

    from capsprobe.cli import app

    group = typer.main.get_command(app)
    return "\n".join(_command(group, ["capsprobe"], None, 3)).rstrip() + "\n"


def command_names() -> list[str]:
    """The commands of ``capsprobe.cli.app`` (what :func:`cli_reference` must mention)."""
    import typer

    from capsprobe.cli import app

    group: Any = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="capsprobe")
    return [n for n in group.list_commands(ctx) if not group.get_command(ctx, n).hidden]


# --- the registries ----------------------------------------------------------------------------------------------


def _magnitudes(t: Any) -> str:
    grid = ", ".join(str(g) for g in t.grid)
    if t.low is not None and t.high is not None:
        return f"{t.low:g} ... {t.high:g} ({t.unit}); grid {grid}"
    return f"{grid} ({t.unit})"


def transforms_table(_: str | None = None) -> str:
    """The transformation registry: name, magnitudes, identity, kind, and the function's definition."""
    from capsprobe.transforms.suite import GROUPS, SUITE, TRANSFORMS

    lines = ["| transform | definition | magnitudes | identity | kind | function |", "| --- | --- | --- | --- | --- | --- |"]
    for name, t in TRANSFORMS.items():
        kind = t.kind + (f" (semantic from \\|m\\| >= {t.semantic_from:g})" if t.semantic_from is not None else "")
        if t.worst_case:
            kind += ", chosen against the model"
        fn = f"`{t.fn.__module__}.{t.fn.__name__}`"
        lines.append(f"| `{name}` | {_first_paragraph(t.fn.__doc__)} | {_cell(_magnitudes(t))} | `{t.identity}` | "
                     f"{kind} | {fn} |")
    lines += ["", f"`-t all` is the suite: {', '.join(f'`{s}`' for s in SUITE)}; "
              + "; ".join(f"`-t {g}` asks for {', '.join(f'`{m}`' for m in members)}" for g, members in GROUPS.items())
              + ". The others are asked for by name."]
    return "\n".join(lines) + "\n"


def metrics_table(_: str | None = None) -> str:
    """The metric registry: name, label, what it needs, which way is better, and its source."""
    from capsprobe.metrics.registry import METRICS

    lines = ["| metric | label | better | needs | source |", "| --- | --- | --- | --- | --- |"]
    for name, m in METRICS.items():
        needs = ", ".join(sorted(m.needs))
        doc = _first_paragraph(m.fn.__doc__) if m.fn is not None else ""
        label = _cell(m.label) + (f": {doc}" if doc else "")
        lines.append(f"| `{name}` | {label} | {m.better} | {_cell(needs)} | {_cell(m.source) or '-'} |")
    return "\n".join(lines) + "\n"


# --- the protocols -----------------------------------------------------------------------------------------------


def protocol_names() -> list[str]:
    """The experiment files, by name (``experiments/NAME.toml``)."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.toml"))


def _comment_before(lines: list[str], index: int) -> str:
    """The comment block right above line ``index`` (a header), as one paragraph per blank ``#`` line."""
    block: list[str] = []
    i = index - 1
    while i >= 0 and lines[i].startswith("#"):
        block.insert(0, lines[i][1:].strip())
        i -= 1
    return _paragraphs(block)


def _paragraphs(block: list[str]) -> str:
    paras, current = [], []
    for line in block:
        if line:
            current.append(line)
        elif current:
            paras.append(" ".join(current))
            current = []
    if current:
        paras.append(" ".join(current))
    return _entities("\n\n".join(paras))


def _leading_comment(lines: list[str]) -> str:
    block = []
    for line in lines:
        if not line.startswith("#"):
            break
        block.append(line[1:].strip())
    return _paragraphs(block)


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return str(value)


def _model_row(spec: dict, seeds: Any) -> str:
    name = spec.get("label") or spec["model"]
    options = _inline(spec.get("options", {})) if spec.get("options") else ""
    train = _inline(spec.get("train", {})) if spec.get("train") else ""
    return (f"| `{name}` | `{spec['model']}` | {spec.get('epochs', '')} | {_inline(spec.get('seeds', seeds))} | "
            f"{_cell(options)} | {_cell(train)} |")


def protocol_page(name: str | None) -> str:
    """``experiments/NAME.toml``: what it is (its leading comment), how to run it, every size and the declared claims."""
    if not name:
        raise ValueError("the protocol marker names its experiment file: <!-- generated: protocol NAME -->")
    path = EXPERIMENTS / f"{name}.toml"
    text = path.read_text()
    lines = text.splitlines()
    data = tomllib.loads(text)
    out = [f"*Generated from [`experiments/{name}.toml`](../../experiments/{name}.toml) when the site is built.*", "",
           _leading_comment(lines), ""]
    if data.get("description"):
        out += [f"**In one line:** {data['description']}.", ""]
    base_data = data.get("data", {})
    probe = data.get("probe", {})
    train = data.get("train", {})
    out += ["```bash", f"capsprobe run experiments/{name}.toml --size SIZE --dry-run   # the plan and an estimated time",
            f"capsprobe run experiments/{name}.toml --size SIZE --data-root ../shared/data", "```", ""]
    common = []
    if base_data.get("dataset"):
        common.append(f"data set `{base_data['dataset']}`")
    if train:
        common.append("training " + ", ".join(f"`{k} = {_inline(v)}`" for k, v in train.items()))
    if probe:
        common.append("probe " + ", ".join(f"`{k} = {_inline(v)}`" for k, v in probe.items()))
    if common:
        out += ["Every size: " + "; ".join(common) + ".", ""]
    sizes = data.get("sizes", {})
    if sizes:
        out += ["## Sizes", ""]
    for size, spec in sizes.items():
        header = next((i for i, line in enumerate(lines) if line.strip() == f"[sizes.{size}]"), None)
        out += [f"### `{size}`", ""]
        comment = _comment_before(lines, header) if header is not None else ""
        if comment:
            out += [comment, ""]
        facts = []
        for key in ("dataset", "limit", "probe_limit", "bootstrap", "transforms", "magnitudes", "attack_steps", "lie"):
            if key in spec:
                facts.append(f"`{key} = {_inline(spec[key])}`")
        if isinstance(spec.get("train"), dict):
            facts += [f"`train.{k} = {_inline(v)}`" for k, v in spec["train"].items()]
        if "surrogate" in spec:
            facts.append(f"surrogate `{_inline(spec['surrogate'])}`")
        if facts:
            out += ["Settings: " + ", ".join(facts) + ".", ""]
        seeds = spec.get("seeds", [0])
        if spec.get("models"):
            out += ["| name | model | epochs | seeds | options | training |", "| --- | --- | ---: | --- | --- | --- |"]
            out += [_model_row(m, seeds) for m in spec["models"]]
            out.append("")
    claims = data.get("claims", [])
    out += ["## Declared claims", ""]
    if claims:
        first = next(i for i, line in enumerate(lines) if line.strip() == "[[claims]]")
        comment = _comment_before(lines, first)
        if comment:
            out += [comment, ""]
        out += ["| claim | statement | a - b | metric | condition | direction | sizes |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in claims:
            direction = c.get("direction", "")
            if direction == "alike" and "margin" in c:
                direction = f"alike within {c['margin']:g}"
            sizes_of = ", ".join(c.get("sizes", [])) or "every size"
            out.append(f"| `{c['name']}` | {_cell(c.get('statement', ''))} | `{c['a']}` - `{c['b']}` | "
                       f"`{c.get('metric', '')}` | `{c.get('condition', '')}` | {direction} | {sizes_of} |")
        out.append("")
    else:
        out += ["None: this file declares no claim (its report is exploratory).", ""]
    report = REPORTS / name / "report.md"
    if report.exists():
        out += ["## Committed report", "",
                f"[`reports/{name}/`](../../reports/{name}/report.md); its verdicts are on the "
                f"[results page](../results.md#{name}).", ""]
    return "\n".join(out).rstrip() + "\n"


def protocols_index(_: str | None = None) -> str:
    """One line per experiment file: its page and its description."""
    lines = ["| experiment file | what it runs |", "| --- | --- |"]
    for name in protocol_names():
        data = tomllib.loads((EXPERIMENTS / f"{name}.toml").read_text())
        lines.append(f"| [`{name}.toml`]({name}.md) | {_cell(data.get('description', ''))} |")
    return "\n".join(lines) + "\n"


# --- the results -------------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _estimate(row: dict[str, str]) -> str:
    """``a - b [family interval]``: accuracy and consistency in points, the rest to 3 decimals (as ``capsprobe claims``
    writes them)."""
    d, lo, hi = (_number(row.get(k, "")) for k in ("difference", "ci_low_adjusted", "ci_high_adjusted"))
    if d is None:
        return "-"
    if row.get("metric") in ("accuracy", "consistency"):
        text = f"{100 * d:+.1f} pts"
        if lo is not None and hi is not None:
            text += f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        return text
    text = f"{d:+.3f}"
    if lo is not None and hi is not None:
        text += f" [{lo:+.3f}, {hi:+.3f}]"
    return text


def _measure(row: dict[str, str]) -> str:
    return f"{row['metric']} at {row['transform']} {row['magnitude']} ({row['a']} - {row['b']})"


def _protocol_of(report: str) -> str | None:
    """The experiment file that writes a report folder: its name, or the longest name it starts with
    (``routing-affnist`` is ``routing.toml``'s ``quick-affnist`` size)."""
    names = [n for n in protocol_names() if report == n or report.startswith(n + "-")]
    return max(names, key=len) if names else None


def report_names() -> list[str]:
    """The committed report folders that hold a ``claims.csv``."""
    return sorted(p.parent.name for p in REPORTS.glob("*/claims.csv"))


def _replicates(rows: list[dict[str, str]]) -> list[str]:
    """A replicate study's claims (one row per replicate and claim): per claim, how many replicates decided it."""
    replicates = sorted({r["replicate"] for r in rows}, key=int)
    decided = {r["replicate"] for r in rows if r["verdict"] not in ("inconclusive", "")}
    out = [f"{len(replicates)} replicates of the A/A recipe; {len(decided)} of them decided at least one claim "
           "(each such verdict is a false positive: the two labels are one recipe).", "",
           "| claim | replicates | decided | raw p < 0.05 |", "| --- | ---: | ---: | ---: |"]
    for claim in sorted({r["claim"] for r in rows}):
        mine = [r for r in rows if r["claim"] == claim]
        low = sum(1 for r in mine if (_number(r["p_value"]) or 1.0) < 0.05)
        n_decided = sum(1 for r in mine if r["verdict"] not in ("inconclusive", ""))
        out.append(f"| `{claim}` | {len(mine)} | {n_decided} | {low} |")
    return [*out, ""]


def results_page(_: str | None = None) -> str:
    """The declared claims' verdicts, study-wide and per report, read from the committed CSVs."""
    study = _read_csv(REPORTS / "claims.csv")
    verdicts: dict[str, int] = {}
    for row in study:
        verdicts[row["verdict_study"]] = verdicts.get(row["verdict_study"], 0) + 1
    reports = sorted({row["report"] for row in study})
    family = study[0]["study_family_size"] if study else "0"
    declared = sorted({row["declared"] for row in study})
    out = ["*Generated from [`reports/claims.csv`](../reports/claims.csv) and each report's `claims.csv` when the site "
           "is built: every number on this page is read from those files.*", "",
           "Claim by claim beside its source's words and numbers, with the protocol run and the seeds that would "
           "settle it: [the claims ledger](../reports/ledger.md) (`capsprobe ledger`).", "",
           "## The study-wide family", "",
           f"{len(study)} declared claims in {len(reports)} reports, tested in one study-wide Holm family of {family} "
           f"(declared {', '.join(declared) or '-'}). Study-wide verdicts: "
           + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())) + ".", "",
           "| report | claim | measure (a - b) | a - b [family interval] | seeds a / b | experiment | study |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in study:
        out.append(f"| [{row['report']}](#{row['report']}) | `{row['claim']}`: {_cell(row['statement'])} | "
                   f"{_cell(_measure(row))} | {_estimate(row)} | {row['seeds_a']} / {row['seeds_b']} | "
                   f"{row['verdict']} | {row['verdict_study']} |")
    out += ["", "## Each report's own family", "",
            "Each report's claims in its own Holm family (the experiment's verdict); the demo (one seed per model) and "
            "the A/A null are here and not in the study-wide family.", ""]
    for name in report_names():
        rows = _read_csv(REPORTS / name / "claims.csv")
        out += [f"### {name}", ""]
        links = [f"[`claims.csv`](../reports/{name}/claims.csv)"]
        if (REPORTS / name / "report.md").exists():
            links.insert(0, f"[the report](../reports/{name}/report.md)")
        elif (REPORTS / name / "README.md").exists():
            links.insert(0, f"[`README.md`](../reports/{name}/README.md)")
        protocol = _protocol_of(name)
        if protocol:
            links.append(f"[the protocol](protocols/{protocol}.md)")
        out += [", ".join(links) + ".", ""]
        if not rows:
            out += ["No declared claim.", ""]
            continue
        if "replicate" in rows[0]:
            out += _replicates(rows)
            continue
        out += ["| claim | measure (a - b) | a - b [family interval] | Holm p | seeds a / b | verdict | note |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in rows:
            p = _number(row.get("p_holm", ""))
            out.append(f"| `{row['claim']}` | {_cell(_measure(row))} | {_estimate(row)} | "
                       f"{'-' if p is None else f'{p:.3g}'} | {row.get('seeds_a', '')} / {row.get('seeds_b', '')} | "
                       f"{row.get('verdict', '')} | {_cell(row.get('note', ''))} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _span(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    lo, hi = min(values) * scale, max(values) * scale
    return f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}-{hi:.{digits}f}"


def _grouped(rows: list[dict[str, str]], keys: tuple[str, ...]) -> dict[tuple[str, ...], list[dict[str, str]]]:
    out: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return out


def calibration(_: str | None = None) -> str:
    """Summaries of ``reports/calibration/*.csv``: per method and seeds, the range over the simulated regimes."""
    folder = REPORTS / "calibration"
    out = []
    fitted = _read_csv(folder / "fitted.csv")
    out += ["### Fitted metrics over seeds and images (`fitted.csv`)", "",
            "Decodability, the gain, AUROCs and the Lie measures: `fitted` is the test the comparisons use (per-run "
            "image intervals added to the spread over seeds), `welch` Welch's t over the per-seed estimates. The range "
            "is over the simulated regimes and ratios of image to seed variance.", "",
            "| method | seeds | regimes | false positives at 5% (%) | coverage of the 95% interval (%) | "
            "rejections at 0.1% (%) |", "| --- | ---: | ---: | --- | --- | --- |"]
    for (method, seeds), rows in sorted(_grouped(fitted, ("method", "seeds")).items(),
                                         key=lambda kv: (kv[0][0], int(kv[0][1]))):
        fpr = [float(r["fpr"]) for r in rows]
        cov = [float(r["coverage"]) for r in rows]
        tail = [float(r["tail_fpr"]) for r in rows]
        out.append(f"| `{method}` | {seeds} | {len(rows)} | {_span(fpr)} | {_span(cov)} | {_span(tail, digits=3)} |")
    bounded = _read_csv(folder / "bounded.csv")
    out += ["", "### Intervals for shares (`bounded.csv`)", "",
            "Accuracy and consistency: coverage of the 95% interval on the logit scale (the method), the arcsine one "
            "and the untransformed t interval, and how often the t interval leaves [0, 1], over true shares "
            f"{_span([float(r['true_share']) for r in bounded], scale=1.0, digits=3).replace('-', ' to ')} and the "
            "simulated regimes.", "",
            "| seeds | cells | logit coverage (%) | arcsine coverage (%) | t coverage (%) | t outside [0, 1] (%) |",
            "| ---: | ---: | --- | --- | --- | --- |"]
    for (seeds,), rows in sorted(_grouped(bounded, ("seeds",)).items(), key=lambda kv: int(kv[0][0])):
        cols = [[float(r[c]) for r in rows] for c in ("coverage_logit", "coverage_arcsine", "coverage_t", "outside_t")]
        out.append(f"| {seeds} | {len(rows)} | " + " | ".join(_span(c) for c in cols) + " |")
    failing = _read_csv(folder / "failing_seeds.csv")
    out += ["", "### Failing seeds (`failing_seeds.csv`)", "",
            "Two models equal in population, one losing its low (or random) seeds with probability q: false "
            "positives at nominal 5% of the analysis of the survivors against the one of all seeds, the range over the "
            "regimes.", "",
            "| seeds | q | which seeds fail | survivors only (%) | all seeds (%) |", "| ---: | ---: | --- | --- | --- |"]
    for (seeds, q, selection), rows in sorted(_grouped(failing, ("seeds", "fail_prob", "selection")).items(),
                                              key=lambda kv: (int(kv[0][0]), float(kv[0][1]), kv[0][2])):
        out.append(f"| {seeds} | {float(q):g} | {selection} | {_span([float(r['fpr_survivors']) for r in rows])} | "
                   f"{_span([float(r['fpr_all']) for r in rows])} |")
    return "\n".join(out) + "\n"


# the demo's headline rows: (label, metric, transform, magnitude as summary.csv writes it, shown as a share)
DEMO_ROWS = (
    ("clean accuracy", "accuracy", "rotate", "0", True),
    ("accuracy, rotated 45 degrees", "accuracy", "rotate", "45", True),
    ("decision kept under a horizontal flip", "consistency", "flip", "horizontal", True),
    ("accuracy, left-right halves swapped", "accuracy", "swap", "left-right", True),
    ("gain of the fitted map over the identity (full-D), rotate 45", "equivariance_gain", "rotate", "45", False),
    ("gain of the fitted map over the identity (full-D), translate 4", "equivariance_gain", "translate", "4", False),
    ("scramble selectivity (AUROC minus matched nuisance), jigsaw 4", "scramble_selectivity", "jigsaw", "4", False),
    ("clean reconstruction error of the true-class capsule", "recon_fidelity_error", "rotate", "0", False),
)


def demo_table(name: str | None = None) -> str:
    """A committed report's headline numbers per model, read from its ``summary.csv`` (and the decodability from
    ``overview.csv``), with their 95% intervals over test images; ``-`` where a model has no such row."""
    folder = REPORTS / (name or "demo")
    summary = _read_csv(folder / "summary.csv")
    models = list(dict.fromkeys(r["model"] for r in summary))
    index = {(r["model"], r["metric"], r["transform"], r["magnitude"]): r for r in summary}

    def show(value: str, low: str, high: str, share: bool) -> str:
        v, lo, hi = _number(value), _number(low), _number(high)
        if v is None:
            return "-"
        if share:
            text = f"{100 * v:.1f}%" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else "")
        else:
            text = f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")
        return text

    out = [f"*Read from [`reports/{folder.name}/summary.csv`](../reports/{folder.name}/summary.csv) and `overview.csv` "
           "when the site is built; 95% intervals over test images.*", "",
           "| | " + " | ".join(f"`{m}`" for m in models) + " |", "| --- |" + " ---: |" * len(models)]
    for label, metric, transform, magnitude, share in DEMO_ROWS:
        cells = []
        for m in models:
            r = index.get((m, metric, transform, magnitude))
            cells.append(show(r["value"], r["ci_low"], r["ci_high"], share) if r else "-")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    overview = _read_csv(folder / "overview.csv")
    for transform in ("rotate", "translate", "scale", "shear"):
        cells = []
        for m in models:
            r = next((o for o in overview if o["model"] == m and o["transform"] == transform), None)
            cells.append(show(r["decodability"], r["decodability_low"], r["decodability_high"], False) if r else "-")
        out.append(f"| decodability of the magnitude (16-D), {transform} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def changelog(_: str | None = None) -> str:
    """``CHANGELOG.md`` without its title (the page has its own)."""
    text = (ROOT / "CHANGELOG.md").read_text()
    return re.sub(r"\A# [^\n]*\n", "", text).lstrip("\n")


GENERATORS: dict[str, Callable[[str | None], str]] = {
    "cli": cli_reference,
    "transforms": transforms_table,
    "metrics": metrics_table,
    "protocol": protocol_page,
    "protocols": protocols_index,
    "results": results_page,
    "changelog": changelog,
    "calibration": calibration,
    "demo": demo_table,
}


def expand(text: str) -> str:
    """``text`` with every marker replaced by its generator's output (an unknown name is an error)."""

    def fill(match: re.Match) -> str:
        name, argument = match.group(1), match.group(2)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated part {name!r} (known: {', '.join(GENERATORS)})")
        return GENERATORS[name](argument).rstrip("\n")

    return MARKER.sub(fill, text)


# --- links -------------------------------------------------------------------------------------------------------


def _split(target: str) -> tuple[str, str]:
    path, sep, anchor = target.partition("#")
    return path, sep + anchor


def links(text: str) -> list[str]:
    """The relative link and image targets of a markdown text (no URL, no anchor-only link), anchors dropped."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
    text = re.sub(r"`[^`\n]*`", "", text)
    out = []
    for m in LINK.finditer(text):
        target = m.group(2) or m.group(5)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            continue
        path, _ = _split(target)
        if path:
            out.append(path)
    return out


def resolve(page: str, target: str) -> str:
    """The repository path a relative ``target`` of the page at repository path ``page`` points to."""
    return posixpath.normpath(posixpath.join(posixpath.dirname(page), target))


def site_path(repo_path: str) -> str:
    """Where a repository file lands in the site: ``docs/X`` at ``X``, anything else under ``repo/``."""
    return repo_path[len("docs/"):] if repo_path.startswith("docs/") else f"{MOUNT}/{repo_path}"


def rewrite(text: str, page: str) -> str:
    """The links of the page at repository path ``page`` made relative to its place in the site."""
    here = posixpath.dirname(site_path(page))

    def fix(m: re.Match) -> str:
        target = m.group(2) or m.group(5)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return m.group(0)
        path, anchor = _split(target)
        new = posixpath.relpath(site_path(resolve(page, path)), here or ".") + anchor
        return f"{m.group(1)}{new}{m.group(3)}" if m.group(2) else f"{m.group(4)}{new}{m.group(6)}"

    return LINK.sub(fix, text)


def render_all() -> dict[str, str]:
    """Every page under ``docs/`` (by repository path) with its markers filled."""
    return {f"docs/{p.relative_to(DOCS).as_posix()}": expand(p.read_text()) for p in sorted(DOCS.rglob("*.md"))}


# --- the MkDocs hook ---------------------------------------------------------------------------------------------

_PAGES: dict[str, str] = {}  # repository path -> markdown with the markers filled and the links rewritten


def _mountable(repo_path: str) -> bool:
    return not repo_path.startswith(("docs/", "..", "/")) and (ROOT / repo_path).is_file()


def on_files(files: Any, config: Any) -> Any:
    """Fill the markers, then mount under ``repo/`` every repository file outside ``docs/`` that a page links
    (and, for a mounted page, the files it links: a report's figures)."""
    from mkdocs.structure.files import File, InclusionLevel

    _PAGES.clear()
    todo: list[str] = []
    for repo_path, text in render_all().items():
        _PAGES[repo_path] = text
        todo += [resolve(repo_path, t) for t in links(text)]
    mounted: set[str] = set()
    while todo:
        path = todo.pop()
        if path in mounted or not _mountable(path):
            continue  # a link into docs/ is MkDocs' own; a missing file stays broken, and --strict says so
        mounted.add(path)
        if path.endswith(".md"):
            text = (ROOT / path).read_text()
            _PAGES[path] = text
            todo += [resolve(path, t) for t in links(text)]
            files.append(File.generated(config, site_path(path), content=text, inclusion=InclusionLevel.NOT_IN_NAV))
        else:
            files.append(File.generated(config, site_path(path), abs_src_path=str(ROOT / path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """The page's markdown with its markers filled and its links pointing at their place in the site."""
    src = page.file.src_uri
    repo_path = src[len(MOUNT) + 1:] if src.startswith(f"{MOUNT}/") else f"docs/{src}"
    return rewrite(_PAGES.get(repo_path, expand(markdown)), repo_path)


# a Sphinx role in a docstring (":func:`load_run`") reaches the page as ":func:<code>load_run</code>"
SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj):(?=<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """The docstrings' Sphinx roles dropped from the rendered API reference (the name stays, as code; ``~a.b.C``
    shows ``C``, as Sphinx does)."""
    html = re.sub(SPHINX_ROLE.pattern + r"<code>~(?:[\w.]*\.)?(\w+)</code>", r"<code>\1</code>", html)
    return SPHINX_ROLE.sub("", html)


def main(argv: list[str]) -> int:
    """``python docs/gen_pages.py OUT``: write every page with its markers filled into ``OUT``."""
    if len(argv) != 1:
        print("usage: python docs/gen_pages.py OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for repo_path, text in render_all().items():
        target = out / repo_path[len("docs/"):]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
