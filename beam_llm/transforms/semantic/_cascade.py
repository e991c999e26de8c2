"""Cascades: a small model answers first, the main model only where the
small one is not sure enough (Classify's and SemanticFilter's `cascade`).

1. The small model answers every row, with its confidence (the probability
   of its answer's tokens: GenerateText's `confidence_output`).
2. A sample of rows, chosen by a hash of the prompt and `seed` (the same
   rows every run), also goes to the main model. On it, the threshold is
   learnt: the lowest confidence at which the small model's decisions agree
   with the main model's on at least `target_agreement` of the sample rows
   at or above it (LOTUS's and Snowflake's proxy-to-oracle cascades).
3. Every other row keeps the small model's answer if its confidence is at
   or above the threshold, and goes to the main model otherwise. A row the
   small model could not answer goes to the main model.

The sample rows' answers are the main model's. The counts (rows answered by
each model, the sample, its agreement) are metrics of the operator, which
the run summary shows. On batch input the sample is chosen from the whole
input and every other row waits for the threshold; streams learn it per
window from their first rows instead (_cascade_stream.py).
"""
import dataclasses
import hashlib
import json
from typing import Any, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_llm import _config
from beam_llm import _rows
from beam_llm.transforms.semantic import _cascade_stream
from beam_llm.transforms.semantic._cascade_rows import CONFIDENCE
from beam_llm.transforms.semantic._cascade_rows import agreement
from beam_llm.transforms.semantic._cascade_rows import as_float
from beam_llm.transforms.semantic._cascade_rows import keep_small_answer
from beam_llm.transforms.semantic._cascade_rows import learn_threshold
from beam_llm.transforms.semantic._cascade_rows import plain


@dataclasses.dataclass(frozen=True)
class CascadeOptions:
  model_handler: Mapping[str, Any]
  target_agreement: float = 0.95
  sample: int = 200
  seed: int = 0

  @classmethod
  def of(cls, owner: str, value: Any) -> Optional['CascadeOptions']:
    if value is None:
      return None
    if not isinstance(value, Mapping):
      _config.fail(owner, 'cascade', 'must be a mapping like {model_handler: '
                   '{type: ..., config: ...}, target_agreement: 0.95, sample: 200}')
    _config.check_call_options(owner, cls, value, prefix='cascade.')
    options = cls(**value)
    if not 0 < options.target_agreement <= 1:
      _config.fail(owner, 'cascade.target_agreement', 'must be in (0, 1]')
    if options.sample < 1:
      _config.fail(owner, 'cascade.sample', 'must be at least 1')
    return options


def sample_key(seed: int, prompt: Any) -> str:
  """A row's place in the sample order: a hash of its prompt (text, or
  chat messages as plain values: a schema'd row's class name changes from
  one step to the next) and the seed."""
  text = json.dumps([seed, _plain_value(prompt)], sort_keys=True, default=str)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def _plain_value(value):
  if hasattr(value, '_asdict'):
    value = value._asdict()
  if isinstance(value, Mapping):
    return {k: _plain_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain_value(v) for v in value]
  return value


