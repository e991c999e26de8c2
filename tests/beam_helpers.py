"""Run a transform on rows in-process and get every output back."""
import collections
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

_SINKS = collections.defaultdict(list)


def _record(key, element):
  _SINKS[key].append(element)


def run_transform(transform, rows, input_type=None):
  """Applies `transform` to `rows` (dicts -> beam.Row) on the FnApiRunner.

  Returns {output tag: [elements]} ('good' for a single output) and the
  output element types, so tests can check both values and schemas.
  """
  outputs, types = {}, {}
  with beam.Pipeline(
      options=PipelineOptions(['--runner=FnApiRunner'])) as p:
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
  return {tag: _SINKS.pop(key, []) for tag, key in outputs.items()}, types
