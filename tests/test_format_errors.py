import json

import apache_beam as beam
from apache_beam.typehints import row_type

from beam_llm import FormatErrors
from beam_llm import ParseJSON
from tests.beam_helpers import run_transform
from tests.test_parse_json import SCHEMA


def test_error_rows_become_flat_readable_rows():
  # Real error rows from ParseJSON, formatted: the element keeps its field
  # names (as JSON text) and chat_id is copied up with its type.
  def parse_then_format(rows):
    result = rows | ParseJSON(
        field='response', schema=SCHEMA, error_handling={'output': 'bad'})
    return result['bad'] | FormatErrors(fields=['chat_id', 'missing'])

  out, types = run_transform(
      beam.ptransform_fn(parse_then_format)(),
      [{'chat_id': 7, 'response': '{"sentiment": 3, "summary": "x"}'}])
  [row] = out['good']
  assert row.chat_id == 7 and row.missing is None
  assert row.error_type == 'schema'
  assert 'sentiment: 3 is not one of [-1, 0, 1]' in row.msg
  assert row.element == beam.Row(
      chat_id=7, response='{"sentiment": 3, "summary": "x"}')
  fields = dict(types['good']._fields)
  assert set(fields) == {'chat_id', 'missing', 'error_type', 'msg', 'element', 'stack'}


def test_beam_own_error_rows_without_error_type():
  element_type = row_type.RowTypeConstraint.from_fields([('a', int)])
  error_type = row_type.RowTypeConstraint.from_fields([
      ('element', element_type), ('msg', str), ('stack', str)])
  out, _ = run_transform(
      FormatErrors(fields=['a'], include_stack=False),
      [{'element': beam.Row(a=1), 'msg': 'boom', 'stack': 'Traceback...'}],
      input_type=error_type)
  [row] = out['good']
  assert (row.a, row.error_type, row.msg, row.stack) == (1, 'error', 'boom', '')
  assert row.element == beam.Row(a=1)
