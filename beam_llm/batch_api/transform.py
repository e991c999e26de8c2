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
3. `Await`: a splittable DoFn per file. Each call looks once (rounds.py:
   submit, poll, read results, follow-ups), emits the rows settled so far,
   and, while batches are open, checkpoints itself (`defer_remainder`) with
   the time of the next look, so no bundle is held while a batch runs for
   hours: a runner that honours the delay (Dataflow) schedules the rest
   later; one that resumes at once (the FnApiRunner) finds the look not
   due yet and waits at most `_HOLD_SECS` per call. The restriction is
   bounded, so a drained job keeps it: the drain ends once the open
   batches end (within the provider's 24 h window). Cancelling instead and
   rerunning with the same `cache_dir` resumes the batches.
"""
import dataclasses
import threading
import time
import uuid
from typing import Any, FrozenSet, Tuple

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress
from apache_beam.io.iobase import RestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration

from beam_llm import progress
from beam_llm.batch_api import lines
from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.base import PromptError
from beam_llm.handlers.base import RowPrompt
from beam_llm.handlers.base import prompt_problem
from beam_llm.remote.cache import cache_key

# Longest a call sleeps before a look that is not due yet (runners that
# resume a checkpoint at once); a look itself takes a few requests.
_HOLD_SECS = 5.0
_SETUP_LOCK = threading.Lock()
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
    answered = (
        planned.lines
        | 'Fill' >> beam.GroupIntoBatches(h.batch.batch_max_requests, **fill)
        | 'Files' >> beam.FlatMap(_files, h.batch.batch_max_bytes)
        | 'Await' >> beam.ParDo(_AwaitBatches(h)))
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


@dataclasses.dataclass(frozen=True)
class _Progress:
  """An `Await` restriction: which rows of the file are out, when to look."""
  emitted: FrozenSet[int] = frozenset()
  looks: int = 0
  next_look: float = 0.0  # time.time()
  done: bool = False


class _Tracker(RestrictionTracker):
  """Claims are whole `_Progress` values; a split is only a checkpoint."""
  def __init__(self, restriction: _Progress):
    self._progress = restriction
    self._stopped = False

  def current_restriction(self):
    return self._progress

  def current_progress(self):
    return RestrictionProgress(fraction=1.0 if self._progress.done else 0.0)

  def try_claim(self, position: _Progress) -> bool:
    if self._stopped:
      return False
    self._progress = position
    return True

  def try_split(self, fraction_of_remainder):
    if fraction_of_remainder != 0 or self._stopped or self._progress.done:
      return None  # Files are not split while open: only checkpoints.
    self._stopped = True
    return dataclasses.replace(self._progress, done=True), self._progress

  def check_done(self):
    if not (self._stopped or self._progress.done):
      raise ValueError(f'Batch API rows left unsettled: {self._progress}')

  def is_bounded(self):
    return True


class _Provider(RestrictionProvider):
  def initial_restriction(self, element):
    return _Progress()

  def create_tracker(self, restriction):
    return _Tracker(restriction)

  def restriction_size(self, element, restriction):
    return max(1, len(element) - len(restriction.emitted))


class _AwaitBatches(beam.DoFn):
  """A file's rows -> (row, PredictionResult) as their batches end."""
  def __init__(self, handler):
    self._handler = handler

  def setup(self):
    from beam_llm.batch_api.rounds import Batches
    self._loaded = self._handler.shared_load()
    with _SETUP_LOCK:  # One Batches per loaded client, whatever the threads.
      if getattr(self._loaded, 'batches', None) is None:
        self._loaded.batches = Batches(self._handler, self._loaded)

  def teardown(self):
    if getattr(self, '_loaded', None) is not None:
      self._loaded = None
      self._handler.shared_release()

  def process(self, items, tracker=beam.DoFn.RestrictionParam(_Provider())):
    state = tracker.current_restriction()
    wait = state.next_look - time.time()
    if wait > 0:
      time.sleep(min(wait, _HOLD_SECS))
      wait = state.next_look - time.time()
      if wait > 0:
        tracker.defer_remainder(Duration.of(wait))
        return
    left = {n: item for n, item in enumerate(items) if n not in state.emitted}
    if state.looks == 0:
      progress.started(self._handler.describe(), len(left))
    batches = self._loaded.batches
    settled, sync, waiting = batches.step(
        {item[0]: item[1] for item in left.values()}, first=state.looks == 0)
    settled.update(self._send_now(
        {item[0]: item[4] for item in left.values() if item[0] in sync}))
    self._record_metrics(batches)
    out = [n for n, item in left.items() if item[0] in settled]
    poll = self._handler.batch.batch_poll_secs
    claimed = tracker.try_claim(_Progress(
        state.emitted | frozenset(out), state.looks + 1,
        time.time() + min(poll * 2**state.looks, 10 * poll),
        done=len(out) == len(left)))
    if not claimed:
      return
    responses = [settled[left[n][0]] for n in out]
    self._handler.record_rows(responses)
    for n, response in zip(out, responses):
      _, _, _, row, prompt = left[n]
      yield row, PredictionResult(prompt, response)
    if len(out) < len(left):
      if not waiting:  # A bug: nothing left to wait for, nothing settled.
        raise RuntimeError(f'Batch API rows neither settled nor waiting: '
                           f'{len(left) - len(out)}')
      tracker.defer_remainder(Duration.of(
          min(poll * 2**state.looks, 10 * poll)))

  def _send_now(self, prompts: dict) -> dict:
    """Rows whose batches are spent, as synchronous requests."""
    if not prompts:
      return {}
    h = self._handler
    futures = {c: h.start(self._loaded, p) for c, p in prompts.items()}
    results = {c: f.result() for c, f in futures.items()}  # Bugs raise here.
    h.record_results(self._loaded, list(results.values()))
    Metrics.counter(h.get_metrics_namespace(), 'batch_rows_sent_synchronously'
                    ).inc(len(results))
    h.stats['batch_rows_sent_synchronously'] = h.stats.get(
        'batch_rows_sent_synchronously', 0) + len(results)
    return {c: r[0] for c, r in results.items()}

  def _record_metrics(self, batches) -> None:
    """Counts of the batch side, on the DoFn's thread (Beam metrics)."""
    h = self._handler
    ns = h.get_metrics_namespace()
    counts, usage = batches.take_counts()
    for name, value in counts.items():
      Metrics.counter(ns, name).inc(value)
      h.stats[name] = h.stats.get(name, 0) + value
    for answer in usage:
      h.record_usage(answer.input_tokens or 0, answer.output_tokens or 0,
                     mode='batch')
