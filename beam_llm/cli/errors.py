"""A mistake in a pipeline, told in one line: `FILE: line N: what is wrong`.

Beam wraps the sentence that says what is wrong (ours: a did-you-mean, the
extra to install) in 60-120 lines of traceback, with the sentence last and
the line number, counted in the Jinja expansion, in a wrapper's message.
`beam-llm run` and `validate` print the innermost sentence, with the line in
the file as written. A traceback is still printed for --verbose, and for an
exception that is no user mistake (a bug: AttributeError, KeyError, ...).
"""
import re
import traceback
from typing import Callable, List, Optional

from beam_llm.cli import lines

# What Beam YAML and beam-llm raise for a mistake in the pipeline or its
# options (ConfigError is a ValueError; a missing extra is an ImportError;
# a file that is not there an OSError; a model, preset, endpoint or store
# that is not there a RuntimeError). Anything else is a bug.
_MISTAKES = (ValueError, TypeError, ImportError, OSError, RuntimeError)
_BUGS = (NotImplementedError, RecursionError)
# Beam YAML names the transform: `... "ReadChats" at line 3: ...`.
_AT_NAME = re.compile(r'"([^"]+)" at line \d+')


def chain(exn: BaseException) -> List[BaseException]:
  """The exception and its causes, outermost first."""
  found = [exn]
  while True:
    cause = exn.__cause__ or (
        None if exn.__suppress_context__ else exn.__context__)
    if cause is None or cause in found:
      return found
    found.append(cause)
    exn = cause


def one_line(exn: BaseException) -> str:
  """The innermost message, on one line: no traceback."""
  inner = chain(exn)[-1]
  return ' '.join(str(inner).split()) or type(inner).__name__


def is_mistake(exn: BaseException) -> bool:
  import jinja2
  import yaml
  mistakes = _MISTAKES + (jinja2.TemplateError, yaml.YAMLError)
  inner = chain(exn)[-1]
  return isinstance(inner, mistakes) and not isinstance(inner, _BUGS)


def line_of(exn: BaseException) -> Optional[int]:
  """The line of the expanded pipeline the error is about, if any says so."""
  import yaml
  for e in chain(exn):
    mark = getattr(e, 'problem_mark', None)
    if isinstance(e, yaml.MarkedYAMLError) and mark is not None:
      return mark.line + 1
    found = lines.AT_LINE.search(str(e))
    if found:
      return int(found.group(1))
  return None


def report(exn: BaseException, where: str, to_file: Callable[[int], int],
           verbose: bool, steps: Optional[dict] = None) -> str:
  """What `beam-llm run` prints (on stderr) when building the pipeline failed.

  `steps`: line of the expanded pipeline -> the transform there, named as
  validate names it (`Write (WriteToVectorStore)`); Beam's own message
  sometimes names the type instead of the name.
  """
  if verbose or not is_mistake(exn):
    text = ''.join(traceback.format_exception(exn))
    if not is_mistake(exn):
      text += ('\nThis looks like a bug in beam-llm or Beam, not in the '
               'pipeline: please report it with the traceback above.\n')
    return text
  line = line_of(exn)
  at = f'line {to_file(line)}: ' if line else ''
  message = one_line(exn)
  label = (steps or {}).get(line) or next(
      (m.group(1) for m in map(_AT_NAME.search, map(str, chain(exn))) if m),
      None)
  if label and not message.startswith((f'{label}: ', f'{label.split()[0]}: ')):
    # `GenerateText: ...` from a step of another name (or inside it): the
    # step's name leads, as in validate.
    import beam_llm
    inner = message.split(': ', 1)
    if len(inner) == 2 and inner[0] in beam_llm.TRANSFORMS:
      message = inner[1]
    message = f'{label}: {message}'
  return (f'{where}: {at}{message}\n'
          '(run with --verbose for the traceback)\n')
