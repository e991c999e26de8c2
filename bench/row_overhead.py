"""Marginal per-row cost of RenderPrompt + ParseJSON vs the same two steps
written by hand as MapToFields (string concatenation; json.loads) — issue 14.

Each pipeline runs on 1 row and on N rows (same runner, same machine, one
run); the marginal cost per row is (time(N) - time(1)) / N, so start-up and
model-free fixed costs cancel out. Target: llm / by_hand <= 1.5.

    .venv/bin/python bench/row_overhead.py [--rows 100000]
"""
import argparse
import json
import os
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


def timed(pipeline, data, out):
  start = time.perf_counter()
  subprocess.run(
      [sys.executable, '-m', 'apache_beam.yaml.main',
       f'--yaml_pipeline_file={pipeline}', '--runner=FnApiRunner',
       '--jinja_variables=' + json.dumps({'input': data, 'output': out})],
      cwd=ROOT, check=True, capture_output=True)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rows', type=int, default=100_000)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as d:
    one, many = os.path.join(d, 'one.jsonl'), os.path.join(d, 'many.jsonl')
    write_rows(one, 1)
    write_rows(many, args.rows)
    per_row = {}
    print(f'| pipeline | 1 row (s) | {args.rows} rows (s) | marginal µs/row |')
    print('|---|---|---|---|')
    for name, pipeline in PIPELINES.items():
      t1 = timed(pipeline, one, os.path.join(d, 'out1'))
      tn = timed(pipeline, many, os.path.join(d, 'outn'))
      per_row[name] = (tn - t1) / args.rows * 1e6
      print(f'| {name} | {t1:.1f} | {tn:.1f} | {per_row[name]:.1f} |', flush=True)
    a, b = per_row.values()
    print(f'\nRenderPrompt+ParseJSON / by hand: {a / b:.2f}')


if __name__ == '__main__':
  main()
