"""ReadJsonLines: JSON-lines files -> typed rows; a bad line costs one row."""
import json
from typing import Any, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import row_type

from beam_llm import _config
from beam_llm import _rows
from beam_llm import json_schema_types
from beam_llm import json_validation

_OWNER = 'ReadJsonLines'

BadLine = row_type.RowTypeConstraint.from_fields([('file', str), ('line', str)])


class ReadJsonLines(beam.PTransform):
  """Reads JSON-lines files into rows typed by a JSON Schema, line by line.

  Beam's `ReadFromJson` fails the whole pipeline, at build time, on one
  malformed line. Here each line stands alone: a line that is not JSON, not
  an object, or does not match the schema (a missing field, a wrong type) is
  an error row holding the file, the line and the reason, and every good
  line is read. Blank lines are skipped.

  The schema's properties become the row's fields (typed as in ParseJSON;
  properties that are not required are nullable); other keys of a record
  are dropped.

  Args:
    path: File pattern to read (local or any Beam filesystem: gs://, s3://;
      globs such as `chats-*.jsonl`).
    schema: JSON Schema of one record (an object with `properties`). Give
      exactly one of `schema` and `schema_file`.
    schema_file: Path of a JSON file holding that schema.
    record_field: Take each record from this field of the line's object
      instead of the whole object. `element` re-reads an errors file written
      by FormatErrors, so the rows that failed in one run can be run again
      (see the README's redrive section).
    error_handling: `{output: <name>}` sends bad lines to that output as
      error rows (`element` = `{file, line}`, `msg`, `stack`, `error_type`:
      `invalid_json`, `not_an_object` or `schema`) instead of failing the
      pipeline.
  """
  @_config.checks_options(_OWNER)
  def __init__(
      self,
      path: str,
      schema: Optional[Mapping[str, Any]] = None,
      schema_file: Optional[str] = None,
      record_field: Optional[str] = None,
      error_handling: Optional[Mapping[str, Any]] = None):
    super().__init__()
    self._schema = _config.load_json_schema(_OWNER, schema, schema_file)
    if self._schema.get('type') != 'object' or not self._schema.get('properties'):
      _config.fail(_OWNER, 'schema',
                   'must describe an object with properties (they become '
                   'the row fields)')
    self._path = path
    self._record_field = record_field
    self._error_output = _config.error_output_name(_OWNER, error_handling)

  def expand(self, pbegin):
    lines = pbegin | 'Read' >> beam.io.ReadFromTextWithFilename(self._path)
    return _rows.split_outputs(
        lines, 'Parse',
        _ParseLineDoFn(self._schema, self._record_field),
        row_type.RowTypeConstraint.from_fields(
            json_schema_types.fields(self._schema)),
        self._error_output,
        element_type=BadLine)


class _ParseLineDoFn(beam.DoFn):
  def __init__(self, schema: dict, record_field: Optional[str]):
    self._schema = schema
    self._record_field = record_field
    self._read = Metrics.counter('beam_llm.ReadJsonLines', 'rows')
    self._failed = Metrics.counter('beam_llm.ReadJsonLines', 'bad_lines')

  def setup(self):
    self._validator = json_validation.SchemaValidator(self._schema)
    self._fields_of = json_schema_types.fields_converter(self._schema)

  def process(self, file_and_line):
    path, line = file_and_line
    yield from self._parse(path, line, self._record_field)

  def _parse(self, path, line, record_field):
    if not line.strip():
      return
    try:
      value = json.loads(line)
    except ValueError as exn:
      yield from self._bad(path, line, 'invalid_json', f'not valid JSON: {exn}')
      return
    if record_field is not None and isinstance(value, dict):
      value = value.get(record_field)
      if self._is_bad_line(value):
        # A redriven error row of a bad input line: read that line again,
        # so a line still bad keeps its own reason, file and text (not a
        # schema error on the wrapper, with the line nested inside).
        yield from self._parse(value['file'], value['line'], None)
        return
    if not isinstance(value, dict):
      where = f' in field {record_field!r}' if record_field else ''
      yield from self._bad(
          path, line, 'not_an_object',
          f'expected a JSON object{where}, got {json_schema_types.json_kind(value)}')
      return
    problem = self._validator.problem(value)
    if problem is not None:
      yield from self._bad(path, line, 'schema', problem)
      return
    self._read.inc()
    yield beam.Row(**self._fields_of(value))

  def _is_bad_line(self, value) -> bool:
    names = set(self._schema.get('properties') or {})
    return (isinstance(value, dict) and not {'file', 'line'} & names
            and isinstance(value.get('file'), str)
            and isinstance(value.get('line'), str))

  def _bad(self, path, line, error_type, reason):
    self._failed.inc()
    yield from _rows.tag_error(_rows.error_row(
        beam.Row(file=path, line=line), f'{_OWNER} ({error_type}): {reason}',
        error_type))
