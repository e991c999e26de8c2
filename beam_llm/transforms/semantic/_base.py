"""What the semantic operators share: a prompt built from the operator's
options, then RenderPrompt -> GenerateText -> ParseJSON, then one step that
turns the parsed answer into the operator's fields (or an error row).

The building blocks do the work (sandboxed rendering, batching, backends,
constrained decoding, the parse ladder); this module only wires them and
routes every failure of any step to one error output whose `element` is the
operator's input row, as it came in.
"""
import json
from typing import Any, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import row_type

from beam_llm import _config
from beam_llm import _rows
from beam_llm import lineage as lineage_policy
from beam_llm.transforms.semantic import _answers
from beam_llm.transforms.semantic import _cascade
from beam_llm.transforms.semantic import _options

# Fields the operator adds to rows on their way through the building blocks.
ROW = 'beam_llm_row'
PROMPT = 'beam_llm_prompt'
ANSWER = 'beam_llm_answer'
_INTERNAL = (ROW, PROMPT, ANSWER)


class Unplaceable(Exception):
  """The answer parsed, but the operator cannot use it (becomes an error row)."""
  def __init__(self, error_type: str, reason: str):
    super().__init__(reason)
    self.error_type = error_type


class Decider:
  """An operator's last step, run on the worker (so: small and picklable).

  `decide(parsed)` gets the parsed answer's properties and returns the
  fields to add to the input row, or None to drop the row (a filter), or
  raises Unplaceable. `rescue(text)` may turn an answer that is not JSON
  (a server without structured output answering `positive`) into properties.
  """
  output_fields: Sequence[tuple] = ()

  def decide(self, parsed: dict) -> Optional[dict]:
    return parsed

  def rescue(self, text: str) -> Optional[dict]:
    return None


def literal(text: str) -> str:
  """Text for a Jinja template that renders as itself (labels, conditions,
  instructions are data to RenderPrompt, never template code)."""
  return str(text).replace('{', "{{ '{' }}")


def content_source(owner: str, options: Mapping[str, Any]) -> str:
  """The Jinja source of the text the operator works on, from its
  `field`, `template` or `template_file` option (_options.OPT_IN)."""
  field, template, template_file = (
      options.get('field'), options.get('template'), options.get('template_file'))
  given = _config.exactly_one(
      owner, field=field, template=template, template_file=template_file)
  if given == 'field':
    if not field.isidentifier():
      _config.fail(owner, 'field', f'{field!r} is not a plain field name')
    return '<text>\n{{ ' + field + ' }}\n</text>'
  if given == 'template_file':
    return _config.read_text_file(owner, 'template_file', template_file)
  return template


def prompt_messages(system: str, user_source: str, chat: bool):
  """RenderPrompt options: system + user chat messages, or one text."""
  if chat:
    return {'messages': [
        {'role': 'system', 'content': literal(system)},
        {'role': 'user', 'content': user_source},
    ]}
  return {'template': literal(system) + '\n\n' + user_source}


def group_fields(owner: str, group_by) -> list:
  """`group_by` (a field, a list of them, or none) as a list."""
  if group_by is None:
    return []
  keys = [group_by] if isinstance(group_by, str) else list(group_by)
  if not keys:
    _config.fail(owner, 'group_by', 'names no field')
  return keys


def render_prompt(owner: str, **options):
  """A RenderPrompt whose option errors name the operator."""
  from beam_llm.transforms.render_prompt import RenderPrompt
  with _config.reported_as(owner):
    return RenderPrompt(**options)


