"""Property-based tests of the parse ladder (hypothesis): schema-valid
objects wrapped in noise come back exactly; cut-off JSON is never accepted."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from beam_llm import json_extract
from tests.test_parse_json import _validator

objects = st.fixed_dictionaries({
    'sentiment': st.sampled_from([-1, 0, 1]),
    'summary': st.text(min_size=1, max_size=512),
})

serializations = st.sampled_from([
    json.dumps,
    lambda o: json.dumps(o, ensure_ascii=False),
    lambda o: json.dumps(o, indent=2, ensure_ascii=False),
    lambda o: json.dumps(o, separators=(',', ':')),
])

# Prose as a model writes around its answer: words, digits and punctuation
# (no brackets, which would open JSON of their own).
prose = st.text(
    alphabet=st.characters(
        whitelist_categories=('Lu', 'Ll', 'Nd', 'Zs'),
        whitelist_characters='.,!?:;-\n\''),
    max_size=120)

wrappers = st.sampled_from([
    lambda j, a, b: j,
    lambda j, a, b: f'```json\n{j}\n```',
    lambda j, a, b: f'```\n{j}\n```',
    lambda j, a, b: f'<answer>{j}</answer>',
    lambda j, a, b: f'{a}\n{j}\n{b}',
    lambda j, a, b: f'{a}\n```json\n{j}\n```\n{b}',
    lambda j, a, b: f'{a} <answer>\n{j}\n</answer> {b}',
])

VALIDATE = _validator()


@settings(max_examples=300, deadline=None)
@given(objects, serializations, wrappers, prose, prose)
def test_wrapped_valid_objects_are_recovered_exactly(obj, dump, wrap, before, after):
  text = wrap(dump(obj), before, after)
  value, _ = json_extract.parse(text, VALIDATE)
  assert value == obj


@settings(max_examples=300, deadline=None)
@given(objects, serializations, st.sampled_from(['', '```json\n', '<answer>', 'Here:\n']),
       st.data())
def test_truncated_json_is_never_accepted(obj, dump, opener, data):
  full = dump(obj)
  cut = data.draw(st.integers(min_value=1, max_value=len(full) - 1))
  with pytest.raises(json_extract.ParseFailure) as info:
    json_extract.parse(opener + full[:cut], VALIDATE)
  assert info.value.rung == 'truncated'
