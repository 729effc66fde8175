"""Great Expectations suites per task type: is a task's data fit to train on?

    taskloom validate runs/tasks/rt-sentiment/task.yaml --out runs/tasks/rt-sentiment

Rows are first read one by one (`read_rows`): a bad row (malformed, not UTF-8, too deep, wrong type,
blank text, unknown label) is counted and dropped, and is an error only beyond the task's allowance.
Each split's good rows then become a pandas batch in one ephemeral GX context, checked by a suite of
`gxe.Expect...` objects grouped into named checks; repeats and train/eval leakage are found by row
key. Defaults (each is set in task.yaml's `validation:` block, taskloom.specs.ValidationPolicy):

    bad_rows (error above 1 % of a split, else a warning; the rows are dropped)
    schema, nulls, label_set, score_range, text_lengths, min_rows                (errors)
    duplicates (the same row again: same text and label, the same pair)          (warning)
    conflicts (the same text with different labels; pairs: different scores)   (error above 1 %)
    leakage (eval rows whose text also appears in train, named by row)           (warning)
    class_balance (smallest class far below an even share)                      (warning)

Errors fail validation (exit 2); warnings are reported but do not fail. Real corpora repeat short
texts ("Yes.", "OK."): a repeat with the same label only warns; a contradiction is what hurts.
"""

from __future__ import annotations

import html
import io
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskloom.data.rows import RowsRead, read_rows
from taskloom.models.registry import resolve_base
from taskloom.pages import page
from taskloom.tasks.types import BALANCE_FRACTION, TASK_TYPES, TaskType

if TYPE_CHECKING:  # the policy is read from the TaskSpec handed in; the data layer does not import specs
    from taskloom.specs import ValidationPolicy

