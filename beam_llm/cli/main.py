"""`beam-llm run ...`: Beam YAML's own runner, without the noise.

`beam-llm run --yaml_pipeline_file=P.yaml [any apache_beam.yaml.main flag]`
runs exactly what `python -m apache_beam.yaml.main` runs (same flags, same
Jinja expansion, `--tests` too), with three differences a newcomer would
otherwise trip over:

- Beam's start-up warnings that concern other parts of Beam (BigQuery's
  apitools, MLTransform modules, TensorFlow's C++ banner) are not shown;
- the runner defaults to FnApiRunner (local, in-process), so a local run
  does not first try to download the Prism runner; any --runner wins;
- the empty `.temp…` folders Beam's file sinks leave beside an output that
  received no rows are removed;
- GenerateText's progress lines show on long runs, and a summary of the
  run's beam-llm metrics (rows, error rows by reason, tokens, retries, cache
  hits, wall time, rows/s) is printed at the end.
"""
import sys
import time

# The summary's wall time starts here, with the command: imports and the
# pipeline's construction are part of what a user waits for.
_STARTED = time.monotonic()

from beam_llm.cli import quiet  # noqa: E402

USAGE = """usage:
  beam-llm run PIPELINE.yaml [--jinja_variables=JSON] [--tests] [beam options...]
      Runs a Beam YAML pipeline like `python -m apache_beam.yaml.main`,
      quietly, on FnApiRunner unless --runner is given.
  beam-llm validate PIPELINE.yaml... [--jinja_variables=JSON] [--check_reachable]
      Checks a pipeline without running it or loading a model: one line per
      problem, exit status 1 if there is any. Offline unless
      --check_reachable (then models, endpoints and stores are looked up)."""


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ('-h', '--help'):
    print(USAGE)
    sys.exit(0 if argv else 2)
  command, rest = argv[0], argv[1:]
  if command == 'run':
    sys.exit(run(rest))
  if command == 'validate':
    sys.exit(validate(rest))
  print(f'beam-llm: unknown command {command!r}\n\n{USAGE}', file=sys.stderr)
  sys.exit(2)


def _pipeline_file_flag(argv) -> list:
  argv = list(argv)
  if argv and not argv[0].startswith('-'):  # `beam-llm run P.yaml ...`
    argv[0] = f'--yaml_pipeline_file={argv[0]}'
  return argv


def validate(argv) -> int:
  files = [a for a in argv if not a.startswith('-')]
  flags = [a for a in argv if a.startswith('-') and a != '--check_reachable']
  files += [a.split('=', 1)[1] for a in flags
            if a.startswith('--yaml_pipeline_file=')]
  flags = [a for a in flags if not a.startswith('--yaml_pipeline_file=')]
  if not files:
    print(USAGE, file=sys.stderr)
    return 2
  quiet.before_beam_starts(import_beam_yaml=False)
  from beam_llm.cli import validate as validation
  failed = False
  for path in files:
    problems = validation.validate(
        [f'--yaml_pipeline_file={path}', *flags],
        check_reachable='--check_reachable' in argv)
    for problem in problems:
      print(f'{path}: {problem}')
    if not problems:
      print(f'{path}: OK')
    failed = failed or bool(problems)
  return 1 if failed else 0


def run(argv) -> int:
  argv = _pipeline_file_flag(argv)
  if not any(a == '--runner' or a.startswith('--runner=') for a in argv):
    argv.append('--runner=FnApiRunner')
  quiet.before_beam_starts()
  from apache_beam.yaml import main as yaml_main
  if '--tests' in argv or '--test' in argv:
    yaml_main.run_tests(argv)
    return 0
  from beam_llm.cli import outputs
  spec = outputs.pipeline_spec(yaml_main, argv)
  try:
    _run_with_summary(yaml_main, argv, spec)
  finally:
    quiet.remove_empty_temp_dirs([p for p, _ in outputs.output_paths(spec)])
  return 0


def _run_with_summary(yaml_main, argv, spec) -> None:
  """apache_beam.yaml.main.run, keeping the result to print its metrics."""
  import logging
  import time

  import apache_beam as beam

  from beam_llm.cli import outputs
  from beam_llm.cli import summary
  # GenerateText's progress lines (rows, failures, rows/s) on long runs.
  progress = logging.getLogger('beam_llm')
  progress.setLevel(logging.INFO)
  if not progress.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
    progress.addHandler(handler)
    progress.propagate = False
  build_start = time.monotonic()
  wall_start = time.time()
  options, constructor, display_data = (
      yaml_main.build_pipeline_components_from_argv(argv))
  p = beam.Pipeline(options=options, display_data=display_data)
  print('Building pipeline...')
  constructor(p)
  print('Running pipeline...')
  run_start = time.monotonic()
  result = p.run()
  result.wait_until_finish()
  times = {'start-up': build_start - _STARTED, 'build': run_start - build_start,
           'run': time.monotonic() - run_start}
  print(summary.render(
      summary.beam_llm_counters(result), outputs.written(spec, wall_start),
      times, outputs.local_input_rows(spec)))
