"""SemanticFilter: keeps the rows for which a plain-language condition holds."""
from typing import Any, Mapping, Optional

from beam_llm import _config
from beam_llm.transforms.semantic import _answers
from beam_llm.transforms.semantic import _base
from beam_llm.transforms.semantic import _options

_OWNER = 'SemanticFilter'
_YES = {'true', 'yes', 'y'}
_NO = {'false', 'no', 'n'}


@_options.inherits_generate_options
class SemanticFilter(_base.SemanticOperator):
  """Keeps the rows for which the model decides a condition holds.

  The condition is plain language (`The customer is unhappy.`). The model
  answers with a JSON boolean, constrained to it (constrained decoding on
  HuggingFace, structured output on OpenAICompatible and Gemini), optionally after
  a one-sentence reason; rows where it holds come out unchanged (plus the
  reason, with `reason_output`), rows where it does not are dropped
  (counted in the `dropped_rows` metric), and rows the model could not
  decide go to the error output with its raw answer. A bare `yes`/`no`/
  `true`/`false` answer (a server without structured output) counts too.

  Args:
    condition: The condition, in plain language, that a kept row satisfies.
    error_handling: `{output: <name>}` sends rows that fail to that output
      as error rows (`element` is the input row; `error_type` is the failing
      step's: `render`, a GenerateText type such as `prompt_too_long`, or a
      ParseJSON type such as `schema` or `invalid_json` for an answer that
      is not a decision, `truncated`, `empty`).
  """
  owner = _OWNER  # Who messages and metrics name (SemanticJoin reuses it).
  opt_in = ('field', 'template', 'template_file', 'keep_fields',
            'prompt_output', 'cascade')  # _options.OPT_IN

  def __init__(
      self,
      condition: str,
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    options = {k: v for k, v in locals().items()
               if k not in ('self', '__class__', 'generate_options')}
    if not condition.strip():
      _config.fail(self.owner, 'condition', 'is empty')
    source = _base.content_source(self.owner, generate_options)
    task = _base.literal(
        'Decide whether this condition holds for the text below.\n\n'
        f'Condition: {condition.strip()}\n\n') + source
    self._build(
        self.owner, {**options, **generate_options},
        'You judge texts carefully. You answer with JSON only.', task,
        _answers.answer_schema({'holds': {'type': 'boolean'}}), _Decision(),
        form='{"holds": true or false}')


class _Decision(_base.Decider):
  def decide(self, parsed):
    return {} if parsed['holds'] else None

  def rescue(self, text):
    answer = _base.normalized(text)
    if answer in _YES | _NO:
      return {'holds': answer in _YES}
    return None
