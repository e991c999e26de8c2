"""The pipeline commands the README and the guides show, as the tests run
them (tests/test_docs_commands.py): extracted from the indented code
blocks, continuation lines joined, placeholders (a model directory, $EMB)
replaced by the test's own tiny models."""
import glob
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDES = ['README.md'] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
_PIPELINE_COMMAND = re.compile(
    r'(apache_beam\.yaml\.main|beam_llm (run|validate)|beam-llm (run|validate))\b')


def shell_lines(path):
  """(line number, command) of each indented code line, `\\` lines joined."""
  with open(os.path.join(ROOT, path)) as f:
    lines = f.read().splitlines()
  out, fenced, i = [], False, 0
  while i < len(lines):
    line = lines[i]
    if line.lstrip().startswith('```'):
      fenced = not fenced
    if not fenced and line.startswith('    ') and line.strip():
      start, text = i + 1, line.strip()
      while text.endswith('\\') and i + 1 < len(lines):
        i += 1
        text = text[:-1].rstrip() + ' ' + lines[i].strip()
      out.append((start, text))
    i += 1
  return out


def pipeline_commands():
  """(where, argv) for every `apache_beam.yaml.main` / `beam-llm run|validate`
  command: argv as apache_beam.yaml.main takes it, plus the command kind."""
  found = []
  for path in GUIDES:
    for line, text in shell_lines(path):
      for part in re.split(r'\s&&\s|\s&\s|&$', text):
        if not _PIPELINE_COMMAND.search(part):
          continue
        words = shlex.split(part.replace('#', ' #', 1).split(' #')[0])
        # Leading VAR=value assignments, the interpreter, `-m module`.
        while words and re.match(r'^\w+=', words[0]):
          words.pop(0)
        if 'beam_llm' in words or 'beam-llm' in words[0]:
          at = words.index('beam_llm') + 1 if 'beam_llm' in words else 1
          kind, args = words[at], words[at + 1:]
        else:
          kind, args = 'main', words[words.index('apache_beam.yaml.main') + 1:]
        found.append((f'{path}:{line}', kind, args))
  return found


# Jinja variables naming what a pipeline writes, and the name each gets
# under a test's own directory (not the checkout's out/). Milvus Lite's
# store must end in .db.
_WRITTEN = {'output': 'output', 'store': 'store.db', 'errors': 'errors'}


def as_checks(commands, models, out_dir=None):
  """What to run for each command, in one process (check_all):
  `--tests` commands run their tests; a command whose models are all the
  test's own (a placeholder replaced by `models`, {placeholder: path}) runs
  end to end as written, writing under `out_dir`; the others (a hub model,
  a server) are validated as `beam-llm validate` would (Jinja, variables,
  options, the build). Commands for remote runners or gs:// data are
  checked for their variables only."""
  import json
  checks = []
  for where, kind, args in commands:
    local = any(p in a for a in args for p in models)
    args = [_replace(a, models) for a in args]
    if args and not args[0].startswith('-'):
      args[0] = f'--yaml_pipeline_file={args[0]}'
    remote = any('gs://' in a or 'PROJECT' in a or '--runner=' in a and
                  'FnApiRunner' not in a for a in args)
    if '--tests' in args:
      mode = 'tests'
      args = [a for a in args if not a.startswith('--runner=')] + ['--runner=FnApiRunner']
    else:
      mode = ('variables' if remote else
              'run' if local and kind != 'validate' and out_dir else 'validate')
      keep = ('--yaml_pipeline_file=', '--jinja_variables=')
      args = [a for a in args if a.startswith(keep)]
      if mode == 'run':
        args = _written_under(args, out_dir) + ['--runner=FnApiRunner']
    for i, arg in enumerate(args):  # An input file a guide made first.
      if arg.startswith('--jinja_variables='):
        values = json.loads(arg.split('=', 1)[1])
        path = values.get('input')
        if isinstance(path, str) and path.startswith('/tmp/') and not os.path.exists(path):
          values['input'] = 'pipelines/data/chats.jsonl'
        args[i] = '--jinja_variables=' + json.dumps(values)
    checks.append({'where': where, 'mode': mode, 'args': args})
  return checks


def _written_under(args, out_dir):
  """`args` with the pipeline's outputs (the _WRITTEN variables it uses and
  the command leaves to their defaults) under `out_dir`."""
  import json
  from beam_llm.cli import variables
  used = variables.used(variables.pipeline_template(args))
  given = {}
  for arg in args:
    if arg.startswith('--jinja_variables='):
      given = json.loads(arg.split('=', 1)[1])
  for name, where in _WRITTEN.items():
    if name in used and name not in given:
      given[name] = os.path.join(out_dir, where)
  return [a for a in args if not a.startswith('--jinja_variables=')] + [
      '--jinja_variables=' + json.dumps(given)]


def _replace(arg, models):
  for placeholder, path in models.items():
    arg = arg.replace(placeholder, path)
  return arg


def check_all(checks):
  """Runs the checks here; returns [(where, what went wrong)]."""
  import io
  from tests import yaml_runs
  from beam_llm.cli import validate, variables
  problems = []
  for check in checks:
    args = check['args']
    try:
      if check['mode'] in ('tests', 'run'):
        result = yaml_runs.run_all([args])[0]
        if result['returncode']:
          problems.append((check['where'], result['stderr'][-2000:]))
      elif check['mode'] == 'variables':
        variables.check(args, variables.pipeline_template(args))
      else:
        for problem in validate.validate(args):
          problems.append((check['where'], str(problem)))
    except Exception as exn:  # pylint: disable=broad-except
      problems.append((check['where'], f'{type(exn).__name__}: {exn}'))
  return problems


if __name__ == '__main__':
  import json
  import sys
  with open(sys.argv[1]) as f:
    checks = json.load(f)
  with open(sys.argv[2], 'w') as f:
    json.dump(check_all(checks), f)
