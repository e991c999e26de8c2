"""Throughput of a remote backend against servers of known capacity.

The local fake server (beam_llm.testing.fake_llm_server, in its own process)
answers every request after a fixed latency and serves at most `slots` at
once: its capacity is slots / latency requests per second. Three shapes of
the same capacity, 320 requests/s, that need 8, 32 and 128 requests in
flight: 8 slots x 25 ms, 32 x 100 ms, 128 x 400 ms (queueing past the
slots, as vLLM does), and a fourth that answers 429 at once past its 32
slots (as a hosted API does). A user does not know which one they have: the
point is that **default options** use each fully.

Each run: a Beam pipeline (Create -> GenerateText with the OpenAICompatible
backend, default options except `cache: false` -> count) on the FnApiRunner.
Achieved rate = requests the server answered / the time from its first
request's arrival to its last answer (the server's view, without pipeline
start-up). Client CPU = this process's CPU time (all threads: Beam, the
client, the policy) during the run / requests. Several runs per shape,
median reported.

    python bench/remote_throughput.py [--runs 5] [--prompts 4000]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # This checkout's beam_llm, whatever is installed.

import apache_beam as beam  # pylint: disable=wrong-import-position
from apache_beam.metrics import Metrics  # pylint: disable=wrong-import-position
from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=wrong-import-position
from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=wrong-import-position

from beam_llm import GenerateText  # pylint: disable=wrong-import-position

# (name, slots, latency secs, reject past the slots)
SHAPES = [
    ('8 x 25 ms', 8, 0.025, False),
    ('32 x 100 ms', 32, 0.1, False),
    ('128 x 400 ms', 128, 0.4, False),
    ('32 x 100 ms, 429 when full', 32, 0.1, True),
]


# The faulty server of issue 19: 100 requests/s (10 slots x 100 ms), 10 %
# 5xx (half 500, half 503), 3 % an 8-second stall then a dropped
# connection, 2 % a body cut off, 2 % dropped at once.
FAULTS = ['--server_error', '0.1', '--stall', '0.03', '--slow_secs', '8',
          '--malformed', '0.02', '--drop', '0.02']


class _Server:
  """The fake server in its own process (so it does not share our GIL)."""
  def __init__(self, slots, latency, reject, extra=()):
    self._args = ['--slots', str(slots), '--latency_secs', str(latency)] + (
        ['--reject_when_full'] if reject else []) + list(extra)

  def __enter__(self):
    self._proc = subprocess.Popen(
        [sys.executable, '-m', 'beam_llm.testing.fake_llm_server', '--port', '0',
         *self._args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    self.url = self._proc.stdout.readline().split()[-1]
    return self

  def stats(self) -> dict:
    with urllib.request.urlopen(self.url + '/_stats') as f:
      return json.loads(f.read())

  def __exit__(self, *exc):
    self._proc.kill()
    self._proc.wait()


def _cpu_secs() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def run_once(shape, n, options):
  _, slots, latency, reject = shape
  rows = [beam.Row(id=i, prompt=f'prompt number {i}: how was the pizza?')
          for i in range(n)]
  with _Server(slots, latency, reject) as server:
    handler = {'type': 'OpenAICompatible', 'config': {
        'model': 'm', 'base_url': server.url + '/v1', 'cache': False, **options}}
    cpu, start = _cpu_secs(), time.monotonic()
    with beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner'])) as p:
      _ = (p | beam.Create(rows)
           | GenerateText(model_handler=handler, max_new_tokens=16)
           | beam.combiners.Count.Globally())
    wall, cpu = time.monotonic() - start, _cpu_secs() - cpu
    stats = server.stats()
  answered = stats['requests'] - stats['rejected']
  assert answered == n, stats
  return {'ratio': answered / stats['busy_secs'] / (slots / latency),
          'max_in_flight': stats['max_in_flight'], 'rejected': stats['rejected'],
          'mean_in_flight': stats['mean_in_flight'],
          'cpu_ms': 1000 * cpu / stats['requests'], 'wall': wall}


def run_faulty(n, options):
  """1,000 rows (n) against the faulty server: wall time, rows out of each
  output (none may be lost), most requests in flight."""
  rows = [beam.Row(id=i, prompt=f'prompt number {i}: how was the pizza?')
          for i in range(n)]
  with _Server(10, 0.1, False, FAULTS) as server:
    handler = {'type': 'OpenAICompatible', 'config': {
        'model': 'm', 'base_url': server.url + '/v1', 'cache': False, **options}}
    start = time.monotonic()
    p = beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner']))
    out = (p | beam.Create(rows)
           | GenerateText(model_handler=handler, max_new_tokens=16,
                          error_handling={'output': 'failed'}))
    for tag in ('good', 'failed'):
      _ = out[tag] | f'Count{tag}' >> beam.Map(
          lambda _, t=tag: Metrics.counter('bench', t).inc())
    result = p.run()
    result.wait_until_finish()
    wall = time.monotonic() - start
    stats = server.stats()
  counts = {c.key.metric.name: c.committed
            for c in result.metrics().query(
                MetricsFilter().with_namespace('bench'))['counters']}
  return {'wall': wall, 'good': counts.get('good', 0),
          'failed': counts.get('failed', 0),
          'max_in_flight': stats['max_in_flight'], 'requests': stats['requests']}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs', type=int, default=5)
  parser.add_argument('--prompts', type=int, default=4000)
  parser.add_argument('--shapes', default=None,
                      help='comma-separated indexes into SHAPES (default all)')
  parser.add_argument('--max_concurrency', type=int, default=None,
                      help='also measure with this max_concurrency')
  parser.add_argument('--faulty', action='store_true',
                      help='only the faulty server (FAULTS), --prompts rows')
  args = parser.parse_args(argv)
  if args.faulty:
    print('| run | wall s | rows out | error rows | max in flight | requests |')
    print('|---|---|---|---|---|---|')
    for r in range(args.runs):
      x = run_faulty(args.prompts, {})
      print(f"| {r + 1} | {x['wall']:.1f} | {x['good']} | {x['failed']} | "
            f"{x['max_in_flight']} | {x['requests']} |", flush=True)
    return
  variants = [('default options', {})]
  if args.max_concurrency:
    variants.append((f'max_concurrency: {args.max_concurrency}',
                     {'max_concurrency': args.max_concurrency}))
  print(f'{args.prompts} prompts per run, {args.runs} runs, median (min-max)\n')
  print('| options | server | req/s / capacity | max (mean) in flight | 429s '
        '| client CPU ms/request | wall s |')
  print('|---|---|---|---|---|---|---|')
  for name, options in variants:
    chosen = ([SHAPES[int(i)] for i in args.shapes.split(',')] if args.shapes
              else SHAPES)
    for shape in chosen:
      runs = [run_once(shape, args.prompts, options) for _ in range(args.runs)]
      med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
      lo = min(r['ratio'] for r in runs)
      hi = max(r['ratio'] for r in runs)
      print(f"| {name} | {shape[0]} | {med['ratio']:.2f} ({lo:.2f}-{hi:.2f}) | "
            f"{med['max_in_flight']:.0f} ({med['mean_in_flight']:.0f}) | "
            f"{med['rejected']:.0f} | "
            f"{med['cpu_ms']:.2f} | {med['wall']:.1f} |", flush=True)


if __name__ == '__main__':
  main()
