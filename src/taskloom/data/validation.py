"""Great Expectations suites per task type: is a task's data fit to train on?

    taskloom validate runs/tasks/rt-sentiment/task.yaml --out runs/tasks/rt-sentiment

Rows are first loaded field by field (`load_rows`: a malformed file stops here with one line).
Then each split becomes a pandas batch in one ephemeral GX context and is checked by a suite of
`gxe.Expect...` objects, grouped into named checks:

    schema, nulls, label_set, text_lengths, score_range, duplicates, min_rows   (errors)
    leakage (eval texts that also appear in train)                              (error)
    class_balance (smallest class far below an even share)                      (warning)

Errors fail validation (exit 2); warnings are reported but do not fail.
"""

from __future__ import annotations

import html
import io
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from taskloom.data.rows import load_numbered_rows
from taskloom.models.registry import resolve_base
from taskloom.pages import page
from taskloom.tasks.types import BALANCE_FRACTION, TASK_TYPES

MIN_ROWS = {"train": 20, "eval": 10}
MAX_TEXT_CHARS = 10_000  # longer than any document taskloom trains on; catches pasted files


@dataclass
class Check:
    """One named check of one split, aggregated over its expectations."""

    name: str
    split: str
    severity: str  # "error" | "warning"
    success: bool
    observed: str
    detail: str = ""

    @property
    def status(self) -> str:
        if self.success:
            return "ok"
        return "FAILED" if self.severity == "error" else "warn"


