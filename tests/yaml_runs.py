"""Runs Beam YAML pipelines one after another in one process, each exactly as
`python -m apache_beam.yaml.main ARGS` runs it (`main.run`, or
`main.run_tests` with `--tests`), for tests that run many pipelines: a
process pays Beam YAML's start-up (~10 s of imports: its ML catalogue loads
TensorFlow, torch, sentence-transformers and Vertex AI) once, not per run.

    python -m tests.yaml_runs RESULTS_FILE < runs.json   # [[arg, ...], ...]

Each run's stdout, stderr (log records included) and exit status (0, or 1
with the traceback in its stderr) are written to RESULTS_FILE as JSON.
"""
import contextlib
import io
import json
import logging
import sys
import traceback


def run_all(runs):
  from apache_beam.yaml import main as yaml_main
  logging.getLogger().setLevel(logging.INFO)  # As main's __main__ does.
  results = []
  for argv in runs:
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    returncode = 0
    try:
      with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        if '--tests' in argv:
          yaml_main.run_tests(argv, exit=False)
        else:
          yaml_main.run(argv)
    except Exception:  # pylint: disable=broad-except
      returncode = 1
      err.write(traceback.format_exc())
    finally:
      logging.getLogger().removeHandler(handler)
    results.append({'args': argv, 'returncode': returncode,
                    'stdout': out.getvalue(), 'stderr': err.getvalue()})
  return results


if __name__ == '__main__':
  with open(sys.argv[1], 'w') as f:
    json.dump(run_all(json.load(sys.stdin)), f)
