"""The end-of-run summary `beam-llm run` prints, from the run's Beam metrics.

Every beam-llm transform counts into namespaces `beam_llm.<Transform>`
(error rows by reason in `beam_llm.errors`), so this reads whatever the
pipeline's transforms counted — the same numbers Dataflow's UI shows.
"""
import collections
from typing import Dict

_PREFIX = 'beam_llm.'
_ERRORS = 'beam_llm.errors'


def beam_llm_counters(result) -> Dict[str, Dict[str, int]]:
  """{namespace: {counter: value}} summed over steps, beam_llm.* only."""
  from apache_beam.metrics.metric import MetricsFilter
  totals = collections.defaultdict(lambda: collections.defaultdict(int))
  try:
    counters = result.metrics().query(MetricsFilter())['counters']
  except (NotImplementedError, KeyError, AttributeError):
    return {}
  error_steps = [_owner(c.key.step) for c in counters
                 if c.key.metric.namespace == _ERRORS]
  for counter in counters:
    namespace = counter.key.metric.namespace
    if not namespace.startswith(_PREFIX):
      continue
    if namespace == _ERRORS and _inside_another(_owner(counter.key.step),
                                                error_steps):
      continue  # Re-emitted by the composite around it: count it once.
    value = counter.committed if counter.committed is not None else counter.attempted
    totals[namespace][counter.key.metric.name] += int(value or 0)
  return {ns: dict(v) for ns, v in totals.items()}


def _owner(step: str) -> str:
  """The transform that owns an error-counting step (`.../T/Label/CountErrors`)."""
  return step.rsplit('/', 2)[0] if step.count('/') >= 2 else ''


def _inside_another(owner: str, owners) -> bool:
  # A semantic operator (Classify, Extract, ...) runs RenderPrompt,
  # GenerateText and ParseJSON inside it and re-emits their error rows as its
  # own: only the outermost count is the number of error rows that came out.
  return any(other and owner != other and owner.startswith(other + '/')
             for other in owners)


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