@dataclass
class ValidationReport:
    task: str
    type: str
    checks: list[Check]
    rows: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    engine: str = ""

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks if c.severity == "error")

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.success and c.severity == "error"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if not c.success and c.severity == "warning"]

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "type": self.type,
            "success": self.success,
            "rows": self.rows,
            "files": self.files,
            "engine": self.engine,
            "failed": [c.name for c in self.failures],
            "warnings": [c.name for c in self.warnings],
            "checks": [{**asdict(c), "status": c.status} for c in self.checks],
        }

    def render(self) -> str:
        """A plain-text table (no colour codes): check, split, severity, observed, result."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        verdict = "PASSED" if self.success else "FAILED"
        extra = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        rows = ", ".join(f"{k} {v} rows" for k, v in self.rows.items())
        table = Table(title=escape(f"validation of {self.task} ({self.type}; {rows}): {verdict}{extra}"))
        for col in ("check", "split", "severity", "observed", "result"):
            table.add_column(col, overflow="fold")
        for c in self.checks:
            table.add_row(*(escape(v) for v in (c.name, c.split, c.severity, c.observed, c.status)))
        buf = io.StringIO()
        console = Console(file=buf, width=120, color_system=None, force_terminal=False)
        console.print(table)
        for c in self.failures + self.warnings:
            console.print(
                f"{c.status}: {c.name} ({c.split}): {c.detail}", soft_wrap=True, markup=False, highlight=False
            )
        return buf.getvalue()

    def to_html(self) -> str:
        verdict = "PASSED" if self.success else "FAILED"
        head = "".join(f"<th>{h}</th>" for h in ("check", "split", "severity", "observed", "result", "detail"))
        body = "".join(
            f'<tr class="{c.status.lower()}">'
            + "".join(
                f"<td>{html.escape(str(v))}</td>" for v in (c.name, c.split, c.severity, c.observed, c.status, c.detail)
            )
            + "</tr>"
            for c in self.checks
        )
        title = f"validation of {self.task}: {verdict}"
        heading = f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(self.engine)}</p>"
        return page(title, f"{heading}<div class='text'><table><tr>{head}</tr>{body}</table></div>")


def _key(text) -> str:
    """Texts that differ only in case or spacing count as the same text."""
    return " ".join(str(text).split()).casefold()


def _frame(numbered: list[tuple[int, dict]], task_type: str):
    """Rows as a DataFrame indexed by row number, plus a normalised `_key_<field>` per identity field."""
    import pandas as pd

    df = pd.DataFrame([r for _, r in numbered], index=[n for n, _ in numbered])
    for f in TASK_TYPES[task_type].identity_fields:
        if f in df.columns:
            df[f"_key_{f}"] = df[f].map(_key)
    return df


def _suite(task_type: str, labels: list[str] | None, split: str, train_keys: list[str] | None):
    """[(check, severity, field, expectation)] for one split."""
    import great_expectations.expectations as gxe

    items: list[tuple[str, str, str | None, Any]] = []

    def add(check, severity, fld, exp):
        items.append((check, severity, fld, exp))

    kind = TASK_TYPES[task_type]
    for f in kind.fields:
        add("schema", "error", f, gxe.ExpectColumnToExist(column=f))
        add("nulls", "error", f, gxe.ExpectColumnValuesToNotBeNull(column=f))
    items += kind.expectations(labels)  # the type's own: label set and balance, score range, ...
    for f in kind.text_fields:
        add(
            "text_lengths",
            "error",
            f,
            gxe.ExpectColumnValueLengthsToBeBetween(column=f, min_value=1, max_value=MAX_TEXT_CHARS),
        )
        add("text_lengths", "error", f, gxe.ExpectColumnValuesToNotMatchRegex(column=f, regex=r"^\s*$"))
    keys = [f"_key_{f}" for f in kind.identity_fields]
    if len(keys) == 1:
        add("duplicates", "error", kind.identity_fields[0], gxe.ExpectColumnValuesToBeUnique(column=keys[0]))
    else:
        add(
            "duplicates", "error", "+".join(kind.identity_fields), gxe.ExpectCompoundColumnsToBeUnique(column_list=keys)
        )
    add("min_rows", "error", None, gxe.ExpectTableRowCountToBeBetween(min_value=MIN_ROWS[split]))
    if split == "eval" and train_keys is not None:
        for f in kind.identity_fields:
            add("leakage", "error", f, gxe.ExpectColumnValuesToNotBeInSet(column=f"_key_{f}", value_set=train_keys))
    return items


def _gx_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def _run_split(source, split: str, df, items, task: str):
    """Validate one batch; returns [(check, severity, field, result)] in suite order."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=f"{task}-{split}")
    for i, (check, _sev, _f, exp) in enumerate(items):
        exp.meta = {"check": check, "i": i}
        suite.add_expectation(exp)
    asset = source.add_dataframe_asset(name=split)
    batch = asset.add_batch_definition_whole_dataframe(f"{split}-all").get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(suite, result_format="SUMMARY")
    by_index = {r.expectation_config.meta["i"]: r for r in result.results}
    if len(by_index) != len(items):
        raise RuntimeError(f"GX returned {len(by_index)} results for {len(items)} expectations")
    return [(check, sev, f, by_index[i]) for i, (check, sev, f, _exp) in enumerate(items)]


