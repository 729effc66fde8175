"""Extension points: merge methods, drift detectors and task types are found through Python entry
points, so a platform team adds its own by installing a distribution, without forking taskloom.

    # the plugin's pyproject.toml
    [project.entry-points."taskloom.merge_methods"]
    my_merge = "my_plugin.my_merge:MyMerge"

taskloom registers its own the same way (its pyproject.toml). An entry point names a class (built
with no arguments) or an object of the group's kind, whose `name` is the entry point's name. Each one
is imported when it is first asked for, so a broken plugin stops only what uses it, with one line
naming it (entry point name and value) and the reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from taskloom.errors import UserError

T = TypeVar("T")


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    """The group's entry points by name: taskloom's own first, in the order their module defines them
    (the order of its docs and messages; setuptools writes entry points sorted by name), then the
    plugins' by distribution and name. Two distributions claiming one name is a UserError."""
    found: dict[str, EntryPoint] = {}

    def order(ep: EntryPoint) -> tuple:
        dist = ep.dist.name if ep.dist is not None else ""
        if dist == "taskloom":
            defined = list(vars(import_module(ep.module)))  # taskloom's own modules: already imported by now
            return (0, "", defined.index(ep.attr) if ep.attr in defined else len(defined), ep.name)
        return (1, dist, 0, ep.name)

    for ep in sorted(entry_points(group=group), key=order):
        if ep.name in found and found[ep.name].value != ep.value:
            raise UserError(
                f"plugin {ep.name} = {ep.value}: the name {ep.name!r} is already taken in {group} "
                f"by {found[ep.name].value}"
            )
        found.setdefault(ep.name, ep)
    return found


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load(ep: EntryPoint, kind: type[T], what: str) -> T:
    """The object behind one entry point, checked to be a `kind`, or a one-line UserError naming it."""
    where = f"plugin {ep.name} = {ep.value} ({ep.group})"
    try:
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, kind):
            obj = obj()
    except Exception as e:  # a plugin may fail in any way while importing or building itself
        raise UserError(f"{where}: cannot be loaded: {_first_line(e)}") from None
    if not isinstance(obj, kind):
        got = f"the class {obj.__name__}" if isinstance(obj, type) else f"{type(obj).__name__} {obj!r:.40}"
        raise UserError(
            f"{where}: is not a {what} (got {got}; expected a subclass or instance of "
            f"{kind.__module__}.{kind.__qualname__})"
        )
    name = getattr(obj, "name", None)
    if name != ep.name:
        raise UserError(f"{where}: its name is {name!r}, not {ep.name!r}")
    return obj


class Registry(Mapping[str, T], Generic[T]):
    """name → object of one entry-point group. Names come from the entry points without importing
    anything; each object is loaded on first use and kept."""

    def __init__(self, group: str, kind: type[T], what: str):
        self.group, self.kind, self.what = group, kind, what
        self._loaded: dict[str, T] = {}

    def __getitem__(self, name: str) -> T:
        if name not in self._loaded:
            ep = _entry_points(self.group)[name]  # KeyError for an unknown name, as a dict would
            self._loaded[name] = load(ep, self.kind, self.what)
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in _entry_points(self.group)

    def __iter__(self) -> Iterator[str]:
        return iter(_entry_points(self.group))

    def __len__(self) -> int:
        return len(_entry_points(self.group))

    def __repr__(self) -> str:
        return f"Registry({self.group!r}: {', '.join(self)})"
