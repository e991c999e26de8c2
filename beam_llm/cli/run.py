"""`beam-llm run`: build the pipeline, run it, tell what happened.

A mistake found while building the pipeline (a misspelt option, a missing
input field, a model that is not there, a missing extra) is printed as one
line with the file and the line (beam_llm/cli/errors.py), exit status 1;
--verbose adds the traceback, and shows what worker processes and C++
libraries print while the pipeline runs (filtered otherwise: quiet.py). After the run, a summary of what was read
and written (beam_llm/cli/summary.py).
"""
import contextlib
import logging
import sys
import time

from beam_llm.cli import quiet

VERBOSE = '--verbose'


class _BuildFailed(Exception):
  """Building (not running) the pipeline failed with `__cause__`."""


def run(argv, started: float) -> int:
  verbose = VERBOSE in argv
  from beam_llm.cli import costs
  prices = None
  try:  # --prices=TABLE: the summary prices the tokens (cli/costs.py).
    for arg in [a for a in argv if a.startswith('--prices=')]:
      prices = costs.load_prices(arg.split('=', 1)[1])
  except costs.PriceError as exn:
    print(exn, file=sys.stderr)
    return 1
  argv = _pipeline_file_flag(
      [a for a in argv if a != VERBOSE and not a.startswith('--prices=')])
  if not any(a == '--runner' or a.startswith('--runner=') for a in argv):
    argv.append('--runner=FnApiRunner')
  from beam_llm.cli import variables
  try:
    variables.check(argv, variables.pipeline_template(argv))
  except variables.VariablesError as exn:
    print(f'{_where(argv)}: {exn}', file=sys.stderr)
    return 1
  quiet.before_beam_starts()
  from apache_beam.yaml import main as yaml_main  # Cheap: no ML modules.
  from beam_llm.cli import outputs
  spec = outputs.pipeline_spec(yaml_main, argv)
  quiet.import_beam_yaml_quietly(spec)
  if '--tests' in argv or '--test' in argv:
    yaml_main.run_tests(argv)
    return 0
  try:
    _run_with_summary(yaml_main, argv, spec, started, verbose, prices)
  except _BuildFailed as failed:
    _report(yaml_main, argv, failed.__cause__, verbose)
    return 1
  finally:
    quiet.remove_empty_temp_dirs(
        [p for p, _ in outputs.output_paths(spec or {})])
  return 0


def _pipeline_file_flag(argv) -> list:
  argv = list(argv)
  if argv and not argv[0].startswith('-'):  # `beam-llm run P.yaml ...`
    argv[0] = f'--yaml_pipeline_file={argv[0]}'
  return argv


def _where(argv) -> str:
  return next((a.split('=', 1)[1] for a in argv
               if a.startswith('--yaml_pipeline_file=')), 'pipeline')


def _report(yaml_main, argv, exn, verbose) -> None:
  from beam_llm.cli import errors
  from beam_llm.cli import lines
  from beam_llm.cli import validate
  where = _where(argv)
  steps = {}
  try:
    _, _, template, expanded = yaml_main._build_pipeline_yaml_from_argv(argv)
    to_file = lines.line_map(template, expanded)
    steps = validate.steps_by_line(expanded)
  except Exception:  # pylint: disable=broad-except
    to_file = lambda line: line  # The file itself does not expand.
  sys.stdout.flush()
  sys.stderr.write(errors.report(exn, where, to_file, verbose, steps))


def _run_with_summary(yaml_main, argv, spec, started: float,
                      verbose: bool = False, prices=None) -> None:
  """apache_beam.yaml.main.run, keeping the result to print its metrics."""
  import apache_beam as beam

  from beam_llm.cli import outputs
  from beam_llm.cli import summary
  _show_progress()
  build_start = time.monotonic()
  wall_start = time.time()
  print('Building pipeline...')
  try:
    if spec is not None and not (
        isinstance(spec, dict) and spec.get('pipeline')):
      # Beam's own message for this is an AttributeError on None.
      raise ValueError('the file has no pipeline: section (see the '
                       'pipelines/ folder for examples)')
    options, constructor, display_data = (
        yaml_main.build_pipeline_components_from_argv(argv))
    p = beam.Pipeline(options=options, display_data=display_data)
    constructor(p)
  except Exception as exn:  # pylint: disable=broad-except
    raise _BuildFailed() from exn
  print('Running pipeline...')
  run_start = time.monotonic()
  # --verbose: everything the workers and libraries print, unfiltered.
  with contextlib.nullcontext() if verbose else quiet.filtered_stderr():
    result = p.run()
    result.wait_until_finish()
  times = {'start-up': build_start - started, 'build': run_start - build_start,
           'run': time.monotonic() - run_start}
  print(summary.render(
      summary.beam_llm_counters(result), outputs.written(spec or {}, wall_start),
      times, outputs.local_input_rows(spec or {}), prices))


def _show_progress() -> None:
  # GenerateText's progress lines (rows, failures, rows/s) on long runs.
  progress = logging.getLogger('beam_llm')
  progress.setLevel(logging.INFO)
  if not progress.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
    progress.addHandler(handler)
    progress.propagate = False
