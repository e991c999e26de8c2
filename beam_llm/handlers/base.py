"""What every GenerateText backend shares: batching, model sharing, per-row
failures, metrics and progress logging, on top of Beam's ModelHandler.

A backend implements `load_model` and `generate` (and optionally
`check_at_build`); it never decides how a failure reaches the error output.
"""
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.ml.inference.base import PredictionResult

from beam_llm import progress

_LOG = logging.getLogger('beam_llm.GenerateText')
# Exceptions that mean a bug or a config error, never one row's problem.
# (Not IndexError: torch raises it for a prompt past a model's positions.)
BUG_TYPES = (TypeError, AttributeError, NameError, ImportError, AssertionError,
         NotImplementedError, SyntaxError)


@dataclasses.dataclass(frozen=True)
class GenerationFailure:
  """Takes the place of a response for a row the model could not answer.

  Plain strings only, so it pickles across process boundaries (large_model).
  """
  msg: str
  error_type: str


@dataclasses.dataclass(frozen=True)
class Generation:
  """A response with the token usage the service reported for it.

  Backends may return this instead of a plain str; the counts are None when
  unknown. GenerateText's `usage_fields` puts them on the output row.
  """
  text: str
  input_tokens: Optional[int] = None
  output_tokens: Optional[int] = None


Response = Union[str, Generation, GenerationFailure]


@dataclasses.dataclass(frozen=True)
class RowPrompt:
  """A prompt with the fields of its row, for a backend whose requests use
  other fields of the row too (`wants_row_fields`)."""
  prompt: Any
  fields: dict


def prompt_problem(prompt: Any) -> Optional[str]:
  """Why a prompt cannot be sent to any model, or None if it can."""
  if isinstance(prompt, str):
    return None if prompt.strip() else 'the prompt is empty'
  if isinstance(prompt, (list, tuple)) and prompt:
    for m in prompt:
      role = m.get('role') if isinstance(m, Mapping) else getattr(m, 'role', None)
      content = m.get('content') if isinstance(m, Mapping) else getattr(
          m, 'content', None)
      if not isinstance(role, str) or not isinstance(content, str):
        return 'a chat message needs a string role and content'
    return None
  return (
      'the prompt must be text or a list of {role, content} messages, '
      f'got {type(prompt).__name__}')


def as_messages(prompt: Sequence) -> list:
  """Chat rows (beam.Row or dict) -> the [{role, content}] lists clients take."""
  return [
      dict(m) if isinstance(m, Mapping) else {
          'role': m.role, 'content': m.content
      } for m in prompt
  ]


