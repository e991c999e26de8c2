"""Row schemas and Beam YAML error rows shared by every beam-llm transform.

Every transform here follows one pattern: a DoFn emits good rows on the main
output and `ErrorRow`s on the `errors` tag; `split_outputs` turns that into
Beam YAML's `{good, <error output name>}` result, or fails the pipeline on the
first error when the user set no `error_handling` (Beam YAML's convention).
"""
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
from apache_beam.typehints import row_type
from apache_beam.typehints.schemas import named_fields_from_element_type

ERRORS_TAG = 'errors'
ERROR_METRICS_NAMESPACE = 'beam_llm.errors'
# The error output name a composite (Classify, Extract, ...) gives the
# transforms inside it. Their error rows are not the run's: the composite
# rescues some and re-emits the rest as its own, counted once, there.
INNER_ERRORS = 'errors_of_a_step_inside'


def input_fields(pcoll) -> Optional[list]:
  """The (name, type) fields of a schema'd PCollection, or None if untyped."""
  try:
    return list(named_fields_from_element_type(pcoll.element_type))
  except (TypeError, ValueError):
    return None


def require_field(owner: str, key: str, field: str, fields: Optional[list]):
  if fields is not None and field not in [name for name, _ in fields]:
    from beam_llm._config import fail
    fail(
        owner,
        key,
        f'names field {field!r}, which the input does not have '
        f'(input fields: {", ".join(name for name, _ in fields)})')


def row_type_with(fields: Optional[list], extra: Sequence[tuple]) -> Any:
  """The input row type with `extra` fields added (or replaced), or Any."""
  if fields is None:
    return Any
  extra_names = {name for name, _ in extra}
  kept = [(n, t) for n, t in fields if n not in extra_names]
  return row_type.RowTypeConstraint.from_fields(kept + list(extra))


def as_dict(row) -> dict:
  if isinstance(row, dict):
    return dict(row)
  if hasattr(row, '_asdict'):
    return row._asdict()
  raise TypeError(f'expected a row, got {type(row).__name__}')


def fields_of(row) -> dict:
  """The row's fields, read-only: a Beam Row's own dict, not a copy (the
  per-row path of RenderPrompt and ParseJSON reads it once, then builds the
  new row from it)."""
  if type(row) is beam.Row:
    return row.__dict__
  return as_dict(row)


_new = object.__new__


def new_row(values: dict) -> beam.Row:
  """beam.Row(**values) without copying `values` twice (kwargs, then
  __dict__.update): the Row takes `values`, which the caller must not keep.
  Half the cost of the constructor, once per row per transform
  (bench/row_overhead.py)."""
  row = _new(beam.Row)
  row.__dict__ = values
  return row


def with_fields(row, **values) -> beam.Row:
  return new_row({**fields_of(row), **values})


def error_row(element, msg: str, error_type: str, stack: str = '') -> beam.Row:
  return beam.Row(element=element, msg=msg, stack=stack, error_type=error_type)


def error_row_type(element_type) -> Any:
  return row_type.RowTypeConstraint.from_fields([('element', element_type),
                                                 ('msg', str), ('stack', str),
                                                 ('error_type', str)])


def split_outputs(
    pcoll,
    label: str,
    dofn: beam.DoFn,
    main_type,
    error_output: Optional[str],
    element_type=None,
    side_inputs=()):
  """Applies `dofn` (which tags bad rows ERRORS_TAG) and shapes the result.

  `element_type` is the type of the rows inside error rows (defaults to the
  type of `pcoll`'s elements); `side_inputs` go to `dofn.process`.
  """
  results = pcoll | label >> beam.ParDo(dofn, *side_inputs).with_outputs(
      ERRORS_TAG, main='good')
  good = results.good
  good.element_type = main_type
  errors = results[ERRORS_TAG]
  errors.element_type = error_row_type(element_type or pcoll.element_type)
  if error_output == INNER_ERRORS:
    return {'good': good, error_output: errors}
  counted = errors_out([errors], label, error_output)
  return good if counted is None else {'good': good, error_output: counted}


def errors_out(errors: Sequence, label: str, error_output: Optional[str]):
  """Error rows (of the step `label`, or of steps inside a transform:
  INNER_ERRORS outputs) for the transform's error output: counted per
  reason and flattened; with no error output configured, the first one
  fails the pipeline, loudly."""
  # Steps CountErrors, CountErrors1, ...: the first keeps the name
  # split_outputs has always given it.
  suffix = lambda i: str(i) if i else ''
  if error_output is None:
    for i, pcoll in enumerate(errors):
      _ = pcoll | f'{label}/FailOnError{suffix(i)}' >> beam.Map(_raise_error)
    return None
  counted = []
  for i, pcoll in enumerate(errors):  # Each keeps its own element type.
    counted.append(
        pcoll | f'{label}/CountErrors{suffix(i)}' >> beam.Map(_count_error))
    counted[-1].element_type = pcoll.element_type
  if len(counted) == 1:
    return counted[0]
  return counted | f'{label}/Flatten' >> beam.Flatten()


def _count_error(error: beam.Row) -> beam.Row:
  # One counter per reason (beam_llm.errors/<error_type>), per step: the run
  # summary and Dataflow's UI show error rows by reason.
  from apache_beam.metrics import Metrics
  Metrics.counter(ERROR_METRICS_NAMESPACE, error.error_type or 'error').inc()
  return error


def _raise_error(error: beam.Row):
  raise RuntimeError(
      f'{error.msg}\n(set error_handling: {{output: ...}} on this transform '
      f'to send such rows to an error output instead)\nrow: {error.element!r}')


def tag_error(row: beam.Row) -> Iterable:
  yield beam.pvalue.TaggedOutput(ERRORS_TAG, row)


class BundleCounter:
  """A Beam counter for a DoFn's per-row events, added up in the DoFn and
  reported every `every` events and when the bundle finishes (call `flush`
  from `finish_bundle`): a Beam counter update costs about 1 µs, a quarter
  of RenderPrompt's whole work on a simple row (bench/row_overhead.py). The totals Beam reports
  (the run summary of `beam-llm run`) are the same; a running job's live
  counters lag by at most `every` events per bundle. Picklable."""
  def __init__(self, namespace: str, name: str, every: int = 1000):
    from apache_beam.metrics import Metrics
    self._counter = Metrics.counter(namespace, name)
    self._every = every
    self._pending = 0

  def inc(self):
    self._pending += 1
    if self._pending >= self._every:
      self.flush()

  def flush(self):
    if self._pending:
      self._counter.inc(self._pending)
      self._pending = 0
