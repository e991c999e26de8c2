"""JSON Schema -> Beam field types, and JSON values -> typed field values.

The mapping (documented in docs/json_schema.md):
  integer -> int, number -> float, string -> str, boolean -> bool,
  array of T -> list of T, object with properties -> nested Row,
  anything else (object without properties, unions of types) -> str (JSON text).
Properties not listed in `required` (or that allow null) become Optional.
"""
import json
import math
import re
from typing import Any, Optional, Sequence

import apache_beam as beam
from apache_beam.typehints import row_type

_SCALARS = {'integer': int, 'number': float, 'string': str, 'boolean': bool}


def _types(schema: dict) -> list:
  t = schema.get('type')
  if t is None and 'enum' in schema:
    kinds = {json_kind(v) for v in schema['enum']}
    return sorted(kinds)
  if t is None and 'const' in schema:
    return [json_kind(schema['const'])]
  return [t] if isinstance(t, str) else list(t or [])


def json_kind(value) -> str:
  if value is None:
    return 'null'
  if isinstance(value, bool):
    return 'boolean'
  if isinstance(value, int):
    return 'integer'
  if isinstance(value, float):
    return 'number'
  if isinstance(value, str):
    return 'string'
  return 'object' if isinstance(value, dict) else 'array'


def beam_type(schema: dict) -> Any:
  """The Beam type of one property (without Optional for null)."""
  kinds = [k for k in _types(schema) if k != 'null']
  if kinds == ['integer', 'number'] or kinds == ['number', 'integer']:
    kinds = ['number']
  if len(kinds) != 1:
    return str
  kind = kinds[0]
  if kind in _SCALARS:
    return _SCALARS[kind]
  if kind == 'array':
    items = schema.get('items')
    return Sequence[beam_type(items)] if isinstance(items, dict) else Sequence[str]
  if kind == 'object' and schema.get('properties'):
    return row_type.RowTypeConstraint.from_fields(fields(schema))
  return str


def _nullable(schema: dict) -> bool:
  return 'null' in _types(schema)


def fields(schema: dict) -> list:
  """(name, Beam type) for each property of an object schema."""
  required = set(schema.get('required', ()))
  out = []
  for name, prop in schema.get('properties', {}).items():
    t = beam_type(prop)
    if name not in required or _nullable(prop):
      t = Optional[t]
    out.append((name, t))
  return out


def to_field_value(value: Any, schema: dict, t: Any = None) -> Any:
  """Converts a validated JSON value to the Python value of its Beam type
  (`t`, if the caller has it already)."""
  if value is None:
    return None
  if t is None:
    t = beam_type(schema)
  if t is str and not isinstance(value, str):
    return json.dumps(value, ensure_ascii=False)
  if t is float:
    return float(value)
  if t is int:
    return int(value)  # Validated as integer: 3.0 is allowed, and exact.
  if isinstance(t, row_type.RowTypeConstraint):
    return to_row(value, schema)
  if getattr(t, '__origin__', None) is not None and isinstance(value, list):
    items = schema.get('items') if isinstance(schema.get('items'), dict) else {
        'type': 'string'
    }
    return [to_field_value(v, items) for v in value]
  return value


def to_row(value: dict, schema: dict) -> beam.Row:
  props = schema.get('properties', {})
  return beam.Row(
      **{name: to_field_value(value.get(name), props[name])
         for name in props})


class _NoFastPath:
  """A type no JSON value has: the fast path of a property that needs
  converting (rows, lists, text of other JSON) never applies."""


def fields_converter(schema: dict):
  """`to_row`'s fields as a dict, for one schema, with each property's type
  worked out once (per-row cost matters: ParseJSON and ReadJsonLines run it
  on every row). `convert(value, into)` writes them into `into` (a new dict
  if None) and returns it."""
  props = []
  for name, prop in schema.get('properties', {}).items():
    t = beam_type(prop)
    # A value that already has its field's scalar type is kept as it is
    # (what to_field_value returns for it); only the rest is converted.
    props.append((name, prop, t, t if t in _SCALARS.values() else _NoFastPath))

  def convert(value: dict, into: Optional[dict] = None) -> dict:
    out = {} if into is None else into
    get = value.get
    for name, prop, t, same in props:
      v = get(name)
      out[name] = v if type(v) is same else to_field_value(v, prop, t)
    return out
  return convert


_INTEGER_TEXT = re.compile(r'\s*[+-]?\d+\s*')
_NUMBER_TEXT = re.compile(r'\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*')


def coerce_numbers(value: Any, schema: dict) -> Any:
  """Numbers the model wrote as text ("-1") -> numbers, where the schema wants
  a number and nothing is lost ("1.5" never becomes an integer)."""
  kinds = _types(schema)
  if isinstance(value, str) and 'string' not in kinds:
    if 'integer' in kinds and _INTEGER_TEXT.fullmatch(value):
      return int(value)
    if 'number' in kinds and _NUMBER_TEXT.fullmatch(value):
      number = float(value)
      return number if math.isfinite(number) else value
    return value
  if isinstance(value, dict):
    props = schema.get('properties', {})
    return {
        k: coerce_numbers(v, props[k]) if isinstance(props.get(k), dict) else v
        for k, v in value.items()
    }
  if isinstance(value, list) and isinstance(schema.get('items'), dict):
    return [coerce_numbers(v, schema['items']) for v in value]
  return value
