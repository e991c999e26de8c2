import json
import os
from typing import Optional, Sequence

import pytest

from beam_llm import ParseJSON
from beam_llm import json_extract
from beam_llm._config import ConfigError
from tests.beam_helpers import run_transform
from tests.conftest import ROOT

SCHEMA_FILE = os.path.join(ROOT, 'schemas', 'sentiment_summary.json')
with open(SCHEMA_FILE) as f:
  SCHEMA = json.load(f)


def _validator(schema=SCHEMA):
  import jsonschema
  validator = jsonschema.Draft202012Validator(schema)

  def validate(value):
    if not isinstance(value, dict):
      return 'not an object'
    errors = list(validator.iter_errors(value))
    return errors[0].message if errors else None

  return validate


GOOD = {'sentiment': -1, 'summary': 'Cold pizza.'}


@pytest.mark.parametrize('text, rung', [
    ('{"sentiment": -1, "summary": "Cold pizza."}', 'strict'),
    ('```json\n{"sentiment": -1, "summary": "Cold pizza."}\n```', 'extract'),
    ('```\n{"sentiment": -1, "summary": "Cold pizza."}\n```', 'extract'),
    ('<answer>{"sentiment": -1, "summary": "Cold pizza."}</answer>', 'extract'),
    ('Sure! Here you go:\n{"sentiment": -1, "summary": "Cold pizza."}\nAnything else?', 'extract'),
    ('{"note": "draft"} then {"sentiment": -1, "summary": "Cold pizza."}', 'extract'),
    ("{'sentiment': -1, 'summary': 'Cold pizza.'}", 'repair'),
    ('{"sentiment": -1, "summary": "Cold pizza.",}', 'repair'),
    ('Result: {"sentiment": -1, // unhappy\n "summary": "Cold pizza."}', 'repair'),
    ('{sentiment: -1, summary: "Cold pizza."}', 'repair'),
    ('\u201csentiment\u201d'.join(['{', ': -1, "summary": "Cold pizza."}']), 'repair'),
    ('{"sentiment": "-1", "summary": "Cold pizza."}', 'strict'),
    ('<json>\n{"sentiment": -1, "summary": "Cold pizza."}\n</json>', 'extract'),
    ('```JSON {"sentiment": -1, "summary": "Cold pizza."}```', 'extract'),
])
def test_ladder_recovers_the_object(text, rung):
  assert json_extract.parse(text, _validator(), prepare=_coerce) == (GOOD, rung)


def _coerce(value):
  from beam_llm.json_schema_types import coerce_numbers
  return coerce_numbers(value, SCHEMA)


def test_python_literals_are_repaired():
  schema = {'type': 'object', 'properties': {'ok': {'type': 'boolean'},
                                             'note': {'type': ['string', 'null']}}}
  value, rung = json_extract.parse("{'ok': True, 'note': None}", _validator(schema))
  assert (value, rung) == ({'ok': True, 'note': None}, 'repair')


@pytest.mark.parametrize('text, expected', [
    ('{"sentiment": "1", "summary": "x"}', 1),
    ('{"sentiment": " -1 ", "summary": "x"}', -1),
])
def test_numbers_as_text_are_coerced_when_lossless(text, expected):
  value, _ = json_extract.parse(text, _validator(), prepare=_coerce)
  assert value['sentiment'] == expected and isinstance(value['sentiment'], int)


@pytest.mark.parametrize('text', [
    '{"sentiment": "0.5", "summary": "x"}',  # Not an integer: never rounded.
    '{"sentiment": "one", "summary": "x"}',
])
def test_lossy_or_non_numeric_text_is_a_schema_error(text):
  with pytest.raises(json_extract.ParseFailure) as info:
    json_extract.parse(text, _validator(), prepare=_coerce)
  assert info.value.rung == 'schema'


def test_coercion_can_be_turned_off():
  out, _ = run_transform(
      ParseJSON(field='response', schema=SCHEMA, coerce=False,
                error_handling={'output': 'e'}),
      [{'response': '{"sentiment": "1", "summary": "x"}'}])
  assert out['good'] == [] and out['e'][0].error_type == 'schema'
  out, _ = run_transform(
      ParseJSON(field='response', schema=SCHEMA),
      [{'response': '{"sentiment": "1", "summary": "x"}'}])
  assert out['good'][0].sentiment == 1


def test_braces_inside_strings_do_not_end_the_object():
  text = 'x {"sentiment": 0, "summary": "a } and a { in text"} y'
  value, _ = json_extract.parse(text, _validator())
  assert value['summary'] == 'a } and a { in text'


@pytest.mark.parametrize('text', [
    '{"sentiment": -1, "summary": "The order is la',
    '```json\n{"sentiment": -1, "summary": "Cold',
    'Here: {"sentiment": -1, "summary": ["a", "b"',
    '{"sentiment": -1, "summary": "done"',
    '<answer>{"sentiment": -1, "summary": "see {\\"sentiment\\": 1, \\"summary\\": \\"x\\"}',
])
def test_cut_off_output_is_truncated_never_repaired(text):
  with pytest.raises(json_extract.ParseFailure) as info:
    json_extract.parse(text, _validator())
  assert info.value.rung == 'truncated'