def _describe(check: str, fld: str | None, res, path: Path, labels, split: str) -> tuple[str, str]:
    """(observed, detail) of one expectation result, naming file, row and field when it failed."""
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return "error", f"{path}: field {fld!r}: Great Expectations could not evaluate: {info.get('exception_message')}"
    r = res.result or {}
    bad = r.get("unexpected_count", 0) or 0
    rows = r.get("partial_unexpected_index_list") or []
    values = r.get("partial_unexpected_list") or []
    first_row = rows[0] if rows else None
    first_value = values[0] if values else None
    at = f"{path}: row {first_row}: field {fld!r}" if first_row is not None else f"{path}: field {fld!r}"
    if check == "schema":
        return ("present" if res.success else "missing"), f"{path}: field {fld!r}: column missing"
    if check == "min_rows":
        obs = r.get("observed_value")
        return f"{obs} rows (min {MIN_ROWS[split]})", f"{path}: {obs} rows, need at least {MIN_ROWS[split]}"
    if check == "class_balance":
        share = _share(res)
        need = BALANCE_FRACTION / max(len(labels or []), 1)
        return (
            f"{fld!r} {share:.1%} (min {need:.1%})",
            f"{path}: label {fld!r} is {share:.1%} of rows, below {need:.1%}",
        )
    if check == "nulls":
        return f"{bad} null", f"{at}: is null"
    if check == "label_set":
        return f"{bad} unknown", f"{at}: {first_value!r} is not one of [{', '.join(labels or [])}]"
    if check == "score_range":
        return f"{bad} outside [0, 1]", f"{at}: {first_value!r} is outside [0, 1]"
    if check == "text_lengths":
        return (
            f"{bad} empty or > {MAX_TEXT_CHARS} chars",
            f"{at}: empty, blank or longer than {MAX_TEXT_CHARS} characters",
        )
    if check == "duplicates":
        return (
            f"{bad} duplicated rows",
            f"{at}: the same text appears more than once in {path.name} (rows {', '.join(map(str, rows[:5]))})",
        )
    if check == "leakage":
        return f"{bad} eval texts in train", f"{at}: also in the train split ({bad} eval rows leak)"
    return f"{bad} unexpected", at


def _share(res) -> float:
    """The share of rows with the one label a class_balance expectation looks for."""
    r = res.result or {}
    if not r.get("element_count"):
        return 0.0
    return 1 - (r.get("unexpected_percent_nonmissing") or 0) / 100


def _aggregate(results, paths: dict[str, Path], labels, split: str) -> list[Check]:
    """Fold expectation results into one Check per check name, in first-seen order."""
    order: list[str] = []
    grouped: dict[str, list] = {}
    for check, sev, fld, res in results:
        if check not in grouped:
            order.append(check)
            grouped[check] = []
        grouped[check].append((sev, fld, res))
    checks = []
    for name in order:
        parts = grouped[name]
        described = [(res.success, *_describe(name, fld, res, paths[split], labels, split)) for _s, fld, res in parts]
        ok = all(s for s, _o, _d in described)
        failing = [(o, d) for s, o, d in described if not s]
        if name == "class_balance":
            # report the smallest class whether or not it passes
            observed = described[min(range(len(parts)), key=lambda i: _share(parts[i][2]))][1]
        elif name == "schema":
            observed = (
                "all columns present" if ok else "missing: " + ", ".join(f for (_s, f, r) in parts if not r.success)
            )
        elif failing:
            observed = "; ".join(o for o, _d in failing)
        else:
            observed = described[0][1]
        checks.append(Check(name, split, parts[0][0], ok, observed, failing[0][1] if failing else ""))
    return checks


def validate_task(spec) -> ValidationReport:
    """Run the GX suite of the task's type over its train and eval files.

    Raises UserError for what stops validation outright: an unknown base model or a malformed file.
    """
    resolve_base(spec.base_model)
    paths = {"train": spec.train_path, "eval": spec.eval_path}
    numbered = {split: load_numbered_rows(p, spec.type) for split, p in paths.items()}
    frames = {split: _frame(rows, spec.type) for split, rows in numbered.items()}
    train_keys = sorted({k for f in TASK_TYPES[spec.type].identity_fields for k in frames["train"][f"_key_{f}"]})

    source = _gx_context().data_sources.add_pandas(name="taskloom")
    checks: list[Check] = []
    for split in ("train", "eval"):
        items = _suite(spec.type, spec.labels, split, train_keys if split == "eval" else None)
        results = _run_split(source, split, frames[split], items, spec.name)
        checks += _aggregate(results, paths, spec.labels, split)
    return ValidationReport(
        task=spec.name,
        type=spec.type,
        checks=checks,
        rows={s: len(r) for s, r in numbered.items()},
        files={s: str(p) for s, p in paths.items()},
        engine=f"great_expectations {version('great_expectations')}",
    )