class SemanticOperator(beam.PTransform):
  """Base: subclasses call `_build` in __init__ and define nothing else."""
  def _build(
      self,
      owner: str,
      options: Mapping[str, Any],
      system: str,
      task_source: str,
      schema: dict,
      decider: Decider,
      form: Optional[str] = None):
    """`options`: all the operator's options (its own, the shared ones and
    GenerateText's); `task_source`: the Jinja source of the task (the
    instruction and the text). The examples go before it, how to answer
    (`form`, or the schema itself) after it."""
    from beam_llm.transforms.parse_json import ParseJSON
    shared = _options.shared(owner, options)
    schema = _answers.with_reason(owner, schema, shared.reason_output)
    user = (literal(_answers.examples_text(owner, shared.examples, schema))
            + task_source
            + literal('\n\n' + _answers.answer_instruction(form, schema)))
    keep_fields = options.get('keep_fields')
    # Lineage: each building block fills in its part (docs/lineage.md).
    self._lineage = bool(options.get('lineage'))
    self._owner = owner
    self._schema = schema
    self._decider = decider
    self._reason_output = shared.reason_output
    self._prompt_output = options.get('prompt_output')
    self._keep_fields = None if keep_fields is None else list(keep_fields)
    self._error_output = _config.error_output_name(
        owner, options.get('error_handling'))
    self._render = render_prompt(
        owner, **prompt_messages(system, user, options.get('chat', True)),
        output=PROMPT, lineage=self._lineage,
        error_handling={'output': _rows.INNER_ERRORS})
    self._generate = _options.generate_text(owner, options, PROMPT, ANSWER, schema)
    self._cascade = None
    cascade = _cascade.CascadeOptions.of(owner, options.get('cascade'))
    if cascade is not None:
      small = _options.generate_text(
          owner, {**options, 'model_handler': cascade.model_handler}, PROMPT,
          ANSWER, schema, confidence_output=_cascade.CONFIDENCE)
      self._cascade = _cascade.Cascade(
          owner, cascade, small, self._generate,
          _cascade.Decisions(schema, decider, _answers.REASON
                             if shared.reason_output else None),
          PROMPT, ANSWER)
    self._parse = ParseJSON(
        field=ANSWER, schema=schema, lineage=self._lineage,
        error_handling={'output': _rows.INNER_ERRORS})

  def lineage(self, pipeline) -> Optional[dict]:
    """This operator's lineage values (run, model, schemas), or None when
    `lineage` is off: for operators that wrap it (Resolve)."""
    if not self._lineage:
      return None
    return {**_options.lineage_of(self._generate, pipeline),
            'schema_hash': lineage_policy.json_hash(self._schema)}

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    if fields is not None:
      clash = sorted({n for n, _ in fields} & set(_INTERNAL))
      if clash:
        _config.fail(self._owner, 'input',
                     f'has field {clash[0]!r}, a name this transform uses itself')
      names = {n for n, _ in fields}
      missing = sorted(self._render.variables - names)
      if missing:
        _config.fail(
            self._owner, 'field' if len(self._render.variables) == 1 else
            'template', f'names field(s) {", ".join(missing)} that the input '
            f'does not have (input fields: {", ".join(sorted(names))})')
    out_fields = fields
    if self._keep_fields is not None:
      for name in self._keep_fields:
        _rows.require_field(self._owner, 'keep_fields', name, fields)
      if fields is not None:
        types = dict(fields)
        out_fields = [(n, types[n]) for n in self._keep_fields]
    rendered = pcoll | 'Prompt' >> self._render
    prompt_type = _rows.input_fields(rendered['good'])
    prompt_type = dict(prompt_type)[PROMPT] if prompt_type else Any
    generated = rendered['good'] | 'Generate' >> (
        self._cascade or self._generate)
    input_names = [n for n, _ in fields] if fields is not None else None
    wrap_type = Any
    carried = [(lineage_policy.FIELD, lineage_policy.LINEAGE)] if self._lineage else []
    if fields is not None:
      wrap_type = row_type.RowTypeConstraint.from_fields([
          (ROW, row_type.RowTypeConstraint.from_fields(fields)),
          (PROMPT, prompt_type), (ANSWER, str)] + carried)
    wrapped = generated['good'] | 'Wrap' >> beam.Map(
        _wrap, input_names, self._lineage).with_output_types(wrap_type)
    parsed = wrapped | 'Parse' >> self._parse
    outcomes = (
        rendered[_rows.INNER_ERRORS]
        | 'RenderErrors' >> beam.Map(lambda e: ('render', e)),
        generated[_rows.INNER_ERRORS] | 'GenerateErrors' >> beam.Map(
            lambda e: ('generate', e)),
        parsed[_rows.INNER_ERRORS] | 'ParseErrors' >> beam.Map(lambda e: ('parse', e)),
        parsed['good'] | 'Parsed' >> beam.Map(lambda r: ('parsed', r)),
    ) | 'Outcomes' >> beam.Flatten()
    extra = list(self._decider.output_fields)
    if self._reason_output:
      extra.append((self._reason_output, str))
    extra += carried
    if self._prompt_output:
      extra.append((self._prompt_output, prompt_type))
    return _rows.split_outputs(
        outcomes,
        'Decide',
        _DecideDoFn(self._owner, self._decider, list(self._schema['properties']),
                    self._reason_output, self._prompt_output, input_names,
                    self._keep_fields, self._lineage),
        _rows.row_type_with(out_fields, extra),
        self._error_output,
        element_type=pcoll.element_type)