class TextGenerationHandler(ModelHandler[Any, Response, Any]):
  """Base ModelHandler for text generation.

  `generate(model, prompts)` returns one response (text, Generation or
  GenerationFailure) per prompt. If it raises for a whole batch, the rows are
  retried one at a time so a single bad row cannot fail its batch-mates.
  """
  backend = 'base'
  # Whether generation can be constrained to GenerateText's response_schema.
  supports_response_schema = False
  # Whether `generate` gets RowPrompts (the prompt and its row's fields)
  # instead of bare prompts.
  wants_row_fields = False

  def __init__(self, generation: Mapping[str, Any], batching: Mapping[str, Any]):
    super().__init__(**batching)
    self._generation = dict(generation)
    self.usage = {'input_tokens': 0, 'output_tokens': 0}

  # -- to implement -------------------------------------------------------
  def check_at_build(self) -> None:
    """Cheap checks at pipeline construction (no model load). Raise to fail."""

  def check_input_fields(self, names: Sequence[str]) -> None:
    """Build-time check of the input's field names. Raise to fail."""

  def describe(self) -> str:
    return self.backend

  def describe_model(self) -> dict:
    """What identifies the model, for lineage: backend, model, revision,
    endpoint (None where it does not apply). Never a secret."""
    return {'backend': self.backend, 'model': None, 'revision': None,
            'endpoint': None}

  def generate(self, model, prompts: list) -> list:
    raise NotImplementedError

  # -- shared -------------------------------------------------------------
  def record_usage(self, input_tokens: int, output_tokens: int) -> None:
    """Counts tokens (Beam metrics, and `usage` for benchmarks)."""
    self.usage['input_tokens'] += input_tokens
    self.usage['output_tokens'] += output_tokens
    namespace = self.get_metrics_namespace()
    Metrics.counter(namespace, 'input_tokens').inc(input_tokens)
    Metrics.counter(namespace, 'output_tokens').inc(output_tokens)

  def get_metrics_namespace(self) -> str:
    return 'beam_llm.GenerateText'

  def run_inference(
      self,
      batch: Sequence[Any],
      model: Any,
      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
    progress.started(self.describe(), len(batch))
    responses: list = [None] * len(batch)
    todo = []
    for i, prompt in enumerate(batch):
      problem = prompt_problem(
          prompt.prompt if isinstance(prompt, RowPrompt) else prompt)
      if problem:
        responses[i] = GenerationFailure(problem, 'bad_prompt')
      else:
        todo.append(i)
    for i, response in zip(todo, self._generate_isolating_failures(
        model, [batch[i] for i in todo])):
      responses[i] = response
    self._record(responses)
    return [PredictionResult(p, r) for p, r in zip(batch, responses)]

  def _generate_isolating_failures(self, model, prompts: list) -> list:
    """`generate`, with a failed batch retried row by row.

    A row that fails on its own becomes a `generation` error row. A bug
    fails the pipeline with its own traceback: an exception of a type that
    means a programming or config error (TypeError, AttributeError, ...),
    or any exception that every row of a batch of several hits alike.
    """
    if not prompts:
      return []
    try:
      responses = self.generate(model, prompts)
    except BUG_TYPES:
      raise
    except Exception as exn:  # pylint: disable=broad-except
      if len(prompts) == 1:
        return [GenerationFailure(f'{type(exn).__name__}: {exn}', 'generation')]
      _LOG.warning(
          'GenerateText: a batch of %d failed (%s); retrying row by row',
          len(prompts), exn)
      alone = []
      for p in prompts:
        try:
          alone.append(self.generate(model, [p])[0])
        except BUG_TYPES:
          raise
        except Exception as row_exn:  # pylint: disable=broad-except
          alone.append(row_exn)
      kinds = {type(r) for r in alone}
      if len(kinds) == 1 and issubclass(kinds.pop(), Exception):
        raise alone[0]  # Every row alike: not a row's problem.
      return [GenerationFailure(f'{type(r).__name__}: {r}', 'generation')
              if isinstance(r, Exception) else r for r in alone]
    if len(responses) != len(prompts):
      raise RuntimeError(
          f'{self.backend} returned {len(responses)} responses for '
          f'{len(prompts)} prompts')
    return responses

  def _record(self, responses: list) -> None:
    failed = sum(isinstance(r, GenerationFailure) for r in responses)
    namespace = self.get_metrics_namespace()
    Metrics.counter(namespace, 'rows').inc(len(responses))
    Metrics.counter(namespace, 'failed_rows').inc(failed)
    # The progress line, every 10 s even while a batch is still running.
    progress.finished(self.describe(), len(responses), failed)


def fit_prompts(
    prompts: list,
    to_text: Callable[[Any], str],
    count_tokens: Callable[[List[str]], List[int]],
    max_tokens: Optional[int]) -> Tuple[list, list]:
  """Turns prompts into model text and keeps those that fit the model.

  Returns (responses, ok): `responses` holds a GenerationFailure for each
  prompt that could not be formatted (`bad_prompt`) or is longer than
  `max_tokens` (`prompt_too_long`) and None elsewhere; `ok` lists
  (index, text, token count) for the prompts to generate.
  """
  responses: list = [None] * len(prompts)
  texts = []
  for i, prompt in enumerate(prompts):
    try:
      texts.append((i, to_text(prompt)))
    except Exception as exn:  # e.g. no chat template: this row's problem.
      responses[i] = GenerationFailure(f'chat template: {exn}', 'bad_prompt')
  ok = []
  if not texts:  # Tokenizers fail on an empty batch.
    return responses, ok
  for (i, text), n in zip(texts, count_tokens([t for _, t in texts])):
    if max_tokens and n > max_tokens:
      responses[i] = GenerationFailure(
          f'the prompt has {n} tokens, more than the {max_tokens} this model '
          'takes here (shorten the prompt, or raise max_input_tokens / '
          'max_length)', 'prompt_too_long')
    else:
      ok.append((i, text, n))
  return responses, ok


class LocalModelHandler(TextGenerationHandler):
  """Base for backends whose model runs on the worker (HuggingFace, Keras).

  `load_model` returns an object with one method,
  `generate_batch(prompts) -> responses` (a Generation, with the row's token
  counts, or a GenerationFailure per prompt). With `large_model` or
  `model_copies`, Beam serves that object from one process per machine and
  calls it through a proxy, so only plain prompts, Generations and
  GenerationFailures cross the process boundary: never a model or a tensor.
  """
  def load_model(self):
    start = time.monotonic()
    model = self._load()
    # One line per load, with the process: shows at a glance whether
    # large_model really loaded one copy per machine.
    _LOG.info('GenerateText [%s]: model loaded in %.1fs (pid %d)',
              self.describe(), time.monotonic() - start, os.getpid())
    return model

  def _load(self):
    """Loads the model; returns an object with `generate_batch`."""
    raise NotImplementedError

  def generate(self, model, prompts: list) -> list:
    prompts = [p if isinstance(p, str) else as_messages(p) for p in prompts]
    responses = model.generate_batch(prompts)
    done = [r for r in responses if isinstance(r, Generation)]
    self.record_usage(sum(r.input_tokens for r in done),
                      sum(r.output_tokens for r in done))
    return responses
