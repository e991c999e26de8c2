"""Classify: a field -> one (or several) of the given labels, as a typed field."""
import json
from typing import Any, Mapping, Optional, Sequence, Union

from beam_llm import _config
from beam_llm.transforms.semantic import _answers
from beam_llm.transforms.semantic import _base
from beam_llm.transforms.semantic import _options

_OWNER = 'Classify'


@_options.inherits_generate_options
class Classify(_base.SemanticOperator):
  """Puts each row in one of the given labels (or several, with `multi_label`).

  RenderPrompt + GenerateText + ParseJSON in one step, with the prompt
  written for you. The answer is constrained to the labels: a JSON Schema
  with an `enum` of them is GenerateText's `response_schema`, so a
  HuggingFace model can only write a valid label (constrained decoding) and
  OpenAICompatible / Gemini servers get it as structured output.
  Backends without either (KerasHub, VertexAI) are prompted for JSON and
  their answer is checked the same way. An answer that is exactly one label, without
  JSON (`positive`), is accepted too.

  The label lands in the `output` field, typed: a string (or an integer,
  when the labels are integers such as -1, 0, 1), or, with `multi_label`, a
  list of them in the order of `labels`. Rows the model cannot place (an
  answer that is not a label, cut off, empty) go to the error output with
  the model's raw answer in `msg`; every row ends in exactly one output.

  Args:
    labels: The labels: a list (`[positive, neutral, negative]`), or a
      mapping from label to a description the model reads
      (`{-1: unhappy customer, 0: neutral, 1: happy customer}`). All strings
      or all integers.
    instruction: What to judge, in plain words, e.g. `The customer's tone at
      the end of the chat.` Defaults to a generic classification request.
    multi_label: Choose every label that applies (a list, possibly empty)
      instead of exactly one. Defaults to false.
    output: Name of the field that receives the label(s). Defaults to
      `label`.
    error_handling: `{output: <name>}` sends rows that fail to that output
      as error rows (`element` is the input row; `error_type` is the failing
      step's: `render`, a GenerateText type such as `prompt_too_long` or
      `rate_limited`, or a ParseJSON type such as `schema` for an answer
      that is not a label, `truncated`, `empty`, `invalid_json`).
  """
  opt_in = ('field', 'template', 'template_file', 'keep_fields',
            'prompt_output', 'cascade')  # _options.OPT_IN

  def __init__(
      self,
      labels: Union[Sequence[Any], Mapping[Any, str]],
      instruction: Optional[str] = None,
      multi_label: bool = False,
      output: str = 'label',
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    options = {k: v for k, v in locals().items()
               if k not in ('self', '__class__', 'generate_options')}
    descriptions = _labels(labels)
    names = list(descriptions)
    kind = 'integer' if isinstance(names[0], int) else 'string'
    enum = {'type': kind, 'enum': names}
    key = 'labels' if multi_label else 'label'
    prop = ({'type': 'array', 'items': enum, 'maxItems': len(names)}
            if multi_label else enum)
    source = _base.content_source(_OWNER, generate_options)
    self._build(
        _OWNER, {**options, **generate_options},
        'You are a careful classifier. You answer with JSON only.',
        _base.literal(_user_prompt(instruction, descriptions, multi_label)) + source,
        _answers.answer_schema({key: prop}),
        _LabelDecider(names, multi_label, output, int if kind == 'integer' else str),
        form='{"labels": [<label>, ...]}' if multi_label else '{"label": <label>}')


def _labels(labels) -> dict:
  """label -> description (or None), checked."""
  if isinstance(labels, Mapping):
    descriptions = dict(labels)
  else:
    descriptions = {label: None for label in labels}
    if len(descriptions) != len(labels):
      _config.fail(_OWNER, 'labels', 'lists a label twice')
  if len(descriptions) < 2:
    _config.fail(_OWNER, 'labels', 'must give at least two labels')
  kinds = {bool if isinstance(l, bool) else type(l) for l in descriptions}
  if kinds not in ({str}, {int}):
    _config.fail(_OWNER, 'labels',
                 'must be all strings or all integers, got '
                 f'{", ".join(sorted(repr(l) for l in descriptions))}')
  for label, text in descriptions.items():
    if text is not None and not isinstance(text, str):
      _config.fail(_OWNER, f'labels.{label}', 'must be a text description')
    if isinstance(label, str) and not label.strip():
      _config.fail(_OWNER, 'labels', 'has an empty label')
  return descriptions


def _user_prompt(instruction, descriptions, multi_label) -> str:
  lines = [instruction or 'Classify the text below.', '', 'Labels:']
  for label, text in descriptions.items():
    lines.append(f'- {json.dumps(label)}' + (f': {text}' if text else ''))
  lines += [
      '',
      'Choose every label that applies (possibly none).'
      if multi_label else 'Choose exactly one label.', '', ''
  ]
  return '\n'.join(lines)


class _LabelDecider(_base.Decider):
  def __init__(self, labels, multi_label, output, label_type):
    self._labels = labels
    self._multi = multi_label
    self._output = output
    self.output_fields = [
        (output, Sequence[label_type] if multi_label else label_type)
    ]

  def decide(self, parsed):
    if self._multi:
      chosen = set(parsed['labels'] or ())
      return {self._output: [l for l in self._labels if l in chosen]}
    return {self._output: parsed['label']}

  def rescue(self, text):
    by_name = {_base.normalized(str(l)): l for l in self._labels}
    if self._multi:
      parts = [_base.normalized(p) for p in text.replace('\n', ',').split(',')]
      parts = [p for p in parts if p]
      if parts and all(p in by_name for p in parts):
        return {'labels': [by_name[p] for p in parts]}
      return None
    label = by_name.get(_base.normalized(text))
    return None if label is None else {'label': label}