def _wrap(row, input_names, lineage):
  values = _rows.as_dict(row)
  names = input_names or [n for n in values if not _internal(n)]
  wrapped = {
      ROW: beam.Row(**{n: values[n] for n in names}),
      PROMPT: values[PROMPT],
      ANSWER: values[ANSWER]
  }
  if lineage:  # What RenderPrompt and GenerateText filled in; ParseJSON adds its part.
    wrapped[lineage_policy.FIELD] = values[lineage_policy.FIELD]
  return beam.Row(**wrapped)


def _internal(name: str) -> bool:
  """A field of ours (the prompt, the answer, a cascade's), not the input's."""
  return name in _INTERNAL or name.startswith('beam_llm_')


def _strip_internal(row, input_names):
  values = _rows.as_dict(row)
  names = input_names or [n for n in values if not _internal(n)]
  return beam.Row(**{n: values[n] for n in names})


def reason_of(msg: str) -> str:
  """`ParseJSON (schema): why` -> `why`."""
  head, sep, rest = msg.partition('): ')
  return rest if sep and head.startswith(('ParseJSON', 'RenderPrompt')) else msg


class _DecideDoFn(beam.DoFn):
  def __init__(self, owner, decider, properties, reason_output, prompt_output,
               input_names, keep_fields, lineage):
    self._owner = owner
    self._lineage = lineage
    self._reason_output = reason_output
    self._keep_fields = keep_fields
    self._decider = decider
    self._properties = properties
    self._prompt_output = prompt_output
    self._input_names = input_names
    namespace = f'beam_llm.{owner}'
    self._kept = Metrics.counter(namespace, 'output_rows')
    self._dropped = Metrics.counter(namespace, 'dropped_rows')
    self._failed = Metrics.counter(namespace, 'error_rows')
    self._rescued = Metrics.counter(namespace, 'rescued_answers')

  def process(self, outcome):
    kind, value = outcome
    if kind == 'parsed':
      parsed = {p: getattr(value, p) for p in self._properties}
      yield from self._finish(value, parsed)
    elif kind == 'parse':
      wrapped = value.element
      raw = getattr(wrapped, ANSWER)
      # A bare answer carries no reason: not accepted when one was asked for.
      rescued = (self._decider.rescue(raw)
                 if raw and not self._reason_output else None)
      if rescued is not None:
        self._rescued.inc()
        yield from self._finish(wrapped, rescued)
        return
      yield from self._error(
          getattr(wrapped, ROW), value.error_type,
          f'{self._owner} ({value.error_type}): {reason_of(value.msg)}; '
          f'the model answered: {raw!r}')
    else:  # A prompt that did not render, or a generation that failed.
      msg = (f'{self._owner}: {value.msg}' if kind == 'generate' else
             f'{self._owner} ({value.error_type}): {reason_of(value.msg)}')
      yield from self._error(
          _strip_internal(value.element, self._input_names), value.error_type,
          msg)

  def _finish(self, wrapped, parsed):
    row = getattr(wrapped, ROW)
    reason = parsed.pop(_answers.REASON, None) if self._reason_output else None
    try:
      fields = self._decider.decide(parsed)
    except Unplaceable as exn:
      yield from self._error(
          row, exn.error_type, f'{self._owner} ({exn.error_type}): {exn}; '
          f'the model answered: {getattr(wrapped, ANSWER)!r}')
      return
    if fields is None:
      self._dropped.inc()
      return
    self._kept.inc()
    if self._reason_output:
      fields = {**fields, self._reason_output: reason}
    if self._lineage:
      fields = {**fields, lineage_policy.FIELD: getattr(wrapped, lineage_policy.FIELD)}
    if self._prompt_output:
      fields = {**fields, self._prompt_output: getattr(wrapped, PROMPT)}
    if self._keep_fields is not None:
      row = beam.Row(**{n: getattr(row, n) for n in self._keep_fields})
    yield _rows.with_fields(row, **fields)

  def _error(self, row, error_type, msg):
    self._failed.inc()
    yield from _rows.tag_error(_rows.error_row(row, msg, error_type))


def normalized(text: str) -> str:
  """An answer without quotes, trailing punctuation, case or spacing."""
  text = text.strip()
  try:
    value = json.loads(text)
    if isinstance(value, (str, int, bool)) and not isinstance(value, float):
      text = str(value).strip()
  except ValueError:
    pass
  return text.strip('"\'`*. \n\t').lower()
