"""What every EmbedText backend shares, on Beam's ModelHandler: batching,
one model (or client) per worker process, per-row failures and metrics.

A backend implements `load_model` and `embed(model, texts)`, returning one
vector or EmbeddingFailure per text; if it raises for a whole batch, the rows
are retried one at a time so one bad text cannot fail its batch-mates.
"""
import dataclasses
import logging
import os
import time
from typing import Any, Iterable, List, Optional, Sequence, Union

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.ml.inference.base import PredictionResult
from beam_llm import row_failures

_LOG = logging.getLogger('beam_llm.EmbedText')
_NAMESPACE = 'beam_llm.EmbedText'


@dataclasses.dataclass(frozen=True)
class EmbeddingFailure:
  """Takes the place of a vector for a text that could not be embedded."""
  msg: str
  error_type: str


Vector = List[float]


def text_problem(text: Any) -> Optional[str]:
  if not isinstance(text, str):
    return f'the text must be a string, got {type(text).__name__}'
  if not text.strip():
    return 'the text is empty'
  return None


class EmbeddingHandler(ModelHandler[Any, Union[Vector, EmbeddingFailure], Any]):
  backend = 'base'
  # The transform named in messages at run time (set by create_handler).
  owner = 'EmbedText'

  def __init__(self, batching):
    super().__init__(**batching)

  # -- to implement -------------------------------------------------------
  def check_at_build(self) -> None:
    """Cheap checks at pipeline construction (no model load). Raise to fail."""

  def describe(self) -> str:
    return self.backend

  def message_prefix(self) -> str:
    """`Owner [backend model]`: how run-time messages name this model."""
    return f'{self.owner} [{self.describe()}]'

  def embed(self, model, texts: List[str]) -> list:
    raise NotImplementedError

  # -- shared -------------------------------------------------------------
  def get_metrics_namespace(self) -> str:
    return _NAMESPACE

  def run_inference(
      self,
      batch: Sequence[Any],
      model: Any,
      inference_args: Optional[dict] = None) -> Iterable[PredictionResult]:
    vectors: list = [None] * len(batch)
    todo = []
    for i, text in enumerate(batch):
      problem = text_problem(text)
      if problem:
        vectors[i] = EmbeddingFailure(problem, 'bad_text')
      else:
        todo.append(i)
    for i, vector in zip(todo, self._embed_isolating_failures(
        model, [batch[i] for i in todo])):
      vectors[i] = vector
    failed = sum(isinstance(v, EmbeddingFailure) for v in vectors)
    Metrics.counter(_NAMESPACE, 'rows').inc(len(vectors))
    Metrics.counter(_NAMESPACE, 'failed_rows').inc(failed)
    return [PredictionResult(t, v) for t, v in zip(batch, vectors)]

  def _embed_isolating_failures(self, model, texts: list) -> list:
    """`embed`, with a failed batch retried row by row
    (beam_llm/row_failures.py: a text that fails on its own becomes an
    `embedding` error row; a bug, or a failure every text hits alike,
    fails the pipeline)."""
    return row_failures.call_isolating_failures(
        lambda some: self.embed(model, some), texts,
        lambda exn: EmbeddingFailure(f'{type(exn).__name__}: {exn}',
                                     'embedding'),
        _LOG, f'EmbedText [{self.backend}]')


def log_load(describe: str, start: float) -> None:
  _LOG.info('EmbedText [%s]: model loaded in %.1fs (pid %d)', describe,
            time.monotonic() - start, os.getpid())
