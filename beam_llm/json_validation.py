"""JSON Schema validation of parsed values: one place, fast on valid input.

jsonschema decides and words every failure. For schemas made only of the
keywords listed below, a fastjsonschema-compiled check goes first: it is
~10x cheaper and its "valid" agrees with jsonschema on those keywords (it
can only be stricter, and a value it rejects is judged by jsonschema), which
keeps ParseJSON's per-row cost close to a hand-written json.loads
(bench/row_overhead.py). Anything else ($ref, format, newer drafts'
keywords) is validated by jsonschema alone.
"""
from typing import Any, Callable, Optional

# Keywords with the same meaning in draft 7 (fastjsonschema) and 2020-12.
_FAST_KEYWORDS = frozenset({
    'type', 'properties', 'required', 'additionalProperties', 'items',
    'enum', 'const', 'minLength', 'maxLength', 'pattern', 'minimum',
    'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'multipleOf',
    'minItems', 'maxItems', 'uniqueItems', 'minProperties', 'maxProperties',
    'anyOf', 'oneOf', 'allOf', 'not', 'title', 'description', 'default',
    'examples', '$comment'})
_SCHEMA_MAPS = ('properties',)
_SCHEMA_LISTS = ('anyOf', 'oneOf', 'allOf')


class SchemaValidator:
  """Picklable; compiles its validators on first use (on the worker)."""
  def __init__(self, schema: dict):
    self._schema = schema
    self._full = None
    self._fast: Optional[Callable[[Any], Any]] = None  # Raises if invalid.
    self._fast_error = None

  def _compile(self):
    import jsonschema
    cls = jsonschema.validators.validator_for(self._schema)
    self._full = cls(self._schema, format_checker=cls.FORMAT_CHECKER)
    if _fast_compatible(self._schema):
      import fastjsonschema
      self._fast = fastjsonschema.compile(self._schema)
      self._fast_error = fastjsonschema.JsonSchemaException

  def problem(self, value: Any) -> Optional[str]:
    """None if `value` is valid, else the most relevant reason, one line."""
    if self._full is None:
      self._compile()
    if self._fast is not None:
      try:
        self._fast(value)
        return None
      except self._fast_error:
        pass
    if self._full.is_valid(value):  # Stops at the first error: cheaper.
      return None
    import jsonschema
    error = jsonschema.exceptions.best_match(self._full.iter_errors(value))
    where = '/'.join(str(p) for p in error.absolute_path) or '(root)'
    return f'{where}: {error.message}'

  def __getstate__(self):
    return {'_schema': self._schema, '_full': None, '_fast': None,
            '_fast_error': None}


def _fast_compatible(schema: Any) -> bool:
  if isinstance(schema, bool):
    return True
  if not isinstance(schema, dict) or not set(schema) <= _FAST_KEYWORDS:
    return False
  for key in _SCHEMA_MAPS:
    if not all(_fast_compatible(s) for s in (schema.get(key) or {}).values()):
      return False
  for key in _SCHEMA_LISTS:
    if not all(_fast_compatible(s) for s in schema.get(key) or []):
      return False
  for key in ('items', 'additionalProperties', 'not'):
    if key in schema and not _fast_compatible(schema[key]):
      return False
  return True
