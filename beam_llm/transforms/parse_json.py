"""ParseJSON: an LLM's text -> typed, schema-checked fields."""
from typing import Any, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_llm import _config
from beam_llm import _rows
from beam_llm import json_extract
from beam_llm import json_validation
from beam_llm import json_schema_types
from beam_llm import lineage as lineage_policy

_OWNER = 'ParseJSON'


class ParseJSON(beam.PTransform):
  """Parses JSON out of a text field and adds its properties as typed fields.

  The text goes through a ladder: strict JSON, then JSON found inside
  ```json fences, `<answer>`-style tags or surrounding prose, then (if
  `repair` is on) repair of common breakage such as single quotes or trailing
  commas. The first candidate that validates against the schema wins. Output
  that was cut off mid-object is never "repaired" into a shorter answer: it
  goes to the error output with `error_type: truncated`.

  The schema's properties become fields of the output row, typed from the
  schema (integer -> int, number -> float, string -> str, boolean -> bool,
  array -> list, object -> row; properties that are not required are
  nullable), so `Filter`, `MapToFields` and `Sql` can use them. The input
  fields are kept; a property with the same name as an input field replaces
  it.

  Args:
    field: Name of the input field holding the text to parse, e.g. `response`.
    schema: The JSON Schema (inline) of the expected object. Its top level must
      be an object with `properties`. Give exactly one of `schema` and
      `schema_file`.
    schema_file: Path of a JSON file holding the schema (local or any Beam
      filesystem; relative paths are resolved from the current directory).
    repair: Whether to repair broken JSON (single quotes, smart quotes,
      trailing commas, comments, unquoted keys, Python literals such as True
      and None) with json_repair. Defaults to true.
    coerce: Whether to turn numbers written as text ("-1") into numbers where
      the schema asks for an integer or number and nothing is lost ("1.5" is
      never made an integer). Defaults to true.
    lineage: Add (or fill in) the row field `lineage` with the run id and
      `schema_hash`, a hash of the schema, keeping what RenderPrompt and
      GenerateText put there (docs/lineage.md). Defaults to false.
    error_handling: `{output: <name>}` sends rows that cannot be parsed or do
      not validate to that output as Beam YAML error rows (`element`, `msg`,
      `stack`, `error_type`: one of `empty`, `truncated`, `invalid_json`,
      `schema`, `not_text`), instead of failing the pipeline.
  """
  @_config.checks_options(_OWNER)
  def __init__(
      self,
      field: str,
      schema: Optional[Mapping[str, Any]] = None,
      schema_file: Optional[str] = None,
      repair: bool = True,
      coerce: bool = True,
      lineage: bool = False,
      error_handling: Optional[Mapping[str, Any]] = None):
    super().__init__()
    self._schema = _object_schema(
        _config.load_json_schema(_OWNER, schema, schema_file))
    self._field = field
    self._repair = repair
    self._coerce = coerce
    self._lineage = lineage
    self._error_output = _config.error_output_name(_OWNER, error_handling)

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    _rows.require_field(_OWNER, 'field', self._field, fields)
    added = list(json_schema_types.fields(self._schema))
    lineage = None
    if self._lineage:
      names = {name for name, _ in added}
      if lineage_policy.FIELD in names:
        _config.fail(_OWNER, 'lineage',
                     f'cannot be used with a schema that has a property named '
                     f'{lineage_policy.FIELD!r}')
      lineage = {'run_id': lineage_policy.run_id(pcoll.pipeline),
                 'schema_hash': lineage_policy.json_hash(self._schema)}
      added.append((lineage_policy.FIELD, lineage_policy.LINEAGE))
    return _rows.split_outputs(
        pcoll,
        'Parse',
        _ParseDoFn(self._field, self._schema, self._repair, self._coerce,
                   lineage),
        _rows.row_type_with(fields, added),
        self._error_output)


def _object_schema(schema: dict) -> dict:
  if schema.get('type') != 'object' or not schema.get('properties'):
    _config.fail(
        _OWNER,
        'schema',
        'must describe an object with properties '
        '(its properties become the output fields)')
  return schema


class _ParseDoFn(beam.DoFn):
  def __init__(self, field: str, schema: dict, repair: bool, coerce: bool,
               lineage: Optional[dict] = None):
    self._field = field
    self._lineage = lineage
    self._schema = schema
    self._repair = repair
    self._coerce = coerce
    self._parsed = _rows.BundleCounter('beam_llm.ParseJSON', 'parsed')
    self._repaired = Metrics.counter('beam_llm.ParseJSON', 'repaired')
    self._failed = Metrics.counter('beam_llm.ParseJSON', 'failed')

  def setup(self):
    self._validator = json_validation.SchemaValidator(self._schema)
    self._fields_of = json_schema_types.fields_converter(self._schema)

  def _validate(self, value) -> Optional[str]:
    if not isinstance(value, dict):
      return f'expected a JSON object, got {json_schema_types.json_kind(value)}'
    return self._validator.problem(value)

  def _prepare(self, value):
    if not self._coerce:
      return value
    return json_schema_types.coerce_numbers(value, self._schema)

  def process(self, row):
    text = getattr(row, self._field, None)
    if text is not None and not isinstance(text, str):
      return self._error(
          row, 'not_text', f'field {self._field!r} is a '
          f'{type(text).__name__}, not text')
    try:
      value, rung = json_extract.parse(
          text, self._validate, self._repair, self._prepare)
    except json_extract.ParseFailure as failure:
      return self._error(row, failure.rung, failure.reason)
    self._parsed.inc()
    if rung == 'repair':
      self._repaired.inc()
    # The input's fields, then the schema's properties (replacing an input
    # field of the same name in place), written into one new dict.
    out = self._fields_of(value, dict(_rows.fields_of(row)))
    if self._lineage:
      out[lineage_policy.FIELD] = lineage_policy.merged(row, self._lineage)
    return [_rows.new_row(out)]

  def finish_bundle(self):
    self._parsed.flush()

  def _error(self, row, error_type: str, reason: str):
    self._failed.inc()
    return _rows.tag_error(
        _rows.error_row(
            row, f'{_OWNER} ({error_type}): {reason}', error_type))
