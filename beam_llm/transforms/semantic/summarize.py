"""SemanticReduce and SummarizePerKey: an LLM reduce, as a Beam combine (so
windows work too): a group's texts -> one answer, text or typed fields."""
import typing
from typing import Any, Mapping, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.typehints import row_type

from beam_llm import _config
from beam_llm import _rows
from beam_llm import json_schema_types
from beam_llm import lineage as lineage_policy
from beam_llm.transforms.semantic import _answers
from beam_llm.transforms.semantic import _asking
from beam_llm.transforms.semantic import _base
from beam_llm.transforms.semantic import _options
from beam_llm.transforms.semantic import _reduce

_DEFAULT_INSTRUCTION = 'Summarize the texts below in one short paragraph.'


class _LLMReduce(beam.PTransform):
  """What both operators are; each only declares its options."""
  def _setup(self, owner, group_by, field, instruction, schema, output,
             count_output, max_input_tokens, tokenizer, chars_per_token, chat,
             error_handling, generate_options):
    self._owner = owner
    self._keys = _base.group_fields(owner, group_by)
    self._field = field
    self._count_output = count_output
    if chars_per_token <= 0:
      _config.fail(owner, 'chars_per_token', 'must be positive')
    max_new = generate_options.get('max_new_tokens', 256)
    margin = _reduce.CHAT_MARGIN if chat else 0
    if max_input_tokens < 2 * max_new + margin + 64:
      _config.fail(
          owner, 'max_input_tokens',
          f'({max_input_tokens}) must leave room for two summaries of '
          f'max_new_tokens ({max_new}) and the instructions: give at least '
          f'{2 * max_new + margin + 64}')
    if schema is not None and (schema.get('type') != 'object' or
                               not schema.get('properties')):
      _config.fail(owner, 'schema', 'must describe an object with properties '
                   '(its properties become the output fields)')
    reason_output, examples = _options.shared(owner, generate_options)
    if reason_output and schema is None:
      # The reason needs a structured answer: the text becomes a property.
      schema = _answers.answer_schema({output: {'type': 'string'}})
    schema = (None if schema is None else
              _answers.with_reason(owner, schema, reason_output))
    self._schema = schema
    self._reason_output = reason_output
    self._answer_fields = [
        (reason_output if n == _answers.REASON and reason_output else n, t)
        for n, t in (json_schema_types.fields(schema) if schema else
                     [(output, str)])]
    generate = _options.generate_text(owner, generate_options, 'prompt',
                                      'response', schema)
    spec = generate_options['model_handler']
    if tokenizer is None and spec.get('type') == 'HuggingFace':
      config = spec.get('config') or {}
      tokenizer = config.get('tokenizer') or config.get('model')
    self._generate = generate
    self._fn = _reduce.ReduceFn(
        owner,
        _asking.Asker(owner, _options.handler_of(generate), schema,
                      generate_options.get('max_batch_size') or 8),
        _reduce.Prompts(instruction or _DEFAULT_INSTRUCTION, chat, schema,
                        _answers.examples_text(owner, examples, schema)),
        _reduce.Budget(max_input_tokens - margin, tokenizer, chars_per_token),
        structured=schema is not None)
    self._error_output = _config.error_output_name(owner, error_handling)

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    for key in self._keys:
      _rows.require_field(self._owner, 'group_by', key, fields)
    _rows.require_field(self._owner, 'field', self._field, fields)
    _options.handler_of(self._generate).check_at_build()
    types = dict(fields) if fields is not None else {}
    key_fields = [(k, types.get(k, Any)) for k in self._keys]
    lineage = _options.lineage_of(self._generate, pcoll.pipeline)
    out_type = row_type.RowTypeConstraint.from_fields(
        key_fields + self._answer_fields + [(self._count_output, int)] +
        ([(lineage_policy.FIELD, lineage_policy.LINEAGE)] if lineage else []))
    keys, field = self._keys, self._field
    # Typed keys: the grouping needs a deterministic coder for them.
    key_type = typing.Tuple[tuple(t for _, t in key_fields)]
    answers = (
        pcoll
        | 'KeyAndText' >> beam.Map(
            lambda row: (tuple(getattr(row, k) for k in keys),
                         _text(getattr(row, field)))).with_output_types(
                             typing.Tuple[key_type, str])
        | 'Reduce' >> beam.CombinePerKey(self._fn))
    return _rows.split_outputs(
        answers,
        'ToRows',
        _ToRowsDoFn(self._owner, self._keys, self._schema, self._answer_fields,
                    self._reason_output, self._count_output, lineage),
        out_type,
        self._error_output,
        element_type=row_type.RowTypeConstraint.from_fields(
            key_fields + [(self._count_output, int)]))


