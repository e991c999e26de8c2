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

  `WriteToJson` writes an error row's nested `element` as a bare list of
  values, losing the field names. This writes it as a JSON object in text
  instead, and can copy chosen fields (an id, say) to the top level. Takes the
  error output of any transform (beam-llm's or Beam's own `element`, `msg`,
  `stack` rows); give several error outputs as a list input to merge them.

  Output fields: the copied `fields`, `error_type` (from the error row, or
  `error` if it has none), `msg`, `element` (JSON text) and `stack`.

  Args:
    fields: Fields of the failed element to copy to the top level, e.g.
      `[chat_id]`. A field the element lacks comes out null.
    include_stack: Keep the Python stack trace, if any. Defaults to true.
  """
  def __init__(
      self,
      fields: Optional[Sequence[str]] = None,
      include_stack: bool = True):
    super().__init__()
    _config.check_call_options(
        _OWNER,
        FormatErrors.__init__,
        dict(fields=fields, include_stack=include_stack))
    self._fields = list(fields or [])
    self._include_stack = include_stack

  def expand(self, pcoll):
    error_types = _merged_error_types(pcoll)
    copied = [(name, Optional[_element_field_type(error_types, name)])
              for name in self._fields]
    out_type = row_type.RowTypeConstraint.from_fields(
        copied + [('error_type', str), ('msg', str), ('element', str),
                  ('stack', str)])
    as_text = [name for name, t in copied if t == Optional[str]]
    return pcoll | 'Format' >> beam.Map(
        _format, self._fields, as_text,
        self._include_stack).with_output_types(out_type)


def _format(error, fields, as_text, include_stack) -> beam.Row:
  element = getattr(error, 'element', error)
  copied = {name: getattr(element, name, None) for name in fields}
  for name in as_text:  # Typed str because the element type was not known.
    if copied[name] is not None and not isinstance(copied[name], str):
      copied[name] = json.dumps(_plain(copied[name]), default=str)
  return beam.Row(
      **copied,
      error_type=getattr(error, 'error_type', None) or 'error',
      msg=str(getattr(error, 'msg', '')),
      element=json.dumps(_plain(element), ensure_ascii=False, default=str),
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