EXAMPLES = 3  # rows named in a detail before "and N more"


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
    rows: dict[str, int] = field(default_factory=dict)  # good rows per split (what training reads)
    files: dict[str, str] = field(default_factory=dict)
    engine: str = ""
    dropped: dict[str, int] = field(default_factory=dict)  # bad rows per split, left out of `rows`

    @property
    def success(self) -> bool:
        return all(c.success for c in self.checks if c.severity == "error")

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.success and c.severity == "error"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if not c.success and c.severity == "warning"]

    def _summary(self) -> str:
        verdict = "PASSED" if self.success else "FAILED"
        extra = f", {len(self.warnings)} warning(s)" if self.warnings else ""
        rows = ", ".join(f"{k} {v} rows" for k, v in self.rows.items())
        dropped = [f"{k} {v}" for k, v in self.dropped.items() if v]
        if dropped:
            rows += f"; bad rows dropped: {', '.join(dropped)}"
        return f"validation of {self.task} ({self.type}; {rows}): {verdict}{extra}"

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "type": self.type,
            "success": self.success,
            "rows": self.rows,
            "dropped": self.dropped,
            "files": self.files,
            "engine": self.engine,
            "failed": [c.name for c in self.failures],
            "warnings": [c.name for c in self.warnings],
            "checks": [{**asdict(c), "status": c.status} for c in self.checks],
        }

    def render(self) -> str:
        """A plain-text table (no colour codes): check, split, severity, observed, result; then one line
        per failed check and per warning with its counts and example rows."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(self._summary()))
        for col in ("check", "split", "severity", "observed", "result"):
            table.add_column(col, overflow="fold")
        for c in self.checks:
            table.add_row(*(escape(v) for v in (c.name, c.split, c.severity, c.observed, c.status)))
        buf = io.StringIO()
        console = Console(file=buf, width=120, color_system=None, force_terminal=False)
        console.print(table)
        for c in self.failures + self.warnings:
            console.print(
                f"{c.status}: {c.name} ({c.split}): {c.observed}: {c.detail}",
                soft_wrap=True,
                markup=False,
                highlight=False,
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
        lists = ""
        for heading, items in (("failed", self.failures), ("warnings", self.warnings)):
            if items:
                entries = "".join(
                    f"<li><b>{html.escape(c.name)}</b> ({html.escape(c.split)}): {html.escape(c.observed)}"
                    f"<br><code>{html.escape(c.detail)}</code></li>"
                    for c in items
                )
                lists += f"<h2>{heading} ({len(items)})</h2><ul>{entries}</ul>"
        title = f"validation of {self.task}: {verdict}"
        heading = (
            f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(self._summary())}</p>"
            f"<p class='sub'>{html.escape(self.engine)}</p>"
        )
        return page(title, f"{heading}{lists}<div class='text'><table><tr>{head}</tr>{body}</table></div>")


def _key(text) -> str:
    """Texts that differ only in case or spacing count as the same text."""
    return " ".join(str(text).split()).casefold()


def _short(text, limit: int = 40) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _rows_list(numbers: list[int], limit: int = EXAMPLES) -> str:
    """`3, 17, 40 and 5 more`: a few row numbers, then how many are left."""
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def _examples(parts: list[str], limit: int = EXAMPLES) -> str:
    return "; ".join(parts[:limit]) + (f"; and {len(parts) - limit} more" if len(parts) > limit else "")


# ---- repeats and leakage: found by row key, shared by validation and `taskloom tasks dedup` ----


def target_fields(kind: TaskType) -> list[str]:
    """The fields a row's answer is in: its label, or a pair's score. Rows with the same inputs and
    different answers contradict each other; rows of a type without one (retrieval, generation) are
    distinct examples when any field differs."""
    if kind.labelled:
        return ["label"]
    return [f for f, k in kind.fields.items() if k == "score"]


def input_fields(kind: TaskType) -> list[str]:
    """What makes two rows the same example: every required field but the answer (a text; a pair; a
    query with its positive; a prompt with its response)."""
    targets = target_fields(kind)
    return [f for f in kind.fields if f not in targets]


def _value_key(value) -> object:
    if isinstance(value, str):
        return _key(value)
    if isinstance(value, float):
        return round(value, 6)
    return value


@dataclass
class Repeats:
    """Groups of row numbers sharing one input key within a split."""

    duplicates: list[list[int]]  # same inputs, same answer: every row but the first is a repeat
    conflicts: list[dict[object, list[int]]]  # same inputs, answers differ: answer → its rows

    @property
    def repeated(self) -> int:
        return sum(len(g) - 1 for g in self.duplicates)

    @property
    def conflicting(self) -> int:
        return sum(len(rows) for g in self.conflicts for rows in g.values())


def find_repeats(numbered: list[tuple[int, dict]], kind: TaskType) -> Repeats:
    groups: dict[tuple, dict[tuple, list[int]]] = {}
    inputs, targets = input_fields(kind), target_fields(kind)
    for n, row in numbered:
        key = tuple(_value_key(row[f]) for f in inputs)
        answer = tuple(_value_key(row[f]) for f in targets)
        groups.setdefault(key, {}).setdefault(answer, []).append(n)
    duplicates, conflicts = [], []
    for by_answer in groups.values():
        if len(by_answer) > 1:
            conflicts.append({a[0] if len(a) == 1 else a: rows for a, rows in by_answer.items()})
        else:
            rows = next(iter(by_answer.values()))
            if len(rows) > 1:
                duplicates.append(rows)
    return Repeats(duplicates, conflicts)


def find_leaks(
    train: list[tuple[int, dict]], eval_: list[tuple[int, dict]], kind: TaskType
) -> list[tuple[int, str, int]]:
    """(eval row, field, train row) for each eval row with an identity text that is also a train row's
    identity text (any identity field, compared case- and spacing-insensitively)."""
    seen: dict[str, int] = {}
    for n, row in train:
        for f in kind.identity_fields:
            seen.setdefault(_key(row[f]), n)
    leaks = []
    for n, row in eval_:
        for f in kind.identity_fields:
            if _key(row[f]) in seen:
                leaks.append((n, f, seen[_key(row[f])]))
                break
    return leaks


# ---- the checks ----


def _row_text(by_number: dict[int, dict], n: int, kind: TaskType) -> str:
    return _short(by_number[n][kind.main_text])


def _bad_rows_check(read: RowsRead, split: str, rule) -> Check | None:
    if rule.severity == "off":
        return None
    if not read.bad:
        return Check("bad_rows", split, rule.severity, True, f"0 of {read.total} rows")
    too_many = not read.allowed(rule)
    observed = f"{len(read.bad)} of {read.total} rows ({read.bad_share:.1%}, max {rule.max_share:.1%})" + (
        "" if too_many else " dropped"
    )
    detail = _examples([msg for _n, msg in read.bad])
    return Check("bad_rows", split, rule.severity if too_many else "warning", False, observed, detail)


def _duplicates_check(
    rep: Repeats, path: Path, split: str, by_number: dict[int, dict], kind: TaskType, rule
) -> Check | None:
    if rule.severity == "off":
        return None
    if not rep.duplicates:
        return Check("duplicates", split, rule.severity, True, "0 repeated rows")
    groups = sorted(rep.duplicates, key=lambda g: (-len(g), g[0]))
    parts = [f"{_row_text(by_number, g[0], kind)} ×{len(g)} (rows {_rows_list(g)})" for g in groups]
    observed = f"{rep.repeated} repeated rows in {len(groups)} groups"
    what = ", ".join(input_fields(kind) + target_fields(kind))
    detail = f"{path}: {rep.repeated} rows repeat an earlier row (same {what}): {_examples(parts)}"
    return Check("duplicates", split, rule.severity, False, observed, detail)


def _conflicts_check(
    rep: Repeats, path: Path, split: str, total: int, by_number: dict[int, dict], kind: TaskType, rule
) -> Check | None:
    if rule.severity == "off" or not target_fields(kind):
        return None
    if not rep.conflicts:
        return Check("conflicts", split, rule.severity, True, "0 conflicting rows")
    share = rep.conflicting / total if total else 0.0
    severity = rule.severity if share > rule.max_share else "warning"
    target = "+".join(target_fields(kind))
    parts = []
    for g in sorted(rep.conflicts, key=lambda g: min(min(r) for r in g.values())):
        first = min(min(r) for r in g.values())
        answers = ", ".join(f"{a!r} (rows {_rows_list(rows)})" for a, rows in g.items())
        parts.append(f"row {first}: {_row_text(by_number, first, kind)} has {target} {answers}")
    observed = f"{rep.conflicting} rows in {len(rep.conflicts)} groups ({share:.1%}, max {rule.max_share:.1%})"
    detail = f"{path}: the same {'+'.join(input_fields(kind))} with a different {target}: {_examples(parts)}"
    return Check("conflicts", split, severity, False, observed, detail)


def _leakage_check(
    leaks: list[tuple[int, str, str, int]], split: str, earlier: list[str], paths: dict[str, Path], rule
) -> Check | None:
    """Rows of a held-out `split` whose text is also in an `earlier` split: leaks are (row, field,
    earlier split, its row)."""
    if rule.severity == "off":
        return None
    where = " or ".join(earlier)
    if not leaks:
        return Check("leakage", split, rule.severity, True, f"0 {split} rows in {where}")
    first_row, first_field, first_split, _ = leaks[0]
    parts = [f"row {n} = {e} row {t} (field {f!r})" for n, f, e, t in leaks]
    detail = (
        f"{paths[split]}: row {first_row}: field {first_field!r}: also in the {first_split} split "
        f"({paths[first_split]}); {len(leaks)} {split} rows: {_examples(parts)}"
    )
    return Check("leakage", split, rule.severity, False, f"{len(leaks)} {split} rows in {where}", detail)


# Which earlier splits a held-out split must not share text with: validation chooses options and eval
# reports, so neither may repeat train, and eval may not repeat validation.
LEAK_PAIRS = (("validation", "train"), ("eval", "train"), ("eval", "validation"))


# ---- the Great Expectations suite ----


def _frame(numbered: list[tuple[int, dict]], task_type: str):
    """Rows as a DataFrame indexed by row number (the type's columns even when no row is left)."""
    import pandas as pd

    kind = TASK_TYPES[task_type]
    if not numbered:
        return pd.DataFrame(columns=list(kind.fields))
    return pd.DataFrame([r for _, r in numbered], index=[n for n, _ in numbered])


def _suite(task_type: str, labels: list[str] | None, split: str, policy: ValidationPolicy):
    """[(check, severity, field, expectation)] for one split, with the task's severities; off: left out."""
    import great_expectations.expectations as gxe

    items: list[tuple[str, str, str | None, Any]] = []

    def add(check, severity, fld, exp):
        rule = getattr(policy, check) if check in type(policy).model_fields else None  # not BaseModel.schema
        severity = rule.severity if rule is not None else severity
        if severity != "off":
            items.append((check, severity, fld, exp))

    kind = TASK_TYPES[task_type]
    for f in kind.fields:
        add("schema", "error", f, gxe.ExpectColumnToExist(column=f))
        add("nulls", "error", f, gxe.ExpectColumnValuesToNotBeNull(column=f))
    for item in kind.expectations(labels):  # the type's own: label set and balance, score range, ...
        add(*item)
    max_chars = policy.text_lengths.max_chars
    for f in kind.text_fields:
        add(
            "text_lengths",
            "error",
            f,
            gxe.ExpectColumnValueLengthsToBeBetween(column=f, min_value=1, max_value=max_chars),
        )
        add("text_lengths", "error", f, gxe.ExpectColumnValuesToNotMatchRegex(column=f, regex=r"^\s*$"))
    need = getattr(policy.min_rows, split)
    add("min_rows", "error", None, gxe.ExpectTableRowCountToBeBetween(min_value=need))
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


def _describe(check: str, fld: str | None, res, path: Path, labels, split: str, policy) -> tuple[str, str]:
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
        need = getattr(policy.min_rows, split)
        return f"{obs} rows (min {need})", f"{path}: {obs} good rows, need at least {need}"
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
        limit = policy.text_lengths.max_chars
        return f"{bad} empty or > {limit} chars", f"{at}: empty, blank or longer than {limit} characters"
    return f"{bad} unexpected", at


def _share(res) -> float:
    """The share of rows with the one label a class_balance expectation looks for."""
    r = res.result or {}
    if not r.get("element_count"):
        return 0.0
    return 1 - (r.get("unexpected_percent_nonmissing") or 0) / 100


def _aggregate(results, path: Path, labels, split: str, policy) -> list[Check]:
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
        described = [(res.success, *_describe(name, fld, res, path, labels, split, policy)) for _s, fld, res in parts]
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


def _present(checks: Iterable[Check | None]) -> list[Check]:
    return [c for c in checks if c is not None]


def read_splits(spec) -> dict[str, RowsRead]:
    """Every split read row by row, with the task's labels (an unknown label is a bad row)."""
    return {split: read_rows(spec.split_path(split), spec.type, spec.labels) for split in spec.splits}


def validate_task(spec) -> ValidationReport:
    """Run the checks of the task's type over its split files, with the task's `validation:` policy.

    Raises UserError for what stops validation outright: an unknown base model or an unreadable file.
    """
    resolve_base(spec.base_model)
    policy = spec.validation
    kind = TASK_TYPES[spec.type]
    reads = read_splits(spec)
    paths = {split: read.path for split, read in reads.items()}
    source = _gx_context().data_sources.add_pandas(name="taskloom")
    checks: list[Check] = []
    for split, read in reads.items():
        items = _suite(spec.type, spec.labels, split, policy)
        results = _run_split(source, split, _frame(read.rows, spec.type), items, spec.name)
        by_number = dict(read.rows)
        rep = find_repeats(read.rows, kind)
        checks += _present([_bad_rows_check(read, split, policy.bad_rows)])
        checks += _aggregate(results, paths[split], spec.labels, split, policy)
        checks += _present(
            [
                _duplicates_check(rep, paths[split], split, by_number, kind, policy.duplicates),
                _conflicts_check(rep, paths[split], split, len(read.rows), by_number, kind, policy.conflicts),
            ]
        )
    for split in ("validation", "eval"):
        earlier = [e for s, e in LEAK_PAIRS if s == split and e in reads]
        if split in reads:
            found: dict[int, tuple[int, str, str, int]] = {}
            for e in earlier:
                for n, f, t in find_leaks(reads[e].rows, reads[split].rows, kind):
                    found.setdefault(n, (n, f, e, t))  # a row in train and validation is named once, by train
            leaks = sorted(found.values())
            checks += _present([_leakage_check(leaks, split, earlier, paths, policy.leakage)])
    return ValidationReport(
        task=spec.name,
        type=spec.type,
        checks=checks,
        rows={s: len(r.rows) for s, r in reads.items()},
        files={s: str(p) for s, p in paths.items()},
        engine=f"great_expectations {version('great_expectations')}",
        dropped={s: len(r.bad) for s, r in reads.items()},
    )


# ---- clean copies ----


REMOVED = ("bad row", "repeated", "conflicting", "in train", "in validation")  # why `clean_splits` removes a row


@dataclass
class CleanSplits:
    """What `taskloom tasks dedup` keeps of each split, and each removed row: (row, why, detail)."""

    kept: dict[str, list[tuple[int, dict]]]
    removed: dict[str, list[tuple[int, str, str]]]


def clean_splits(spec) -> CleanSplits:
    """Every split without bad rows, repeats (the first of each kept), every row of a conflicting group
    (which answer is right is not known), and held-out rows whose text is in an earlier cleaned split
    (`LEAK_PAIRS`: validation or eval in train, eval in validation)."""
    kind = TASK_TYPES[spec.type]
    reads = read_splits(spec)
    kept: dict[str, list[tuple[int, dict]]] = {}
    removed: dict[str, list[tuple[int, str, str]]] = {}
    for split, read in reads.items():
        gone: dict[int, tuple[str, str]] = {n: ("bad row", msg) for n, msg in read.bad}
        rep = find_repeats(read.rows, kind)
        for g in rep.duplicates:
            for n in g[1:]:
                gone[n] = ("repeated", f"repeats row {g[0]}")
        for c in rep.conflicts:
            rows = sorted(r for rs in c.values() for r in rs)
            for n in rows:
                gone[n] = ("conflicting", f"{'+'.join(target_fields(kind))} differs among rows {_rows_list(rows)}")
        kept[split] = [(n, r) for n, r in read.rows if n not in gone]
        removed[split] = [(n, why, detail) for n, (why, detail) in sorted(gone.items())]
    for split, earlier in LEAK_PAIRS:
        if split in kept and earlier in kept:
            leaks = find_leaks(kept[earlier], kept[split], kind)
            why = f"in {earlier}"
            removed[split] = sorted(
                removed[split] + [(n, why, f"field {f!r} is {earlier} row {t}") for n, f, t in leaks]
            )
            leaked = {n for n, _f, _t in leaks}
            kept[split] = [(n, r) for n, r in kept[split] if n not in leaked]
    return CleanSplits(kept, removed)