class Cascade(beam.PTransform):
  """Rendered rows -> GenerateText's {good, errors} outputs, answered by the
  small model where it is sure enough and by `main` elsewhere."""
  def __init__(self, owner: str, options: CascadeOptions, small, main,
               decided, prompt: str, answer: str):
    """`small`/`main`: GenerateTexts from `prompt` to `answer` (small with
    confidence_output); `decided(answer text) -> the decision, or None`
    compares answers."""
    super().__init__()
    self.prompt = prompt
    self.answer = answer
    self.options = options
    self.small = small
    self.main = main
    self.decided = decided
    self._owner = owner

  def expand(self, rows):
    ns = f'beam_llm.{self._owner}'
    small = rows | 'Small' >> self.small
    # A row the small model could not answer goes to the main model.
    unanswered = small[_rows.INNER_ERRORS] | 'SmallFailed' >> beam.Map(
        lambda e: e.element)
    if rows.is_bounded:
      sample_main, kept_small, to_main = self._route_batch(small['good'], ns)
    else:
      sample_main, kept_small, to_main = _cascade_stream.route_stream(
          self, small['good'], ns)
    rest_main = ((to_main | 'Unrouted' >> beam.Map(plain, self.answer),
                  unanswered | 'UnansweredPlain' >> beam.Map(plain))
                 | 'ToMain' >> beam.Flatten() | 'MainOnRest' >> self.main)
    _ = kept_small | 'CountSmall' >> beam.Map(
        lambda r: Metrics.counter(ns, 'cascade_small_rows').inc())
    good = (kept_small | 'SmallPlain' >> beam.Map(plain),
            sample_main['good'] | 'SamplePlain' >> beam.Map(plain),
            rest_main['good'] | 'MainPlain' >> beam.Map(plain)
            ) | 'Answers' >> beam.Flatten()
    for label, pcoll in (('CountMainSample', sample_main['good']),
                         ('CountMainRest', rest_main['good'])):
      _ = pcoll | label >> beam.Map(
          lambda r: Metrics.counter(ns, 'cascade_main_rows').inc())
    errors = (sample_main[_rows.INNER_ERRORS], rest_main[_rows.INNER_ERRORS]
              ) | 'Errors' >> beam.Flatten()
    return {'good': good, _rows.INNER_ERRORS: errors}

  def _route_batch(self, answered, ns):
    """(sample rows' main answers, rows kept with the cheap answer, rows for
    the main model): the sample is the rows whose prompt hashes lowest, and
    every other row waits for its threshold."""
    o = self.options
    prompt, answer = self.prompt, self.answer
    keys = answered | 'SampleKeys' >> beam.Map(
        lambda r, seed=o.seed: sample_key(seed, _rows.as_dict(r)[prompt]))
    cutoff = keys | 'SampleCutoff' >> beam.combiners.Top.Smallest(o.sample)
    cutoff = cutoff | 'Last' >> beam.Map(lambda ks: ks[-1] if ks else '')
    in_sample = lambda r, last, seed=o.seed: sample_key(
        seed, _rows.as_dict(r)[prompt]) <= last
    parts = answered | 'SplitSample' >> beam.Partition(
        lambda r, n, last: 0 if in_sample(r, last) else 1,
        2, last=beam.pvalue.AsSingleton(cutoff))
    sample, rest = parts[0], parts[1]
    sample_main = (sample | 'KeepSmallAnswer' >> beam.Map(
        keep_small_answer, answer) | 'MainOnSample' >> self.main)
    agreements = sample_main['good'] | 'Agreement' >> beam.Map(
        agreement, self.decided, answer)
    threshold = agreements | 'Threshold' >> beam.CombineGlobally(
        _ThresholdFn(o.target_agreement, ns))
    route = rest | 'Route' >> beam.Partition(
        lambda r, n, t: 0 if as_float(getattr(r, CONFIDENCE, None)) >= t else 1,
        2, t=beam.pvalue.AsSingleton(threshold))
    return sample_main, route[0], route[1]


class Decisions:
  """An answer text -> the operator's decision (comparable), or None when
  it is not one: what the two models must agree on (not the reason)."""
  def __init__(self, schema: dict, decider, reason: Optional[str]):
    self._schema = schema
    self._decider = decider
    self._reason = reason
    self._validator = None

  def __call__(self, text: str) -> Optional[str]:
    from beam_llm import json_extract
    from beam_llm.json_validation import SchemaValidator
    if self._validator is None:
      self._validator = SchemaValidator(self._schema)
    try:
      parsed, _ = json_extract.parse(text, self._validator.problem)
    except json_extract.ParseFailure:
      parsed = self._decider.rescue(text)
    if not isinstance(parsed, dict):
      return None
    parsed = {k: v for k, v in parsed.items() if k != self._reason}
    return json.dumps(self._decider.decide(parsed), sort_keys=True, default=str)


class _ThresholdFn(beam.CombineFn):
  def __init__(self, target: float, namespace: str):
    self._target = target
    self._namespace = namespace

  def create_accumulator(self):
    return []

  def add_input(self, acc, pair):
    acc.append(pair)
    return acc

  def merge_accumulators(self, accs):
    return [p for acc in accs for p in acc]

  def extract_output(self, acc):
    threshold = learn_threshold(acc, self._target)
    ns = self._namespace
    Metrics.counter(ns, 'cascade_sample_rows').inc(len(acc))
    Metrics.counter(ns, 'cascade_sample_agreed').inc(sum(a for _, a in acc))
    return threshold
