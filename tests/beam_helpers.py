"""Run a transform on rows in-process and get every output back."""
import collections
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

_SINKS = collections.defaultdict(list)


def _record(key, element):
  _SINKS[key].append(element)


def run_transform(transform, rows, input_type=None, metrics=False):
  """Applies `transform` to `rows` (dicts -> beam.Row) on the FnApiRunner.

  Returns {output tag: [elements]} ('good' for a single output) and the
  output element types, so tests can check both values and schemas; with
  `metrics`, also {metric name: value} (counters summed over steps,
  distributions as their DistributionResult).
  """
  outputs, types = {}, {}
  p = beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner']))
  if input_type is None:
    rows_pcoll = p | beam.Create([beam.Row(**r) for r in rows])
  else:  # Create cannot infer a type from None values, so state it.
    rows_pcoll = (
        p | beam.Create(rows)
        | beam.Map(lambda r: beam.Row(**r)).with_output_types(input_type))
  result = rows_pcoll | transform
  if not isinstance(result, dict):
    result = {'good': result}
  for tag, pcoll in result.items():
    key = str(uuid.uuid4())
    outputs[tag] = key
    types[tag] = pcoll.element_type
    _ = pcoll | f'Record{tag}' >> beam.Map(lambda x, k=key: _record(k, x))
  run = p.run()
  run.wait_until_finish()
  collected = {tag: _SINKS.pop(key, []) for tag, key in outputs.items()}
  if not metrics:
    return collected, types
  return collected, types, _metrics(run)


def _metrics(result) -> dict:
  found = result.metrics().query()
  values = {}
  for counter in found['counters']:
    name = counter.key.metric.name
    values[name] = values.get(name, 0) + counter.committed
  for dist in found['distributions']:
    values[dist.key.metric.name] = dist.committed
  return values
