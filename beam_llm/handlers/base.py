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
from beam_llm import row_failures
from beam_llm.handlers import token_batching

_LOG = logging.getLogger('beam_llm.GenerateText')
# Tokens per model and price mode, counters named `MODE|MODEL|input` and
# `MODE|MODEL|output` (`record_usage`; priced by beam_llm/cli/costs.py).
TOKENS_NAMESPACE = 'beam_llm.tokens'


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
  # The probability of the generated tokens (exp of their log-probability
  # sum), where asked for (`confidence_output`) and the backend gives it.
  confidence: Optional[float] = None


def confidence_of(logprobs) -> Optional[float]:
  """A sequence's probability from its tokens' log-probabilities."""
  import math
  values = [float(x) for x in logprobs if x is not None]
  if not values:
    return None
  return math.exp(max(sum(values), -700.0))  # Not 0.0: still ordered.


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


class PromptError(ValueError):
  """A prompt a remote backend cannot send (becomes a `bad_prompt` row)."""


class TextGenerationHandler(ModelHandler[Any, Response, Any]):
  """Base ModelHandler for text generation.

  `generate(model, prompts)` returns one response (text, Generation or
  GenerationFailure) per prompt. If it raises for a whole batch, the rows are
  retried one at a time so a single bad row cannot fail its batch-mates.
  """
  backend = 'base'
  # Whether generation can be constrained to GenerateText's response_schema.
  supports_response_schema = False
  # Whether answers can carry `Generation.confidence` (token probabilities),
  # given when `generation['confidence']` is set (`confidence_output`).
  supports_confidence = False
  # Whether `generate` gets RowPrompts (the prompt and its row's fields)
  # instead of bare prompts.
  wants_row_fields = False
  # The transform named in messages at run time: the one the user wrote
  # (set by create_handler: an operator's name for the model inside it).
  owner = 'GenerateText'

  def __init__(self, generation: Mapping[str, Any], batching: Mapping[str, Any]):
    batching = dict(batching)
    # Not one of Beam's batching options: the model side applies it.
    self._max_batch_tokens = batching.pop('max_batch_tokens', None)
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

  def message_prefix(self) -> str:
    """`Owner [backend model]`: how run-time messages name this model."""
    return f'{self.owner} [{self.describe()}]'

  def describe_model(self) -> dict:
    """What identifies the model, for lineage: backend, model, revision,
    endpoint (None where it does not apply). Never a secret."""
    return {'backend': self.backend, 'model': None, 'revision': None,
            'endpoint': None}

  def generate(self, model, prompts: list) -> list:
    raise NotImplementedError

  def split_batch(self, model, prompts: list) -> List[List[int]]:
    """Which of a batch's prompts go to `generate` together (indices).
    One call for the whole batch unless a backend plans otherwise."""
    return [list(range(len(prompts)))]

  # -- shared -------------------------------------------------------------
  def record_usage(self, input_tokens: int, output_tokens: int,
                   mode: str = 'sync') -> None:
    """Counts tokens (Beam metrics, and `usage` for benchmarks); also per
    model and price mode (`sync`, or `batch` for a Batch API's), which the
    run summary prices (beam_llm/cli/costs.py)."""
    self.usage['input_tokens'] += input_tokens
    self.usage['output_tokens'] += output_tokens
    namespace = self.get_metrics_namespace()
    Metrics.counter(namespace, 'input_tokens').inc(input_tokens)
    Metrics.counter(namespace, 'output_tokens').inc(output_tokens)
    model = getattr(self, '_priced_as', None)
    if model is None:
      model = self._priced_as = self.describe_model().get('model') or self.backend
    for kind, n in (('input', input_tokens), ('output', output_tokens)):
      Metrics.counter(TOKENS_NAMESPACE, f'{mode}|{model}|{kind}').inc(n)

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
    refused = [r for r in responses if r is not None]
    if refused:
      self.record_rows(refused)
    prompts = [batch[i] for i in todo]
    for group in (self.split_batch(model, prompts) if prompts else []):
      answers = self._generate_isolating_failures(
          model, [prompts[j] for j in group])
      for j, response in zip(group, answers):
        responses[todo[j]] = response
      self.record_rows(answers)  # Per call: progress shows within a window.
    return [PredictionResult(p, r) for p, r in zip(batch, responses)]

  def _generate_isolating_failures(self, model, prompts: list) -> list:
    """`generate`, with a failed batch retried row by row
    (beam_llm/row_failures.py: a row that fails on its own becomes a
    `generation` error row; a bug, or a failure every row hits alike,
    fails the pipeline)."""
    return row_failures.call_isolating_failures(
        lambda some: self.generate(model, some), prompts,
        lambda exn: GenerationFailure(f'{type(exn).__name__}: {exn}',
                                      'generation'),
        _LOG, f'{self.owner} [{self.backend}]')

  def record_rows(self, responses: list) -> None:
    """Counts finished rows (metrics `rows`, `failed_rows`) and progress."""
    failed = sum(isinstance(r, GenerationFailure) for r in responses)
    namespace = self.get_metrics_namespace()
    Metrics.counter(namespace, 'rows').inc(len(responses))
    Metrics.counter(namespace, 'failed_rows').inc(failed)
    # The progress line, every 10 s even while a batch is still running.
    progress.finished(self.describe(), len(responses), failed)


