"""Marginal per-row cost of RenderPrompt + ParseJSON vs the same two steps
written by hand as MapToFields (string concatenation; json.loads) — issue 14.

Each pipeline runs on 1 row and on N rows (same runner, same machine, one
run); the marginal cost per row is (time(N) - time(1)) / N, so start-up and
model-free fixed costs cancel out. Target: llm / by_hand <= 1.5.

Two times are taken of every run, each as wall and CPU seconds:
- process: the whole `python -m apache_beam.yaml.main` process, as the
  issue first measured it. Its start-up (imports, ~15 s here) varies by a
  second or more on a shared machine, i.e. ±10 µs per row at 100,000 rows;
- run: only the pipeline's execution (Pipeline.run until it finishes,
  timed inside the same process), which leaves the start-up out and with it
  most of the noise. Same rows, same runner, same process.
With --repeats R every (pipeline, size) runs R times, interleaved, and the
fastest run of each counts.

    .venv/bin/python bench/row_overhead.py [--rows 100000] [--repeats 3]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINES = {
    'RenderPrompt+ParseJSON': 'bench/pipelines/row_overhead_llm.yaml',
    'MapToFields by hand': 'bench/pipelines/row_overhead_by_hand.yaml',
}

# Runs Beam YAML's main with Pipeline.run timed (the outermost call: a
# runner may call run again on a copy of the pipeline).
_TIMED_MAIN = '''
import json, sys, time
import apache_beam as beam
spent, depth = [], [0]
original = beam.Pipeline.run
def run(self, *args, **kwargs):
  depth[0] += 1
  wall, cpu = time.perf_counter(), time.process_time()
  try:
    result = original(self, *args, **kwargs)
    result.wait_until_finish()
  finally:
    depth[0] -= 1
  if not depth[0]:
    spent.append((time.perf_counter() - wall, time.process_time() - cpu))
  return result
beam.Pipeline.run = run
from apache_beam.yaml import main
main.run(argv=sys.argv[1:])
print('RUN_SECONDS=' + json.dumps(spent[-1]))
'''


def write_rows(path, n):
  answer = json.dumps({'sentiment': 1, 'summary': 'The customer was happy.'})
  with open(path, 'w') as f:
    for i in range(n):
      f.write(json.dumps({'id': i, 'text': f'user {i}: the pizza was great',
                          'answer': answer}) + '\n')


def _children_cpu():
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def timed(pipeline, data, out):
  """{'process': (wall, CPU), 'run': (wall, CPU)} seconds of one run."""
  cpu = _children_cpu()
  start = time.perf_counter()
  done = subprocess.run(
      [sys.executable, '-c', _TIMED_MAIN,
       f'--yaml_pipeline_file={pipeline}', '--runner=FnApiRunner',
       '--jinja_variables=' + json.dumps({'input': data, 'output': out})],
      cwd=ROOT, check=True, capture_output=True, text=True)
  process = (time.perf_counter() - start, _children_cpu() - cpu)
  line = [l for l in done.stdout.splitlines() if l.startswith('RUN_SECONDS=')]
  return {'process': process, 'run': tuple(json.loads(line[-1].split('=')[1]))}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rows', type=int, default=100_000)
  parser.add_argument('--repeats', type=int, default=1)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as d:
    one, many = os.path.join(d, 'one.jsonl'), os.path.join(d, 'many.jsonl')
    write_rows(one, 1)
    write_rows(many, args.rows)
    runs = {(name, n): [] for name in PIPELINES for n in (1, args.rows)}
    for _ in range(args.repeats):
      for name, pipeline in PIPELINES.items():
        for n, data in ((1, one), (args.rows, many)):
          t = timed(pipeline, data, os.path.join(d, 'out'))
          runs[name, n].append(t)
          print(f'  {name}, {n} rows: process {t["process"][0]:.2f} s wall '
                f'{t["process"][1]:.2f} s CPU; run {t["run"][0]:.2f} s wall '
                f'{t["run"][1]:.2f} s CPU', file=sys.stderr, flush=True)
    print(f'| pipeline | time | 1 row (s) | {args.rows} rows (s) '
          f'| marginal µs/row |')
    print('|---|---|---|---|---|')
    marginal = {}
    for what in ('process', 'run'):
      for i, clock in enumerate(('wall', 'CPU')):
        for name in PIPELINES:
          t1 = min(t[what][i] for t in runs[name, 1])
          tn = min(t[what][i] for t in runs[name, args.rows])
          marginal[what, clock, name] = (tn - t1) / args.rows * 1e6
          print(f'| {name} | {what}, {clock} | {t1:.2f} | {tn:.2f} '
                f'| {marginal[what, clock, name]:.1f} |')
    print()
    llm, hand = PIPELINES
    for what in ('process', 'run'):
      for clock in ('wall', 'CPU'):
        print(f'RenderPrompt+ParseJSON / by hand, {what} {clock}: '
              f'{marginal[what, clock, llm] / marginal[what, clock, hand]:.2f}')
    if args.repeats > 1:
      print(f'(fastest of {args.repeats} runs of each)')


if __name__ == '__main__':
  main()
