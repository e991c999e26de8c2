"""`model_handler: {type: Keyword}`: a rule-based "model" for tests and demos.

A backend subclasses beam-llm's TextGenerationHandler (batching, per-row
failures, metrics come with it) and implements `load_model` and `generate`.
Its keyword-only constructor arguments are its `model_handler.config`
options: beam-llm checks them at build time and documents them from the
class docstring, as for the built-in backends.
"""
from typing import Mapping, Optional

from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.base import TextGenerationHandler


class KeywordHandler(TextGenerationHandler):
  """`model_handler: {type: Keyword, config: {...}}`.

  Answers each prompt with the answer of the first keyword found in it
  (case-insensitive), or `default`. A prompt that matches no keyword when
  there is no default is an error row (`error_type: generation`).

  Args:
    answers: Keyword -> answer, tried in order.
    default: The answer when no keyword matches. Defaults to none (an error).
  """
  backend = 'Keyword'

  def __init__(
      self,
      *,
      answers: Mapping[str, str],
      default: Optional[str] = None,
      generation: Optional[dict] = None,
      batching: Optional[dict] = None):
    super().__init__(generation or {}, batching or {})
    self._answers = {k.lower(): v for k, v in answers.items()}
    self._default = default

  def load_model(self):
    # Beam shares the loaded model through a weak reference: return an
    # object, not a bare list or dict.
    return _Rules(list(self._answers.items()))

  def generate(self, model, prompts: list) -> list:
    out = []
    for prompt in prompts:
      text = prompt if isinstance(prompt, str) else '\n'.join(
          m['content'] if isinstance(m, dict) else m.content for m in prompt)
      # Match the text the prompt is about when it is marked, else all of it.
      about = text.split('<text>')[-1].lower()
      answer = next((a for k, a in model.rules if k in about), self._default)
      out.append(answer if answer is not None else GenerationFailure(
          'no keyword matched and there is no default', 'generation'))
    return out


class _Rules:
  def __init__(self, rules):
    self.rules = rules
