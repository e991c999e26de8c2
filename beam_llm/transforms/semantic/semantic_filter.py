"""SemanticFilter: keeps the rows for which a plain-language condition holds."""
from typing import Any, Mapping, Optional, Sequence

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
    field: The input field holding the text to judge. Give exactly one of
      `field`, `template` and `template_file`.
    template: A Jinja template (RenderPrompt's sandbox; input fields are its
      variables) for the text, when it is made of several fields. Wrap it in
      `{% raw %}...{% endraw %}` inside a pipeline file.
    template_file: Path of a file holding that template.
    chat: Send the prompt as system + user chat messages (instruct models,
      chat APIs); false sends one plain text prompt (base models, T5).
      Defaults to true.
    keep_fields: Input fields to keep in the output, e.g. `[chat_id]`.
      Defaults to all of them. Error rows always carry the whole input row.
    prompt_output: If set, the rendered prompt is kept in a field of that
      name, to see exactly what the model was asked.
    error_handling: `{output: <name>}` sends rows that fail to that output
      as error rows (`element` is the input row; `error_type` is the failing
      step's: `render`, a GenerateText type such as `prompt_too_long`, or a
      ParseJSON type such as `schema` or `invalid_json` for an answer that
      is not a decision, `truncated`, `empty`).
  """
  owner = _OWNER  # Who messages and metrics name (SemanticJoin reuses it).
  opt_in = ('cascade',)  # _options.OPT_IN

  def __init__(
      self,
      condition: str,
      field: Optional[str] = None,
      template: Optional[str] = None,
      template_file: Optional[str] = None,
      chat: bool = True,
      keep_fields: Optional[Sequence[str]] = None,
      prompt_output: Optional[str] = None,
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    options = {k: v for k, v in locals().items()
               if k not in ('self', '__class__', 'generate_options')}
    if not condition.strip():
      _config.fail(self.owner, 'condition', 'is empty')
    source = _base.content_source(self.owner, field, template, template_file)
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