@pytest.mark.parametrize('text, rung', [
    ('', 'empty'),
    ('   \n', 'empty'),
    (None, 'empty'),
    ('I cannot help with that.', 'invalid_json'),
    ('{"sentiment": 5, "summary": "x"}', 'schema'),
    ('{"sentiment": -1}', 'schema'),
    ('[{"sentiment": -1, "summary": "x"}]', 'schema'),
    ('{"sentiment": -1, "summary": "x", "extra": 1}', 'schema'),
    ('{"sentiment": -1, "summary": ""}', 'schema'),
    ('{"sentiment": -1, "summary": "' + 'x' * 513 + '"}', 'schema'),
])
def test_unusable_output_fails_with_the_rung(text, rung):
  with pytest.raises(json_extract.ParseFailure) as info:
    json_extract.parse(text, _validator())
  assert info.value.rung == rung


def test_repair_can_be_turned_off():
  with pytest.raises(json_extract.ParseFailure):
    json_extract.parse("{'sentiment': -1, 'summary': 'x'}", _validator(), repair=False)


ROWS = [
    {'chat_id': 1, 'response': '{"sentiment": -1, "summary": "Cold pizza."}'},
    {'chat_id': 2, 'response': '```json\n{"sentiment": 1, "summary": "Great."}\n```'},
    {'chat_id': 3, 'response': '{"sentiment": 0, "summary": "Asked about'},
    {'chat_id': 4, 'response': 'no idea'},
]


def test_transform_types_fields_and_routes_bad_rows():
  out, types, metrics = run_transform(
      ParseJSON(field='response', schema_file=SCHEMA_FILE,
                error_handling={'output': 'invalid'}), ROWS, metrics=True)
  good = {r.chat_id: r for r in out['good']}
  assert (good[1].sentiment, good[1].summary) == (-1, 'Cold pizza.')
  assert (good[2].sentiment, good[2].summary) == (1, 'Great.')
  assert good[1].response == ROWS[0]['response']  # Input fields are kept.
  fields = dict(types['good']._fields)
  assert fields['sentiment'] is int and fields['summary'] is str
  assert 'chat_id' in fields and 'response' in fields
  errors = {e.element.chat_id: e for e in out['invalid']}
  assert errors[3].error_type == 'truncated'
  assert errors[4].error_type == 'invalid_json'
  assert errors[3].msg.startswith('ParseJSON (truncated)')
  # Every row exactly once across both outputs.
  assert sorted(list(good) + list(errors)) == [1, 2, 3, 4]
  # The counters the run summary reads (`parsed` is added up per bundle).
  assert (metrics['parsed'], metrics['failed']) == (2, 2)


def test_schema_types_map_to_beam_types():
  schema = {
      'type': 'object',
      'properties': {
          'n': {'type': 'integer'},
          'x': {'type': 'number'},
          'ok': {'type': 'boolean'},
          'tags': {'type': 'array', 'items': {'type': 'string'}},
          'who': {'type': 'object', 'properties': {'name': {'type': 'string'}},
                  'required': ['name']},
          'maybe': {'type': ['string', 'null']},
      },
      'required': ['n', 'x', 'ok', 'tags', 'who', 'maybe'],
  }
  text = ('{"n": 3, "x": 2, "ok": true, "tags": ["a"], "who": {"name": "Al"},'
          ' "maybe": null}')
  out, types = run_transform(
      ParseJSON(field='t', schema=schema), [{'t': text}])
  [row] = out['good']
  assert (row.n, row.x, row.ok, list(row.tags), row.who.name, row.maybe) == (
      3, 2.0, True, ['a'], 'Al', None)
  assert isinstance(row.x, float)
  fields = dict(types['good']._fields)
  assert fields['n'] is int and fields['x'] is float and fields['ok'] is bool
  assert fields['tags'] == Sequence[str]
  assert fields['maybe'] == Optional[str]
  assert dict(fields["who"]._fields)['name'] is str


def test_a_non_text_field_is_an_error_row():
  out, _ = run_transform(
      ParseJSON(field='response', schema=SCHEMA, error_handling={'output': 'e'}),
      [{'chat_id': 1, 'response': 42}])
  assert out['e'][0].error_type == 'not_text'


@pytest.mark.parametrize('kwargs, message', [
    ({'field': 'response'}, "give exactly one of 'schema' or 'schema_file'"),
    ({'field': 'response', 'schema_file': '/no/such.json'}, "option 'schema_file': cannot read"),
    ({'field': 'response', 'schema': {'type': 'objekt'}}, "option 'schema' is not a valid JSON Schema"),
    ({'field': 'response', 'schema': {'type': 'array'}}, "must describe an object with properties"),
    ({'field': 'response', 'schema': SCHEMA, 'repair': 'yes'}, "option 'repair' must be true or false"),
])
def test_bad_config_names_the_transform_and_key(kwargs, message):
  with pytest.raises(ConfigError, match='ParseJSON') as info:
    ParseJSON(**kwargs)
  assert info.match(message)


def test_unknown_field_fails_at_build_time():
  with pytest.raises(ConfigError, match="ParseJSON: option 'field' names field 'answer'"):
    run_transform(ParseJSON(field='answer', schema=SCHEMA), ROWS[:1])
