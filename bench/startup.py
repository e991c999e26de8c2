"""Start-up cost of beam-llm: a one-row ParseJSON pipeline vs the same
pipeline with Beam's own pass-through MapToFields, same install, alternating
runs, median wall time of each (issue 10 target: ratio <= 1.2).

    .venv/bin/python bench/startup.py [--runs 3]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINES = {
    'ParseJSON': 'tests/pipelines/parse_only.yaml',
    'MapToFields': 'tests/pipelines/pass_through.yaml',
}


def run_once(pipeline: str, out_dir: str) -> float:
  start = time.perf_counter()
  subprocess.run(
      [sys.executable, '-m', 'apache_beam.yaml.main',
       f'--yaml_pipeline_file={pipeline}', '--runner=FnApiRunner',
       '--jinja_variables={"output": "%s/out"}' % out_dir],
      cwd=ROOT, check=True, capture_output=True)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--runs', type=int, default=3)
  args = parser.parse_args()
  times = {name: [] for name in PIPELINES}
  with tempfile.TemporaryDirectory() as d:
    for _ in range(args.runs):
      for name, pipeline in PIPELINES.items():
        times[name].append(run_once(pipeline, d))
  median = {name: statistics.median(t) for name, t in times.items()}
  print('| pipeline | runs (s) | median (s) |')
  print('|---|---|---|')
  for name, t in times.items():
    print(f'| {name} | {", ".join(f"{x:.2f}" for x in t)} | {median[name]:.2f} |')
  print(f'\nParseJSON / MapToFields: {median["ParseJSON"] / median["MapToFields"]:.2f}')


if __name__ == '__main__':
  main()
