"""The end-of-run summary `beam-llm run` prints, from the run's Beam metrics.

Every beam-llm transform counts into namespaces `beam_llm.<Transform>`
(error rows by reason in `beam_llm.errors`), so this reads whatever the
pipeline's transforms counted — the same numbers Dataflow's UI shows.
"""
import collections
from typing import Dict

_PREFIX = 'beam_llm.'


def beam_llm_counters(result) -> Dict[str, Dict[str, int]]:
  """{namespace: {counter: value}} summed over steps, beam_llm.* only."""
  from apache_beam.metrics.metric import MetricsFilter
  totals = collections.defaultdict(lambda: collections.defaultdict(int))
  try:
    counters = result.metrics().query(MetricsFilter())['counters']
  except (NotImplementedError, KeyError, AttributeError):
    return {}
  for counter in counters:
    namespace = counter.key.metric.namespace
    if namespace.startswith(_PREFIX):
      value = counter.committed if counter.committed is not None else counter.attempted
      totals[namespace][counter.key.metric.name] += int(value or 0)
  return {ns: dict(v) for ns, v in totals.items()}


def render(counters: Dict[str, Dict[str, int]], wall_secs: float) -> str:
  lines = [f'beam-llm summary: {wall_secs:.1f} s wall time']
  generate = counters.get('beam_llm.GenerateText', {})
  if generate.get('rows'):
    lines.append(
        f'  model rows: {generate["rows"]} ({generate.get("failed_rows", 0)} '
        f'failed), {generate["rows"] / max(wall_secs, 1e-9):.2f} rows/s; tokens '
        f'in {generate.get("input_tokens", 0)}, out {generate.get("output_tokens", 0)}')
  errors = counters.get('beam_llm.errors', {})
  if errors:
    lines.append('  error rows by reason: ' + ', '.join(
        f'{reason} {n}' for reason, n in sorted(errors.items())))
  for namespace in sorted(counters):
    if namespace == 'beam_llm.errors':
      continue
    values = ', '.join(f'{k} {v}' for k, v in sorted(counters[namespace].items()))
    lines.append(f'  {namespace[len(_PREFIX):]}: {values}')
  return '\n'.join(lines)
