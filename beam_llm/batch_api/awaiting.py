"""Waiting for a file's batches without holding a bundle: `Await` in
transform.py. Each look (rounds.py: submit, poll, read results, follow-ups)
emits the rows settled so far; between looks nothing is held:

- batch pipelines: `AwaitBatches`, a splittable DoFn that checkpoints
  itself (`defer_remainder`) with the time of the next look. A runner that
  honours the delay (Dataflow) schedules the rest later; one that resumes
  at once (the FnApiRunner) finds the look not due yet and waits at most
  `_HOLD_SECS` per call. The restriction is bounded, so a drained job keeps
  it: the drain ends once the open batches end.
- streaming pipelines: `AwaitOnTimers`, a stateful DoFn (the file and its
  progress in state) that looks again on a processing-time timer, which
  every streaming runner has (Beam's Python DirectRunner cannot run a
  splittable DoFn in streaming). When the watermark passes the window's end
  (a drain, or the end of a bounded test stream) it waits for the open
  batches there, within the provider's 24 h window.

Cancelling a job instead and rerunning it with the same `cache_dir`
resumes its batches (store.py).
"""
import dataclasses
import threading
import time
from typing import FrozenSet

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.iobase import RestrictionProgress
from apache_beam.io.iobase import RestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.userstate import TimerSpec
from apache_beam.transforms.userstate import on_timer
from apache_beam.utils.timestamp import Duration
from apache_beam.utils.timestamp import Timestamp

from beam_llm import progress

# Longest a call sleeps before a look that is not due yet (runners that
# resume a checkpoint at once); a look itself takes a few requests.
_HOLD_SECS = 5.0
_SETUP_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class _Progress:
  """Which rows of a file are out, and when to look next."""
  emitted: FrozenSet[int] = frozenset()
  looks: int = 0
  next_look: float = 0.0  # time.time()
  done: bool = False


class _Awaiting(beam.DoFn):
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

  def _look(self, items, state: _Progress):
    """One look: (the progress after it, the rows settled by it as
    (row, PredictionResult) pairs, not yet counted or emitted)."""
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
    if len(out) < len(left) and not waiting:
      # A bug: rows neither settled nor waiting for anything.
      raise RuntimeError(f'Batch API rows neither settled nor waiting: '
                         f'{len(left) - len(out)}')
    poll = self._handler.batch.batch_poll_secs
    after = _Progress(state.emitted | frozenset(out), state.looks + 1,
                      time.time() + min(poll * 2**state.looks, 10 * poll),
                      done=len(out) == len(left))
    pairs = [(left[n][3], PredictionResult(left[n][4], settled[left[n][0]]))
             for n in out]
    return after, pairs

  def _emit(self, pairs):
    self._handler.record_rows([result.inference for _, result in pairs])
    yield from pairs

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


class AwaitBatches(_Awaiting):
  """Batch pipelines: a splittable DoFn per file (see the module)."""
  def process(self, items, tracker=beam.DoFn.RestrictionParam(_Provider())):
    state = tracker.current_restriction()
    wait = state.next_look - time.time()
    if wait > 0:
      time.sleep(min(wait, _HOLD_SECS))
      wait = state.next_look - time.time()
      if wait > 0:
        tracker.defer_remainder(Duration.of(wait))
        return
    after, pairs = self._look(items, state)
    if not tracker.try_claim(after):
      return
    yield from self._emit(pairs)
    if not after.done:
      tracker.defer_remainder(Duration.of(after.next_look - time.time()))


class AwaitOnTimers(_Awaiting):
  """Streaming pipelines: (key, file) with the file and its progress in
  state, looked at again on a processing-time timer (see the module)."""
  FILE = ReadModifyWriteStateSpec('file', PickleCoder())
  PROGRESS = ReadModifyWriteStateSpec('progress', PickleCoder())
  LOOK = TimerSpec('look', TimeDomain.REAL_TIME)
  WINDOW_END = TimerSpec('window_end', TimeDomain.WATERMARK)

  def process(self, keyed, window=beam.DoFn.WindowParam,
              file=beam.DoFn.StateParam(FILE),
              state=beam.DoFn.StateParam(PROGRESS),
              look=beam.DoFn.TimerParam(LOOK),
              window_end=beam.DoFn.TimerParam(WINDOW_END)):
    _, items = keyed
    file.write(items)
    window_end.set(window.max_timestamp())
    yield from self._look_and_schedule(items, _Progress(), file, state, look)

  @on_timer(LOOK)
  def look_again(self, file=beam.DoFn.StateParam(FILE),
                 state=beam.DoFn.StateParam(PROGRESS),
                 look=beam.DoFn.TimerParam(LOOK)):
    items, current = file.read(), state.read()
    if items is not None and current is not None:
      yield from self._look_and_schedule(items, current, file, state, look)

  @on_timer(WINDOW_END)
  def finish(self, file=beam.DoFn.StateParam(FILE),
             state=beam.DoFn.StateParam(PROGRESS)):
    """The watermark passed the window's end: wait for the batches here."""
    items, current = file.read(), state.read()
    while items is not None and current is not None and not current.done:
      time.sleep(max(0.0, current.next_look - time.time()))
      current, pairs = self._look(items, current)
      yield from self._emit(pairs)
    file.clear()
    state.clear()

  def _look_and_schedule(self, items, current, file, state, look):
    after, pairs = self._look(items, current)
    yield from self._emit(pairs)
    if after.done:
      file.clear()
      state.clear()
    else:
      state.write(after)
      look.set(Timestamp.now() + Duration.of(after.next_look - time.time()))
