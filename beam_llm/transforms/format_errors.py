"""FormatErrors: Beam YAML error rows -> flat rows a person can read."""
import json
import typing
from typing import Any, Optional, Sequence

import apache_beam as beam
from apache_beam.typehints import row_type
from apache_beam.typehints.schemas import named_fields_from_element_type

from beam_llm import _config

_OWNER = 'FormatErrors'


class FormatErrors(beam.PTransform):
  """Turns error rows into flat rows that read well in a JSON or CSV file.

  Merges the error outputs of several transforms (give them as a list input)
  into one row type, so one errors file holds them all, with the failed row
  under `element` as a JSON object (`WriteToJson` writes it with its field
  names; fields a row lacks are left out), and can copy chosen fields (an id,
  say) to the top level. Takes the error output of any transform (beam-llm's
  or Beam's own `element`, `msg`, `stack` rows).

  Output fields: the copied `fields`, `error_type` (from the error row, or
  `error` if it has none), `msg`, `element` and `stack`. `element` is a row
  whose fields are the union of the failed rows' fields; a field whose type
  differs between the merged outputs is given as JSON text. Where no input
  says what its rows hold, `element` is the whole row as JSON text.

  Args:
    fields: Fields of the failed element to copy to the top level, e.g.
      `[chat_id]`. A field the element lacks comes out null.
    include_stack: Keep the Python stack trace, if any. Defaults to true.
  """
  @_config.checks_options(_OWNER)
  def __init__(
      self,
      fields: Optional[Sequence[str]] = None,
      include_stack: bool = True):
    super().__init__()
    self._fields = list(fields or [])
    self._include_stack = include_stack

  def expand(self, pcoll):
    error_types = _merged_error_types(pcoll)
    copied = [(name, Optional[_element_field_type(error_types, name)])
              for name in self._fields]
    element_fields = [(name, Optional[_element_field_type(error_types, name)])
                      for name in _element_field_names(error_types)]
    element_type = (
        row_type.RowTypeConstraint.from_fields(element_fields)
        if element_fields else str)
    out_type = row_type.RowTypeConstraint.from_fields(
        copied + [('error_type', str), ('msg', str), ('element', element_type),
                  ('stack', str)])
    as_text = {name for name, t in copied + element_fields if t == Optional[str]}
    return pcoll | 'Format' >> beam.Map(
        _format, self._fields, [name for name, _ in element_fields], as_text,
        self._include_stack).with_output_types(out_type)


def _format(error, fields, element_fields, as_text, include_stack) -> beam.Row:
  element = getattr(error, 'element', error)

  def value(name):
    v = getattr(element, name, None)
    if name in as_text and v is not None and not isinstance(v, str):
      return json.dumps(_plain(v), ensure_ascii=False, default=str)
    return v

  return beam.Row(
      **{name: value(name) for name in fields},
      error_type=getattr(error, 'error_type', None) or 'error',
      msg=str(getattr(error, 'msg', '')),
      element=beam.Row(**{name: value(name) for name in element_fields})
      if element_fields else json.dumps(
          _plain(element), ensure_ascii=False, default=str),
      stack=str(getattr(error, 'stack', '')) if include_stack else '')


def _plain(value):
  """Rows (nested too) -> dicts, so the JSON keeps field names."""
  if hasattr(value, '_asdict'):
    return {k: _plain(v) for k, v in value._asdict().items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  return value


def _merged_error_types(pcoll, depth: int = 4) -> list:
  """The types of the error rows feeding `pcoll`.

  Beam YAML merges a list input with a Flatten whose output type loses the
  elements' schemas, so where `element` is untyped, look back through the
  producing transforms (a few steps) to the typed error outputs they merged.
  """
  if _has_typed_element(pcoll.element_type) or depth == 0:
    return [pcoll.element_type]
  producer = pcoll.producer
  inputs = [p for p in getattr(producer, 'inputs', ()) if hasattr(p, 'producer')]
  if not inputs:
    return [pcoll.element_type]
  return [t for p in inputs for t in _merged_error_types(p, depth - 1)]


def _has_typed_element(error_type) -> bool:
  try:
    element_type = dict(named_fields_from_element_type(error_type))['element']
    named_fields_from_element_type(element_type)
    return True
  except (TypeError, ValueError, KeyError):
    return False


def _element_field_names(error_types: list) -> list:
  """Every field of the typed errors' elements, in first-seen order."""
  names = {}
  for member in error_types:
    if _has_typed_element(member):
      element_type = dict(named_fields_from_element_type(member))['element']
      names.update(dict.fromkeys(
          n for n, _ in named_fields_from_element_type(element_type)))
  return list(names)


def _element_field_type(error_types: list, name: str) -> Any:
  """Type of `name` in the errors' elements; str if unknown or inconsistent.

  Error outputs whose element type is unknown (an empty mock in a test, say)
  are skipped when another one is typed.
  """
  types = set()
  for member in error_types:
    if not _has_typed_element(member):
      continue
    element_type = dict(named_fields_from_element_type(member))['element']
    types.add(dict(named_fields_from_element_type(element_type)).get(name))
  types.discard(None)
  if len(types) != 1:
    return str
  t = types.pop()
  args = typing.get_args(t)
  if typing.get_origin(t) is typing.Union and type(None) in args and len(
      args) == 2:
    return args[0] if args[1] is type(None) else args[1]
  return t
