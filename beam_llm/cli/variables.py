"""--jinja_variables checked against the variables the pipeline uses.

Jinja ignores a variable no template line uses, so `{"modle": "DIR"}` would
run the hub default model without a word. Every bundled pipeline names its
variables in `{{ ... }}`, so a name the file never uses is a mistake: it is
reported with the names the file does use (did-you-mean). A value that is not
JSON (Python's single quotes, say) gets one message saying so, instead of
argparse's usage banner (printed once per parse: twice by Beam YAML).
"""
import difflib
import json
from typing import List, Optional, Tuple

FLAG = '--jinja_variables'
# What Beam's expand_jinja passes to every template itself.
_BEAM_GIVES = {'datetime'}


class VariablesError(ValueError):
  pass


def given(argv: List[str]) -> Tuple[Optional[dict], Optional[str]]:
  """The --jinja_variables value, parsed; raises VariablesError if not JSON."""
  for i, arg in enumerate(argv):
    if arg.startswith(FLAG + '='):
      text = arg.split('=', 1)[1]
    elif arg == FLAG and i + 1 < len(argv):
      text = argv[i + 1]
    else:
      continue
    try:
      value = json.loads(text)
    except ValueError as exn:
      hint = (' (JSON wants double quotes: '
              '--jinja_variables=\'{"model": "DIR"}\')' if "'" in text else '')
      raise VariablesError(
          f'{FLAG} is not valid JSON: {exn}{hint}; got {text}') from None
    if not isinstance(value, dict):
      raise VariablesError(
          f'{FLAG} must be a JSON object such as \'{{"model": "DIR"}}\', got {text}')
    return value, text
  return None, None


def used(template: str) -> set:
  """The variables the pipeline file's Jinja reads."""
  import jinja2
  from jinja2 import meta
  try:
    parsed = jinja2.Environment().parse(_without_leading_comments(template))
  except jinja2.TemplateSyntaxError:
    return set()  # Beam reports it, with its line.
  return meta.find_undeclared_variables(parsed) - _BEAM_GIVES


def _without_leading_comments(template: str) -> str:
  # As Beam's yaml_transform.strip_leading_comments (not imported: it loads
  # Beam YAML): the leading comment block never reaches Jinja, so a
  # `{{ history }}` in it is no variable.
  lines = template.splitlines(keepends=True)
  for i, line in enumerate(lines):
    if line.strip() and not line.lstrip().startswith('#'):
      return ''.join(lines[i:])
  return ''


def check(argv: List[str], template: Optional[str]) -> None:
  """Raises VariablesError for bad JSON or a variable the file does not use."""
  variables, _ = given(argv)
  if not variables or template is None:
    return
  known = used(template)
  for name in sorted(set(variables) - known):
    if not known:
      raise VariablesError(
          f'{FLAG}: the pipeline uses no variables, but {name!r} was given')
    close = difflib.get_close_matches(name, sorted(known), n=1)
    mean = f' (did you mean {close[0]!r}?)' if close else ''
    raise VariablesError(
        f'{FLAG}: the pipeline uses no variable {name!r}{mean}; its variables: '
        f'{", ".join(sorted(known))}')


def pipeline_template(argv: List[str]) -> Optional[str]:
  """The pipeline file's text, as given by --yaml_pipeline_file (or inline)."""
  for i, arg in enumerate(argv):
    for flag in ('--yaml_pipeline_file', '--yaml_pipeline'):
      if arg.startswith(flag + '='):
        value = arg.split('=', 1)[1]
      elif arg == flag and i + 1 < len(argv):
        value = argv[i + 1]
      else:
        continue
      if flag == '--yaml_pipeline':
        return value
      try:
        if '://' in value:
          from apache_beam.io.filesystems import FileSystems
          with FileSystems.open(value) as f:
            return f.read().decode('utf-8')
        with open(value, encoding='utf-8') as f:
          return f.read()
      except OSError:
        return None  # Beam reports the missing file.
  return None