@_options.inherits_generate_options
class SemanticReduce(_LLMReduce):
  """Reduces all the rows of each group (or of the whole input) to one
  answer: a summary, or the typed fields of a JSON Schema (an LLM reduce).

  `group_by` is optional: without it the whole input (each window of it,
  on windowed input) is one group. Rows are grouped with a Beam combine, so
  this works per window on streaming input (window the input first, e.g.
  `windowing: {type: fixed, size: 1d}`). Each group's texts are reduced in
  one model call when they fit in `max_input_tokens`; a bigger group is
  reduced in rounds: its texts (a text longer than half the budget is
  split first) are packed into chunks that each fit the budget, each chunk
  is reduced, and the answers are packed and reduced again until one call
  covers everything. No call's prompt exceeds the budget.

  With `schema` (or `schema_file`), every call answers with a JSON object
  in that schema (constrained where the backend can, like Extract), a
  round's partial answers are the next round's texts, and the final
  answer's properties become typed fields of the output row. Without it,
  the answer is text in `output`. `reason_output` asks for the final
  answer's reason; `examples` are `{input: [<text>, ...], output: <answer>}`.

  Tokens are counted with the model's tokenizer for the HuggingFace backend
  (or `tokenizer`), otherwise estimated as `chars_per_token` characters per
  token. Texts are taken in sorted order, so a run is repeatable.

  Output: one row per group (and window) with the `group_by` fields, the
  answer, and the number of rows reduced in `count_output`. A group whose
  model call fails (or whose answer does not fit the schema) goes to the
  error output as one error row whose `element` holds the key fields and
  the count. The group's texts are held in memory until it is reduced.

  Args:
    field: The input field holding the text to reduce.
    instruction: What the answer should say, e.g. `List the three most
      common problems.` Defaults to a short generic summary.
    group_by: The field, or list of fields, whose values form the groups.
      Defaults to none: one answer for the whole input (per window).
    schema: A JSON Schema (inline) of the answer, an object whose properties
      become the output fields. Give at most one of `schema` and
      `schema_file`.
    schema_file: Path of a JSON file holding that schema.
    output: Name of the field that receives a text answer (no schema).
      Defaults to `summary`.
    count_output: Name of the field that receives the number of rows
      reduced. Defaults to `count`.
    max_input_tokens: The most tokens one prompt may have (the model's
      context minus `max_new_tokens`, or less). Must leave room for at least
      two answers per call. Defaults to 2048.
    tokenizer: A HuggingFace tokenizer (hub id or directory) to count
      tokens with. Defaults to the model's for the HuggingFace backend.
    chars_per_token: Characters per token for estimating prompt sizes when
      no tokenizer is used. Defaults to 3 (conservative for English).
    error_handling: `{output: <name>}` sends groups that fail to that output
      as error rows instead of failing the pipeline.
  """
  def __init__(
      self,
      field: str,
      instruction: Optional[str] = None,
      group_by: Optional[Union[str, Sequence[str]]] = None,
      schema: Optional[Mapping[str, Any]] = None,
      schema_file: Optional[str] = None,
      output: str = 'summary',
      count_output: str = 'count',
      max_input_tokens: int = 2048,
      tokenizer: Optional[str] = None,
      chars_per_token: float = 3.0,
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    if schema is not None or schema_file is not None:
      schema = _config.load_json_schema('SemanticReduce', schema, schema_file)
    self._setup('SemanticReduce', group_by, field, instruction, schema, output,
                count_output, max_input_tokens, tokenizer, chars_per_token,
                generate_options['chat'], error_handling, generate_options)


@_options.inherits_generate_options
class SummarizePerKey(_LLMReduce):
  """Summarizes all the rows of each key into one text (an LLM reduce).

  SemanticReduce with a required `group_by` and a text answer; see
  SemanticReduce for how groups too big for one prompt are summarized in
  rounds, how tokens are counted and what fails where.

  Output: one row per key (and window) with the `group_by` fields, the
  summary in `output` and the number of rows summarized in `count_output`.

  Args:
    group_by: The field, or list of fields, whose values form the key.
    field: The input field holding the text to summarize.
    instruction: What the summary should say, e.g. `Summarize what made
      these customers unhappy, most common problems first.` Defaults to a
      short generic summary.
    output: Name of the field that receives the summary. Defaults to
      `summary`.
    count_output: Name of the field that receives the number of rows
      summarized. Defaults to `count`.
    max_input_tokens: The most tokens one prompt may have (the model's
      context minus `max_new_tokens`, or less). Must leave room for at least
      two summaries per call. Defaults to 2048.
    tokenizer: A HuggingFace tokenizer (hub id or directory) to count
      tokens with. Defaults to the model's for the HuggingFace backend.
    chars_per_token: Characters per token for estimating prompt sizes when
      no tokenizer is used. Defaults to 3 (conservative for English).
    error_handling: `{output: <name>}` sends groups whose summary fails to
      that output as error rows instead of failing the pipeline.
  """
  def __init__(
      self,
      group_by: Union[str, Sequence[str]],
      field: str,
      instruction: Optional[str] = None,
      output: str = 'summary',
      count_output: str = 'count',
      max_input_tokens: int = 2048,
      tokenizer: Optional[str] = None,
      chars_per_token: float = 3.0,
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    self._setup('SummarizePerKey', group_by, field, instruction, None, output,
                count_output, max_input_tokens, tokenizer, chars_per_token,
                generate_options['chat'], error_handling, generate_options)


def _text(value) -> str:
  return '' if value is None else str(value)


class _ToRowsDoFn(beam.DoFn):
  def __init__(self, owner, keys, schema, answer_fields, reason_output,
               count_output, lineage):
    self._owner = owner
    self._lineage = lineage
    self._reason_output = reason_output
    self._keys = keys
    self._schema = schema
    self._text_output = answer_fields[0][0]
    self._count_output = count_output

  def setup(self):
    self._convert = (json_schema_types.fields_converter(self._schema)
                     if self._schema else None)

  def process(self, keyed):
    key, (status, value, count) = keyed
    fields = dict(zip(self._keys, key))
    if status == 'ok':
      answer = (self._convert(value) if self._convert else
                {self._text_output: value})
      if self._reason_output:
        answer[self._reason_output] = answer.pop(_answers.REASON)
      if self._lineage:
        answer[lineage_policy.FIELD] = lineage_policy.merged({}, self._lineage)
      yield beam.Row(**fields, **answer, **{self._count_output: count})
      return
    msg, error_type = value
    yield from _rows.tag_error(
        _rows.error_row(
            beam.Row(**fields, **{self._count_output: count}),
            f'{self._owner} ({error_type}): {msg}', error_type))
