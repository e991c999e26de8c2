"""SemanticMap: a plain-language instruction applied to each row's text."""
from typing import Any, Mapping, Optional

from beam_llm import _config
from beam_llm.transforms.semantic import _answers
from beam_llm.transforms.semantic import _base
from beam_llm.transforms.semantic import _options

_OWNER = 'SemanticMap'


@_options.inherits_generate_options
class SemanticMap(_base.SemanticOperator):
  """Applies an instruction to each row's text and adds the model's answer.

  The one-line form of RenderPrompt -> GenerateText for free-text tasks
  (`Translate to French.`, `Rewrite as one polite sentence.`, `Name the
  product this chat is about.`). The answer is asked for as JSON
  (`{"output": "..."}`, constrained where the backend can) so that a
  cut-off answer is reported (`truncated`) instead of passed on half
  written; a plain-text answer (a server without structured output) is
  taken as it is.

  Args:
    instruction: What to do with the text, in plain language.
    output: Name of the field that receives the answer. Defaults to
      `result`.
    max_output_chars: Longest answer accepted; longer ones go to the error
      output (`too_long`). Defaults to none.
    error_handling: `{output: <name>}` sends rows that fail to that output
      as error rows (`element` is the input row; `error_type` is the failing
      step's: `render`, a GenerateText type such as `prompt_too_long`, a
      ParseJSON type such as `truncated`, or `too_long`).
  """
  opt_in = ('field', 'template', 'template_file', 'keep_fields',
            'prompt_output')  # _options.OPT_IN

  def __init__(
      self,
      instruction: str,
      output: str = 'result',
      max_output_chars: Optional[int] = None,
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    options = {k: v for k, v in locals().items()
               if k not in ('self', '__class__', 'generate_options')}
    if not instruction.strip():
      _config.fail(_OWNER, 'instruction', 'is empty')
    if not output.isidentifier():
      _config.fail(_OWNER, 'output', f'{output!r} is not a plain field name')
    if max_output_chars is not None and max_output_chars < 1:
      _config.fail(_OWNER, 'max_output_chars',
                   f'must be at least 1, got {max_output_chars}')
    source = _base.content_source(_OWNER, generate_options)
    self._build(
        _OWNER, {**options, **generate_options},
        'You follow instructions exactly. You answer with JSON only.',
        _base.literal(f'{instruction.strip()}\n\n') + source,
        _answers.answer_schema({'output': {'type': 'string'}}),
        _Answer(output, max_output_chars), form='{"output": "<your answer>"}')


class _Answer(_base.Decider):
  def __init__(self, output: str, max_chars: Optional[int]):
    self._output = output
    self._max_chars = max_chars
    self.output_fields = [(output, str)]

  def decide(self, parsed):
    text = parsed['output'].strip()
    if self._max_chars is not None and len(text) > self._max_chars:
      raise _base.Unplaceable(
          'too_long', f'the answer has {len(text)} characters, more than '
          f'max_output_chars ({self._max_chars})')
    return {self._output: text}

  def rescue(self, text):
    # Prose from a server without structured output; never the start of a
    # JSON object cut off by max_new_tokens (that stays `truncated`).
    text = text.strip()
    if text and not text.startswith(('{', '[', '```')):
      return {'output': text}
    return None
