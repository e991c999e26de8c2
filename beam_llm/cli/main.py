"""`beam-llm run|validate ...` (also `python -m beam_llm`): the commands.

`run` (beam_llm/cli/run.py) runs exactly what `python -m
apache_beam.yaml.main` runs (same flags, same Jinja expansion, `--tests`
too), with what a newcomer would otherwise trip over taken care of: Beam's
unrelated start-up noise hidden (quiet.py) and its ML catalogue skipped
(lean_start.py); FnApiRunner unless --runner is given; a mistake told in one
line (errors.py); progress lines and a summary of what was read and written
(summary.py); empty `.temp…` folders removed. `validate` (validate.py)
checks a pipeline without running it.
"""
import os
import sys
import time


def _process_start() -> float:
  """time.monotonic() when this process started (Linux: from /proc), else now.

  The summary's wall time starts there, with the command: the interpreter,
  imports and the pipeline's construction are part of what a user waits for.
  """
  now = time.monotonic()
  try:
    with open('/proc/self/stat') as f:
      start_ticks = int(f.read().rsplit(')', 1)[1].split()[19])  # starttime
    with open('/proc/uptime') as f:
      uptime = float(f.read().split()[0])
    return now - max(0.0, uptime - start_ticks / os.sysconf('SC_CLK_TCK'))
  except (OSError, ValueError, IndexError):
    return now


_STARTED = _process_start()

from beam_llm.cli import quiet  # noqa: E402

USAGE = """usage:
  beam-llm run PIPELINE.yaml [--jinja_variables=JSON] [--tests] [--verbose] [beam options...]
      Runs a Beam YAML pipeline like `python -m apache_beam.yaml.main`,
      quietly, on FnApiRunner unless --runner is given, and prints a
      summary of what it read and wrote. Takes apache_beam.yaml.main's
      flags (--jinja_variables, --tests, --json_schema_validation, ...)
      and any Beam pipeline option (--runner, --project, ...).
      A mistake in the pipeline is one line; --verbose adds the traceback
      and shows what worker processes print, unfiltered. --prices=TABLE
      (JSON, or a JSON/YAML file: {model: {input, output, batch_discount}},
      per million tokens) adds the cost of the tokens to the summary.
  beam-llm validate PIPELINE.yaml... [--jinja_variables=JSON] [--check_reachable] [--estimate [--prices=TABLE]]
      Checks a pipeline without running it or loading a model: one line per
      problem, exit status 1 if there is any. Offline unless
      --check_reachable (then models, endpoints and stores are looked up).
      --estimate then runs it without writing or calling a model, and
      reports each model's rows, prompt tokens and output bound, and with
      --prices=TABLE the cost, synchronously and with batch_api."""


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ('-h', '--help'):
    print(USAGE)
    sys.exit(0 if argv else 2)
  command, rest = argv[0], argv[1:]
  if command in ('run', 'validate') and ('-h' in rest or '--help' in rest):
    # Not Beam's own --help: it lists only its Jinja flags, as `__main__.py`.
    print(USAGE)
    sys.exit(0)
  if command == 'run':
    sys.exit(run(rest))
  if command == 'validate':
    sys.exit(validate(rest))
  print(f'beam-llm: unknown command {command!r}\n\n{USAGE}', file=sys.stderr)
  sys.exit(2)


def validate(argv) -> int:
  files = [a for a in argv if not a.startswith('-')]
  flags = [a for a in argv if a.startswith('-') and a not in (
      '--check_reachable', '--estimate') and not a.startswith('--prices=')]
  files += [a.split('=', 1)[1] for a in flags
            if a.startswith('--yaml_pipeline_file=')]
  flags = [a for a in flags if not a.startswith('--yaml_pipeline_file=')]
  if not files:
    print(USAGE, file=sys.stderr)
    return 2
  quiet.before_beam_starts()
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
      if '--estimate' in argv:
        failed = _estimate(path, flags, argv) or failed
    failed = failed or bool(problems)
  return 1 if failed else 0


def _estimate(path, flags, argv) -> bool:
  """Prints the estimate of a valid pipeline (cli/estimate.py); whether
  it failed."""
  from beam_llm.cli import costs
  from beam_llm.cli import estimate
  try:
    prices = None
    for arg in [a for a in argv if a.startswith('--prices=')]:
      prices = costs.load_prices(arg.split('=', 1)[1])
  except costs.PriceError as exn:
    print(f'{path}: {exn}')
    return True
  for line in estimate.run([f'--yaml_pipeline_file={path}', *flags], prices):
    print(f'{path}: {line}')
  return False


def run(argv) -> int:
  from beam_llm.cli import run as running
  return running.run(argv, _STARTED)
