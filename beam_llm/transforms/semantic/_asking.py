"""Model calls made from inside an operator's own step (a DoFn or a
CombineFn), for operators whose next question depends on the last answer
(SemanticTopK's tournament, SummarizePerKey's rounds): GenerateText cannot
sit in the middle of such a loop, so these operators ask the backend GenerateText
built (and checked) from their options, through this one place.

The backend loads on first use (precombining or grouping needs no model),
once per worker process however many CombineFn or DoFn copies ask — as
RunInference shares it: a remote backend's one client and limiter, a local
model once per process, or once per machine with `large_model`. Prompts go
in batches of `max_batch_size`, usage metrics are the backend's own, and
every prompt counts in the operator's `model_calls` metric.
"""
import uuid
from typing import List, Optional, Sequence

from apache_beam.metrics import Metrics
from apache_beam.utils import multi_process_shared
from apache_beam.utils import shared

from beam_llm.handlers.base import GenerationFailure


class Failed(Exception):
  """A question the model did not answer usably (the group's error row)."""
  def __init__(self, msg: str, error_type: str):
    super().__init__(msg)
    self.error_type = error_type


def messages(system: str, user: str, chat: bool):
  """A prompt as the backends take it: chat messages, or one text."""
  if chat:
    return [{'role': 'system', 'content': system},
            {'role': 'user', 'content': user}]
  return system + '\n\n' + user


# Models loaded in this process, by tag (weak references: kept while an
# Asker holds one).
_SHARED = shared.Shared()


def shared_model(handler, tag: str):
  """`handler`'s model, loaded once per process (or per machine with
  `large_model`) for every Asker with the same tag, as RunInference
  shares it; a remote backend's is its process-wide client."""
  if getattr(handler, 'flows_rows', False):
    return handler.shared_load()
  if handler.share_model_across_processes():
    return multi_process_shared.MultiProcessShared(
        handler.load_model, tag=tag, always_proxy=True).acquire()
  return _SHARED.acquire(handler.load_model, tag=tag)


class Asker:
  """Picklable; `texts(prompts)` or `answers(prompts)` on the worker."""
  def __init__(self, owner: str, handler, schema: Optional[dict] = None,
               batch_size: int = 8):
    from beam_llm import _config
    from beam_llm.json_validation import SchemaValidator
    batch = getattr(handler, 'batch', None)
    if batch is not None and batch.batch_api:  # Each question needs the last answer.
      _config.fail(owner, 'model_handler.config.batch_api',
                   'is not supported here: this operator asks the model in '
                   'rounds, each on the answers of the last')
    self._handler = handler
    self._validator = SchemaValidator(schema) if schema is not None else None
    self._batch_size = batch_size
    self._model = None
    # Made at pipeline construction: every copy on the workers shares it.
    self._tag = f'beam_llm.{owner}.{uuid.uuid4().hex}'
    self._calls = Metrics.counter(f'beam_llm.{owner}', 'model_calls')

  def __getstate__(self):
    return {**self.__dict__, '_model': None}  # A loaded model stays put.

  def texts(self, prompts: Sequence) -> List[str]:
    """The model's raw answers; raises Failed for any prompt it refused."""
    if self._model is None:
      self._model = shared_model(self._handler, self._tag)
    out = []
    for i in range(0, len(prompts), self._batch_size):
      batch = list(prompts[i:i + self._batch_size])
      self._calls.inc(len(batch))
      for result in self._handler.run_inference(batch, self._model):
        response = result.inference
        if isinstance(response, GenerationFailure):
          raise Failed(response.msg, response.error_type)
        out.append(getattr(response, 'text', response))
    return out

  def answers(self, prompts: Sequence) -> List[dict]:
    """The answers parsed and checked against the schema (ParseJSON's
    ladder); raises Failed with the rung that failed and the raw answer."""
    from beam_llm import json_extract
    parsed = []
    for text in self.texts(prompts):
      try:
        value, _ = json_extract.parse(text, self._validator.problem)
      except json_extract.ParseFailure as exn:
        raise Failed(f'{exn.reason}; the model answered: {text!r}', exn.rung) from None
      parsed.append(value)
    return parsed
