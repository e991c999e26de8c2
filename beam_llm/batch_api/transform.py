"""GenerateText through a Batch API, in Beam: (row, prompt) -> (row,
PredictionResult), as the synchronous DoFn gives, so GenerateText's outputs,
error rows, usage fields and lineage are the same.

1. `Requests`: each row's request, built as in synchronous mode; its
   `custom_id` is the response cache's key (a hash of backend, target and
   request), the same in every run (with the cache off, sampling without a
   seed, each row's own: identical prompts get samples of their own). A prompt that cannot be sent is an
   error row at once.
2. `Fill`: GroupIntoBatches fills request files up to `batch_max_requests`
   rows, then `Files` splits them at `batch_max_bytes`.
3. `Await`: each file's batches looked at now and then (awaiting.py: a
   splittable DoFn that checkpoints between looks in batch pipelines, a
   stateful DoFn on timers in streaming ones), never holding a bundle
   while a batch runs for hours.
"""
import uuid
from typing import Any, Tuple

import apache_beam as beam
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.options.pipeline_options import StandardOptions

from beam_llm.batch_api import awaiting
from beam_llm.batch_api import lines
from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.base import PromptError
from beam_llm.handlers.base import RowPrompt
from beam_llm.handlers.base import prompt_problem
from beam_llm.remote.cache import cache_key

# In streaming, a file waits at most this long to fill.
_FILL_SECS = 600


class BatchGenerate(beam.PTransform):
  def __init__(self, handler):
    super().__init__()
    self._handler = handler

  def expand(self, keyed):
    h = self._handler
    planned = keyed | 'Requests' >> beam.ParDo(_Requests(h)).with_output_types(
        Tuple[int, Any]).with_outputs('refused', main='lines')
    fill = {}
    if keyed.pipeline.options.view_as(StandardOptions).streaming:
      fill['max_buffering_duration_secs'] = _FILL_SECS
    files = (
        planned.lines
        | 'Fill' >> beam.GroupIntoBatches(h.batch.batch_max_requests, **fill)
        | 'Files' >> beam.FlatMap(_files, h.batch.batch_max_bytes))
    if fill:  # Streaming: state and timers, which every streaming runner has.
      answered = (files
                  | 'Key' >> beam.Map(lambda f: (uuid.uuid4().hex, f)
                                      ).with_output_types(Tuple[str, Any])
                  | 'Await' >> beam.ParDo(awaiting.AwaitOnTimers(h)))
    else:
      answered = files | 'Await' >> beam.ParDo(awaiting.AwaitBatches(h))
    return (planned.refused, answered) | 'Rows' >> beam.Flatten()


class _Requests(beam.DoFn):
  """(row, prompt) -> (0, (custom_id, request, line bytes, row, prompt))."""
  def __init__(self, handler):
    self._handler = handler

  def process(self, keyed):
    row, prompt = keyed
    problem = prompt_problem(
        prompt.prompt if isinstance(prompt, RowPrompt) else prompt)
    try:
      request = None if problem else self._handler.build_request(prompt)
    except PromptError as exn:
      problem = str(exn)
    if problem:
      failure = GenerationFailure(problem, 'bad_prompt')
      self._handler.record_rows([failure])
      yield beam.pvalue.TaggedOutput(
          'refused', (row, PredictionResult(prompt, failure)))
      return
    h = self._handler
    parts = [h.backend, h.target(), request]
    if not h.caches:
      # Sampling without a seed: every row gets a sample of its own, as in
      # synchronous mode, so its line is its own (not resumed by a rerun).
      parts.append(uuid.uuid4().hex)
    custom_id = cache_key(*parts)
    size = len(h.batch_provider.encode(custom_id, *h.batch_line(request)))
    # One key: a file may take rows from anywhere in the input.
    yield 0, (custom_id, request, size, row, prompt)


def _files(keyed_group, max_bytes: int):
  """A group of rows in files of at most max_bytes (one row too large for
  any file travels alone: it is sent synchronously)."""
  items = list(keyed_group[1])
  files, too_big = lines.into_files(
      [(n, b'\0' * item[2]) for n, item in enumerate(items)],
      len(items) or 1, max_bytes)
  for file in files:
    yield [items[n] for n, _ in file]
  for n in too_big:
    yield [items[n]]