def prompt_token_counts(
    prompts: list,
    to_text: Callable[[Any], str],
    count_tokens: Callable[[List[str]], List[int]]) -> List[int]:
  """Each prompt's tokens as the model will see it, for planning batches
  (LocalModelHandler.split_batch). A prompt that cannot be formatted counts
  as an empty text: `fit_prompts` makes it a `bad_prompt` row later."""
  texts = []
  for prompt in prompts:
    try:
      texts.append(to_text(prompt))
    except Exception:  # pylint: disable=broad-except
      texts.append('')  # The same failure as fit_prompts': this row's.
  return count_tokens(texts) if texts else []


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

  `load_model` returns an object with three methods:
  `generate_batch(prompts) -> responses` (a Generation, with the row's token
  counts, or a GenerationFailure per prompt), `token_counts(prompts) ->
  [int]` (each prompt's tokens as the model will see it; 0 when it cannot be
  formatted) and `batch_token_budget() -> int` (padded tokens per
  generate call, sized from the device). With `large_model` or
  `model_copies`, Beam serves that object from one process per machine and
  calls it through a proxy, so only plain prompts, numbers, Generations and
  GenerationFailures cross the process boundary: never a model or a tensor.

  Batching is by tokens (beam_llm/handlers/token_batching.py): Beam hands
  over a window of rows, which `split_batch` sorts by length and cuts to
  the token budget; `min_batch_size` / `max_batch_size` bound the rows of
  each generate call, `max_batch_tokens` the budget.
  """
  def batch_elements_kwargs(self):
    kwargs = dict(super().batch_elements_kwargs())
    if 'max_batch_duration_secs' in kwargs:
      return kwargs  # Streaming: Beam's batching, cut by time, as asked.
    # A fixed window: Beam's adaptive sizing would start at one row.
    window = max(token_batching.WINDOW_ROWS, kwargs.get('max_batch_size', 0))
    kwargs.update(min_batch_size=window, max_batch_size=window)
    return kwargs

  def split_batch(self, model, prompts: list) -> List[List[int]]:
    caps = super().batch_elements_kwargs()
    lengths = model.token_counts(self._plain(prompts))
    new_tokens = int(self._generation.get('max_new_tokens') or 0)
    groups = token_batching.plan_batches(
        lengths, new_tokens,
        self._max_batch_tokens or model.batch_token_budget(),
        max_rows=caps.get('max_batch_size'),
        min_rows=caps.get('min_batch_size'))
    # What each generate call holds: rows, and padded tokens (the work).
    namespace = self.get_metrics_namespace()
    rows = Metrics.distribution(namespace, 'rows_per_call')
    tokens = Metrics.distribution(namespace, 'padded_tokens_per_call')
    for group in groups:
      rows.update(len(group))
      tokens.update(len(group) * (max(lengths[i] for i in group) + new_tokens))
    return groups

  @staticmethod
  def _plain(prompts: list) -> list:
    """Prompts as they cross to the model: text, or [{role, content}]."""
    return [p if isinstance(p, str) else as_messages(p) for p in prompts]

  def load_model(self):
    start = time.monotonic()
    model = self._load()
    # One line per load, with the process: shows at a glance whether
    # large_model really loaded one copy per machine.
    _LOG.info('%s: model loaded in %.1fs (pid %d)',
              self.message_prefix(), time.monotonic() - start, os.getpid())
    return model

  def _load(self):
    """Loads the model; returns an object with `generate_batch`."""
    raise NotImplementedError

  def generate(self, model, prompts: list) -> list:
    responses = model.generate_batch(self._plain(prompts))
    done = [r for r in responses if isinstance(r, Generation)]
    self.record_usage(sum(r.input_tokens for r in done),
                      sum(r.output_tokens for r in done))
    return responses
