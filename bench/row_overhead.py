"""Marginal per-row cost of RenderPrompt + ParseJSON vs the same two steps
written by hand as MapToFields (string concatenation; json.loads) — issue 14.

Each pipeline runs on 1 row and on N rows (same runner, same machine, one
run); the marginal cost per row is (time(N) - time(1)) / N, so start-up and
model-free fixed costs cancel out. Target: llm / by_hand <= 1.5.

With --repeats R every (pipeline, size) is run R times, interleaved, and the
fastest run of each counts (start-up of a Beam YAML pipeline varies by a
second or more on a shared machine, which is ±10 µs per row at 100,000 rows).
Wall time is the target's measure; the CPU time of the pipeline process
(user + system) is shown beside it, as it is less disturbed by other jobs.

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
  """(wall seconds, CPU seconds) of one pipeline run."""
  cpu = _children_cpu()
  start = time.perf_counter()
  subprocess.run(
      [sys.executable, '-m', 'apache_beam.yaml.main',
       f'--yaml_pipeline_file={pipeline}', '--runner=FnApiRunner',
       '--jinja_variables=' + json.dumps({'input': data, 'output': out})],
      cwd=ROOT, check=True, capture_output=True)
  return time.perf_counter() - start, _children_cpu() - cpu


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
          runs[name, n].append(timed(pipeline, data, os.path.join(d, 'out')))
    print(f'| pipeline | 1 row (s) | {args.rows} rows (s) | marginal µs/row '
          f'| CPU 1 row (s) | CPU {args.rows} rows (s) | CPU marginal µs/row |')
    print('|---|---|---|---|---|---|---|')
    wall, cpu = {}, {}
    for name in PIPELINES:
      w1, c1 = (min(x) for x in zip(*runs[name, 1]))
      wn, cn = (min(x) for x in zip(*runs[name, args.rows]))
      wall[name] = (wn - w1) / args.rows * 1e6
      cpu[name] = (cn - c1) / args.rows * 1e6
      print(f'| {name} | {w1:.1f} | {wn:.1f} | {wall[name]:.1f} '
            f'| {c1:.1f} | {cn:.1f} | {cpu[name]:.1f} |')
    (a, b), (ca, cb) = wall.values(), cpu.values()
    print(f'\nRenderPrompt+ParseJSON / by hand: {a / b:.2f} (wall), '
          f'{ca / cb:.2f} (CPU)'
          + (f'; fastest of {args.repeats} runs each' if args.repeats > 1
             else ''))


if __name__ == '__main__':
  main()
