"""What the throughput benches time on the pipeline side: Create ->
GenerateText on the FnApiRunner, and the tokens it generated (its
`output_tokens` metric: the model's own count, not the prompt's)."""
from typing import Any, Mapping, Sequence


def generated_tokens(texts: Sequence[str], model_handler: Mapping[str, Any],
                     **options) -> int:
  """Runs GenerateText over `texts` (a row each) with `options`."""
  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter
  from apache_beam.options.pipeline_options import PipelineOptions

  from beam_llm import GenerateText
  p = beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner']))
  _ = (p
       | beam.Create([beam.Row(i=i, prompt=t) for i, t in enumerate(texts)])
       | GenerateText(model_handler=dict(model_handler), **options))
  result = p.run()
  result.wait_until_finish()
  counters = result.metrics().query(MetricsFilter().with_namespace(
      'beam_llm.GenerateText').with_name('output_tokens'))
  return sum(c.committed for c in counters['counters'])
