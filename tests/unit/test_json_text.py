"""JSON text from outside (orchestrator/json_text.py): read as json reads it, but no key twice in one object."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.json_text import DuplicateKeyError, loads_unique

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(values, st.booleans())
def test_a_text_without_a_key_twice_reads_as_json_reads_it(value: object, as_bytes: bool) -> None:
    text = json.dumps(value, ensure_ascii=as_bytes)
    assert loads_unique(text.encode() if as_bytes else text) == json.loads(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "\\u0061"]), st.integers(0, 3)), max_size=5), values)
def test_an_object_holding_a_key_twice_is_refused_and_any_other_is_read(pairs: list, around: object) -> None:
    inner = "{" + ", ".join(f'"{k}": {v}' for k, v in pairs) + "}"
    text = f"[{json.dumps(around)}, {inner}]"
    keys = [json.loads(f'"{k}"') for k, _ in pairs]
    if len(set(keys)) < len(keys):
        with pytest.raises(DuplicateKeyError) as err:
            loads_unique(text)
        first = next(k for i, k in enumerate(keys) if k in keys[:i])
        assert (err.value.key, err.value.path) == (first, "$[1]")
    else:
        assert loads_unique(text) == json.loads(text)


@pytest.mark.parametrize("text, key, path", [
    ('{"a": {"b": 1, "b": 2}, "a": 3}', "a", "$"),  # an object's own key before those of the objects in it
    ('[[], [{"k": [{"z": 1}, {"z": 1, "z": 1}]}]]', "z", "$[1][0].k[1]"),
    ('{"a.b": {"c-d": {"e": 1, "e": 2}}}', "e", '$["a.b"]["c-d"]'),
])
def test_a_key_twice_is_named_with_the_path_to_its_object(text: str, key: str, path: str) -> None:
    with pytest.raises(DuplicateKeyError) as err:
        loads_unique(text)
    assert (err.value.key, err.value.path) == (key, path)


def test_a_key_twice_deep_in_a_text_is_found_without_running_out_of_stack() -> None:
    text = "[" * 900 + '{"x": 1, "x": 2}' + "]" * 900
    with pytest.raises(DuplicateKeyError) as err:
        loads_unique(text)
    assert err.value.path.startswith("$[0][0]") and err.value.key == "x"
