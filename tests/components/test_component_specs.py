"""Each KFP component's flat parameters are exactly its stage's spec (names and defaults), and
components/README.md is what the components say about themselves."""

from __future__ import annotations

import pytest

from taskloom_components import DATA_PARAMETERS, SPECS
from taskloom_components.table import README, components, render

COMPONENTS = {comp.python_func.__name__: comp for _, comp in components()}


def _parameters(comp) -> dict:
    """{name: default} of the component's parameters (artifacts left out); no default: `...`."""
    inputs = comp.component_spec.inputs or {}
    return {k: (v.default if v.optional else ...) for k, v in inputs.items() if not getattr(v, "type", "").startswith("system.")
            and v.type in ("String", "Integer", "Float", "Boolean", "List", "Dict")}


def test_every_component_is_listed_once():
    assert set(SPECS) | set(DATA_PARAMETERS) <= set(COMPONENTS)
    assert len(COMPONENTS) == 12


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_parameters_are_exactly_the_spec_fields(name):
    params = _parameters(COMPONENTS[name])
    data = DATA_PARAMETERS.get(name, ())
    assert all(params.pop(d) is ... for d in data), f"{name}: a data input has a default"
    spec = SPECS.get(name)
    expected = {k: f.default for k, f in spec.model_fields.items()} if spec else {}
    assert params == expected, f"{name}: parameters and {spec.__name__ if spec else 'no spec'} fields differ"


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_component_docstring_says_inputs_outputs_and_calls(name):
    doc = " ".join((COMPONENTS[name].python_func.__doc__ or "").split())
    for section in ("Inputs: ", "Outputs: ", "Calls: taskloom.steps."):
        assert section in doc, f"{name}: docstring lacks {section!r}"


def test_components_readme_is_generated_from_the_components():
    assert README.read_text(encoding="utf-8") == render(), (
        "components/README.md is out of date: run `python -m taskloom_components.table`")
