"""The answer an operator asks the model for: its JSON Schema (with the
reason first when `reason_output` is set), how the prompt asks for it, and
the few-shot `examples`, checked against that schema at build. One place
for these policies, for every operator."""
import json
from typing import Mapping, Optional

from beam_llm import _config

REASON_MAX_CHARS = 200
REASON = 'reason'  # The answer's reason property (reason_output).


def with_reason(owner: str, schema: dict, reason_output: Optional[str]) -> dict:
  """The answer schema, with a short reason first when `reason_output` is
  set (the model writes it before deciding: that is the point)."""
  if not reason_output:
    return schema
  if REASON in schema.get('properties', {}):
    _config.fail(owner, 'reason_output',
                 f'needs the answer property {REASON!r}, which the schema has')
  return {
      **schema,
      'properties': {
          REASON: {'type': 'string', 'maxLength': REASON_MAX_CHARS},
          **schema['properties']
      },
      'required': [REASON] + list(schema.get('required', ())),
  }


def answer_schema(properties: dict, reason_output: Optional[str] = None,
                  owner: str = '') -> dict:
  """A closed object schema of these properties (all required)."""
  return with_reason(owner, {
      'type': 'object',
      'properties': properties,
      'required': list(properties),
      'additionalProperties': False
  }, reason_output)


def answer_instruction(form: Optional[str], schema: dict) -> str:
  """How to answer: in `form` (`{"holds": true or false}`), or, without
  one, in the JSON Schema itself (whose descriptions the model reads)."""
  if form is None:
    shown = {k: v for k, v in schema.items() if k not in ('$schema', '$id', 'title')}
    return ('Answer with one JSON object that follows this JSON Schema:\n' +
            json.dumps(shown, ensure_ascii=False))
  if REASON in schema.get('properties', {}):
    form = '{"reason": "<one short sentence>", ' + form.lstrip('{ ')
  return f'Answer with JSON only, in this form: {form}'


def example_answer(output, schema: dict) -> dict:
  """An example's `output` (as the operator gives it) as the model's JSON
  answer: the value of the only property, or the object itself."""
  names = [n for n in schema['properties'] if n != REASON]
  if isinstance(output, Mapping) and set(output) <= set(names):
    return dict(output)
  if len(names) == 1:
    return {names[0]: output}
  raise ValueError(f'must be an object with fields {", ".join(names)}')


def shown_input(value) -> str:
  """An example's `input` as the model reads it."""
  if isinstance(value, Mapping):
    return '\n'.join(f'- {k}: {v}' for k, v in value.items())
  if isinstance(value, (list, tuple)):
    return '\n\n'.join(str(v) for v in value)
  return str(value)


def examples_text(owner: str, examples, schema: Optional[dict],
                  shown=shown_input) -> str:
  """The few-shot block, checked against the answer schema at build: each
  example's answer is what the model must write for its input."""
  if not examples:
    return ''
  from beam_llm.json_validation import SchemaValidator
  validator = SchemaValidator(schema) if schema is not None else None
  wants_reason = schema is not None and REASON in schema['properties']
  parts = []
  for i, example in enumerate(examples):
    key = f'examples[{i}]'
    if (not isinstance(example, Mapping) or not {'input', 'output'} <= set(example)
        or set(example) - {'input', 'output', REASON}):
      _config.fail(owner, key, 'must be {input: ..., output: ...}, with an '
                   f'optional {REASON}')
    if schema is None:  # A text answer (SemanticReduce without a schema).
      answer = str(example['output'])
    else:
      try:
        answer = example_answer(example['output'], schema)
      except ValueError as exn:
        _config.fail(owner, key + '.output', str(exn))
      if wants_reason:
        if not example.get(REASON):
          _config.fail(owner, key, f'needs a {REASON} (reason_output is set)')
        answer = {REASON: str(example[REASON]), **answer}
      problem = validator.problem(answer)
      if problem:
        _config.fail(owner, key + '.output',
                     f'does not fit the answer schema: {problem}')
      answer = json.dumps(answer, ensure_ascii=False)
    parts.append(f'<example>\n<input>\n{shown(example["input"])}\n</input>\n'
                 f'<answer>{answer}</answer>\n</example>')
  return ('Examples of the task, with the answers expected:\n\n' +
          '\n\n'.join(parts) + '\n\nNow the task.\n\n')
