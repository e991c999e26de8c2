"""The end-of-run summary `beam-llm run` prints.

Rows in, rows out per output and error rows per reason are what the files
hold (beam_llm/cli/outputs.py counts them after the run); model rows,
tokens, retries and the steps' own counters come from the run's Beam metrics
(namespaces `beam_llm.<Transform>`), the same numbers Dataflow's UI shows.
"""
import collections
import os
from typing import Dict, List, Optional

from beam_llm.cli import costs
from beam_llm.cli.outputs import Written

_PREFIX = 'beam_llm.'
_ERRORS = 'beam_llm.errors'
# Counters of failures inside a step. Error rows are reported once, per
# reason, from what was written; a step's own failure count can differ from
# that (a ParseJSON failure a Classify rescued is no error row).
_FAILURE_COUNTERS = ('failed', 'bad_lines', 'failed_rows', 'error_rows')


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
    if not namespace.startswith(_PREFIX):
      continue
    value = counter.committed if counter.committed is not None else counter.attempted
    totals[namespace][counter.key.metric.name] += int(value or 0)
  return {ns: dict(v) for ns, v in totals.items()}


def render(
    counters: Dict[str, Dict[str, int]],
    outputs: List[Written],
    times: Dict[str, float],
    local_rows_in: Optional[int] = None,
    prices: Optional[dict] = None) -> str:
  """`times`: seconds of `start-up`, `build` and `run`; their sum is the
  wall time (the command's, from its start to the summary). `prices`: the
  --prices table, to price the tokens per model (cli/costs.py)."""
  wall = sum(times.values())
  lines = [
      f'beam-llm summary: {wall:.1f} s wall time (start-up '
      f'{times["start-up"]:.1f} s, building the pipeline {times["build"]:.1f} s, '
      f'running it {times["run"]:.1f} s)']
  rows_in = _rows_in(counters, local_rows_in)
  if rows_in is not None:
    lines.append(f'  rows in: {rows_in}')
  counted_reasons = collections.Counter()
  for out in outputs:
    lines.append('  ' + _describe(out))
    counted_reasons.update(out.reasons)
  errors = counters.get(_ERRORS, {})
  if errors and not counted_reasons:
    # No errors file this command can read (Pub/Sub, gs://): Beam's count of
    # the error rows the transforms emitted.
    lines.append('  error rows emitted, by reason: ' + ', '.join(
        f'{reason} {n}' for reason, n in sorted(errors.items())))
  generate = counters.get('beam_llm.GenerateText', {})
  if generate.get('rows'):
    lines.append(
        f'  model: {generate["rows"]} rows ({generate.get("failed_rows", 0)} '
        f'failed), {generate["rows"] / max(times["run"], 1e-9):.2f} rows/s; '
        f'tokens in {generate.get("input_tokens", 0)}, out '
        f'{generate.get("output_tokens", 0)}')
  lines += costs.spent_lines(counters, prices)
  for namespace in sorted(counters):
    if namespace in (_ERRORS, costs.NAMESPACE):
      continue
    values = ', '.join(
        f'{k} {v}' for k, v in sorted(counters[namespace].items())
        if v and k not in _FAILURE_COUNTERS)
    if values:
      lines.append(f'  {namespace[len(_PREFIX):]}: {values}')
  return '\n'.join(lines)


def _rows_in(counters, local_rows_in) -> Optional[int]:
  read = counters.get('beam_llm.ReadJsonLines', {})
  total = read.get('rows', 0) + read.get('bad_lines', 0) if read else None
  if local_rows_in is not None:
    total = (total or 0) + local_rows_in
  return total


def _describe(out: Written) -> str:
  names = ', '.join(os.path.basename(f) for f in out.files)
  if '://' in out.prefix:
    return f'wrote {out.prefix}* (not counted: not a local path)'
  if not out.files:
    return f'{out.prefix}: no rows, no file written'
  where = f'{os.path.dirname(out.prefix) or "."}/{names}'
  if out.rows is None:
    return f'wrote {where}'
  if out.reasons and sum(out.reasons.values()) == out.rows:
    reasons = ', '.join(f'{r} {n}' for r, n in sorted(out.reasons.items()))
    return f'wrote {where}: {_n(out.rows, "error row")} ({reasons})'
  return f'wrote {where}: {_n(out.rows, "row")}'


def _n(count: int, noun: str) -> str:
  return f'{count} {noun}' + ('' if count == 1 else 's')
