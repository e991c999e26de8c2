"""Cascades on streaming (unbounded) input, per window.

Batch input learns the threshold from a hashed sample of the whole input
before routing any row (_cascade.py). A stream has no whole, so per window
(the global window: the whole stream) the first `sample` rows the cheap
model answered are the sample: they go to the main model as well, and the
threshold is learnt once all of them are back (answered or failed). Rows
that arrive before that go to the main model: a cascade still learning
costs more, never lowers the answers' quality. Nothing is held back to
wait for the threshold.

Two stateful DoFns, because a pipeline is acyclic: one picks the sample,
the other routes the rest by what the sample's main answers taught. Both
keep a few counters and the sample's (confidence, agreed) pairs per window;
a window's state goes with the window.
"""
import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms import userstate

from beam_llm import _rows
from beam_llm.transforms.semantic import _cascade_rows

_KEY = ''  # One key: the sample and the threshold are the window's own.
_AGREEMENT, _FAILED, _ROW = 'agreement', 'failed', 'row'


class _PickSample(beam.DoFn):
  """The first `size` rows of each window to the main output (the sample),
  the others to `rest`."""
  PICKED = userstate.ReadModifyWriteStateSpec('picked', coders.VarIntCoder())

  def __init__(self, size: int):
    self._size = size

  def process(self, keyed, picked=beam.DoFn.StateParam(PICKED)):
    _, row = keyed
    count = picked.read() or 0
    if count < self._size:
      picked.write(count + 1)
      yield row
    else:
      yield beam.pvalue.TaggedOutput('rest', row)


class _Route(beam.DoFn):
  """Rows -> the main output (kept: the cheap answer is sure enough) or
  `main` (to the main model); the sample's verdicts set the threshold once
  all `size` are in."""
  PAIRS = userstate.BagStateSpec('pairs', coders.PickleCoder())
  FAILED = userstate.ReadModifyWriteStateSpec('failed', coders.VarIntCoder())
  THRESHOLD = userstate.ReadModifyWriteStateSpec('threshold', coders.FloatCoder())

  def __init__(self, size: int, target: float, namespace: str):
    self._size = size
    self._target = target
    self._namespace = namespace

  def process(self, keyed, pairs=beam.DoFn.StateParam(PAIRS),
              failed=beam.DoFn.StateParam(FAILED),
              threshold=beam.DoFn.StateParam(THRESHOLD)):
    _, (kind, value) = keyed
    if kind == _ROW:
      learnt = threshold.read()
      confidence = _cascade_rows.as_float(getattr(value, _cascade_rows.CONFIDENCE, None))
      if learnt is not None and confidence >= learnt:
        yield value
      else:
        yield beam.pvalue.TaggedOutput('main', value)
      return
    if kind == _AGREEMENT:
      pairs.add(value)
    else:
      failed.write((failed.read() or 0) + 1)
    seen = list(pairs.read())
    if len(seen) + (failed.read() or 0) == self._size:  # The sample is all back.
      threshold.write(_cascade_rows.learn_threshold(seen, self._target))
      Metrics.counter(self._namespace, 'cascade_sample_rows').inc(len(seen))
      Metrics.counter(self._namespace, 'cascade_sample_agreed').inc(
          sum(agreed for _, agreed in seen))


def route_stream(cascade, answered, namespace: str):
  """(sample rows' main answers, rows kept with the cheap answer, rows for
  the main model) of a stream the cheap model `answered`."""
  o = cascade.options
  picked = (answered
            | 'OneKey' >> beam.Map(lambda r: (_KEY, r))
            | 'PickSample' >> beam.ParDo(_PickSample(o.sample)).with_outputs(
                'rest', main='sample'))
  sample_main = (picked.sample
                 | 'KeepSmallAnswer' >> beam.Map(
                     _cascade_rows.keep_small_answer, cascade.answer)
                 | 'MainOnSample' >> cascade.main)
  verdicts = (
      sample_main['good'] | 'Agreement' >> beam.Map(
          lambda r: (_AGREEMENT, _cascade_rows.agreement(
              r, cascade.decided, cascade.answer))),
      sample_main[_rows.INNER_ERRORS] | 'SampleFailed' >> beam.Map(
          lambda e: (_FAILED, None)),
      picked.rest | 'Rest' >> beam.Map(lambda r: (_ROW, r)))
  routed = (verdicts
            | 'Verdicts' >> beam.Flatten()
            | 'OneKeyToo' >> beam.Map(lambda v: (_KEY, v))
            | 'Route' >> beam.ParDo(
                _Route(o.sample, o.target_agreement, namespace)).with_outputs(
                    'main', main='kept'))
  return sample_main, routed.kept, routed.main
