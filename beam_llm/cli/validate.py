"""`beam-llm validate PIPELINE.yaml`: check a pipeline without running it.

Two passes, both offline by default and without loading a model:

1. Static: the file expanded with Jinja exactly as apache_beam.yaml.main
   does; every input names a transform that exists; every error output is
   consumed; every beam-llm transform is built from its config (unknown,
   misspelt, mistyped or missing options, unreadable template / schema
   files, backends whose extra is missing). Every problem is reported.
2. If that is clean, the pipeline is constructed as Beam YAML constructs it
   (field wiring, template variables against input fields, Beam's own
   checks), without running it. The first problem there is reported.

Hubs, servers and stores are contacted only with --check_reachable.
"""
import os
import re
from typing import Any, List, Optional

import yaml

_ERROR_SUFFIX = re.compile(r'^(.+?)\.([^.]+)$')


class Problem:
  def __init__(self, line: Optional[int], where: str, message: str):
    self.line, self.where, self.message = line, where, message

  def __str__(self):
    at = f'line {self.line}: ' if self.line else ''
    return f'{at}{self.where}: {self.message}' if self.where else at + self.message


def validate(argv: List[str], check_reachable: bool = False) -> List[Problem]:
  from beam_llm.cli import lines
  from beam_llm.cli import variables
  try:
    # Before Beam parses the flags: Beam's message for bad JSON is a usage
    # banner.
    variables.check(argv, variables.pipeline_template(argv))
  except variables.VariablesError as exn:
    return [Problem(None, '', str(exn))]
  from apache_beam.yaml import main as yaml_main
  try:
    _, _, template, pipeline_yaml = yaml_main._build_pipeline_yaml_from_argv(argv)
  except Exception:  # pylint: disable=broad-except
    template = pipeline_yaml = ''  # _problems reports it.
  to_file = lines.line_map(template, pipeline_yaml)
  problems = _problems(argv, check_reachable)
  for problem in problems:
    # Lines of the file as written, not of its Jinja expansion.
    if problem.line:
      problem.line = to_file(problem.line)
    problem.message = lines.in_message(problem.message, to_file)
  return problems


def _problems(argv: List[str], check_reachable: bool) -> List[Problem]:
  os.environ['BEAM_LLM_CHECK_REACHABLE'] = '1' if check_reachable else '0'
  from apache_beam.yaml import main as yaml_main
  from apache_beam.yaml import yaml_transform
  try:
    _, pipeline_args, _, pipeline_yaml = yaml_main._build_pipeline_yaml_from_argv(argv)
    spec = yaml.load(pipeline_yaml, Loader=yaml_transform.SafeLineLoader)
  except Exception as exn:  # pylint: disable=broad-except
    return [Problem(None, '', f'cannot read the pipeline: {_one_line(exn)}')]
  pipeline = (spec or {}).get('pipeline') if isinstance(spec, dict) else None
  if not pipeline:
    return [Problem(None, '', 'the file has no pipeline: section')]
  problems = _static(pipeline)
  if problems:
    return problems
  from beam_llm.cli import quiet
  quiet.import_beam_yaml_quietly(spec)
  try:
    import apache_beam as beam
    options, constructor = yaml_main.build_pipeline_components_from_yaml(
        pipeline_yaml, pipeline_args)
    constructor(beam.Pipeline(options=options))
  except Exception as exn:  # pylint: disable=broad-except
    return [Problem(None, '', f'building the pipeline failed: {_one_line(exn)}')]
  return []


def _static(pipeline) -> List[Problem]:
  transforms = pipeline.get('transforms', []) if isinstance(pipeline, dict) else pipeline
  is_chain = isinstance(pipeline, dict) and pipeline.get('type') == 'chain'
  problems = []
  names = {}
  for t in transforms:
    if isinstance(t, dict):
      names.setdefault(t.get('name') or t.get('type'), t)
  consumed = set()
  for t in transforms:
    if not isinstance(t, dict):
      continue
    label = _label(t)
    for ref in _inputs(t.get('input')):
      consumed.add(ref)
      base = ref if ref in names else _ERROR_SUFFIX.sub(r'\1', ref)
      if base not in names:
        problems.append(Problem(_line(t), label, f'input {ref!r} names no transform '
                                f'of this pipeline (known: {", ".join(sorted(map(str, names)))})'))
    problems += _build_beam_llm_transform(t, label)
  for t in transforms:
    if not isinstance(t, dict):
      continue
    output = ((t.get('config') or {}).get('error_handling') or {}).get('output')
    name = t.get('name') or t.get('type')
    if isinstance(output, str) and not is_chain and f'{name}.{output}' not in consumed:
      problems.append(Problem(
          _line(t), _label(t), f"error output {output!r} is not consumed: give "
          f"'{name}.{output}' as the input of a transform (e.g. a WriteToJson "
          'of the errors), or rows that fail would be lost'))
  return problems


def _build_beam_llm_transform(t: dict, label: str) -> List[Problem]:
  import beam_llm
  from beam_llm import extensions
  kind = t.get('type')
  if kind not in beam_llm.TRANSFORMS and kind not in extensions.transforms():
    return []
  from apache_beam.yaml import yaml_transform
  from beam_llm import _config
  config = yaml_transform.SafeLineLoader.strip_metadata(t.get('config') or {})
  cls = getattr(beam_llm, kind)
  try:
    # Unknown keys get a did-you-mean here, not Python's TypeError.
    _config.check_call_options(kind, cls.__init__, config)
    transform = cls(**config)
    # Checks that need no input: models, presets, stores (offline unless
    # --check_reachable).
    check = getattr(transform, 'check_at_build', None)
    if check is not None:
      check()
  except (ValueError, TypeError, ImportError, OSError, RuntimeError) as exn:
    message = _one_line(exn)
    if message.startswith(f'{kind}: '):
      message = message[len(kind) + 2:]
    return [Problem(_line(t), label, message)]
  return []


def steps_by_line(expanded: str) -> dict:
  """{line of the expanded pipeline: its transform, labelled as here}."""
  from apache_beam.yaml import yaml_transform
  spec = yaml.load(expanded, Loader=yaml_transform.SafeLineLoader)
  found = {}

  def walk(items):
    for t in items or []:
      if isinstance(t, dict):
        found[_line(t)] = _label(t)
        walk(t.get('transforms'))

  pipeline = spec.get('pipeline') if isinstance(spec, dict) else None
  walk(pipeline.get('transforms') if isinstance(pipeline, dict) else pipeline)
  return found


def _inputs(value: Any) -> List[str]:
  if isinstance(value, str):
    return [value]
  if isinstance(value, list):
    return [v for v in value if isinstance(v, str)]
  if isinstance(value, dict):
    return [v for k, v in value.items() if isinstance(v, str) and not k.startswith('__')]
  return []


def _label(t: dict) -> str:
  name, kind = t.get('name'), t.get('type')
  return f'{name} ({kind})' if name and name != kind else str(kind)


def _line(t: dict) -> Optional[int]:
  return t.get('__line__')


def _one_line(exn: BaseException) -> str:
  from beam_llm.cli import errors
  return errors.one_line(exn)
