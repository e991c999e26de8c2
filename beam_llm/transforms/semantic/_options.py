"""The GenerateText options every semantic operator takes.

They are declared once, by GenerateText's signature and docstring, and
inherited here: an operator's config schema (its signature, which Beam YAML,
the build-time checks and docgen read) and its `Args:` documentation gain
GenerateText's options, so a generation option added there is an option of
every operator, checked and documented the same way, with no second list.
"""
import functools
import inspect
import textwrap
import typing
from typing import Any, Mapping, Optional

from beam_llm import _config

# GenerateText options the operators set themselves.
NOT_INHERITED = ('prompt', 'output', 'response_schema', 'response_schema_file',
                 'error_handling', 'usage_fields')


def _generate_text():
  from beam_llm.transforms.generate_text import GenerateText
  return GenerateText


def inherited_names() -> list:
  params = inspect.signature(_generate_text().__init__).parameters
  return [n for n in params if n != 'self' and n not in NOT_INHERITED]


def inherits_generate_options(cls):
  """Class decorator: `cls.__init__(self, <own options>, **generate_options)`
  gets a signature, type hints and docs that list GenerateText's options,
  and every option is checked against them (naming `cls`) before it runs."""
  original = cls.__init__

  @functools.wraps(original)
  def init(self, **options):
    _config.check_call_options(cls.__name__, init, options)
    original(self, **options)

  cls.__init__ = init
  own = [
      p.replace(kind=p.KEYWORD_ONLY)
      for name, p in inspect.signature(original).parameters.items()
      if name != 'self' and p.kind != p.VAR_KEYWORD
  ]
  own_names = {p.name for p in own}
  gt = _generate_text()
  gt_params = inspect.signature(gt.__init__).parameters
  gt_hints = typing.get_type_hints(gt.__init__)
  inherited = [
      gt_params[n].replace(kind=inspect.Parameter.KEYWORD_ONLY)
      for n in inherited_names() if n not in own_names
  ]
  self_param = inspect.Parameter('self', inspect.Parameter.POSITIONAL_OR_KEYWORD)
  init.__signature__ = inspect.Signature([self_param] + own + inherited)
  init.__annotations__ = {
      **typing.get_type_hints(original),
      **{p.name: gt_hints.get(p.name, Any) for p in inherited}
  }
  init.__annotations__.pop('generate_options', None)
  cls.__doc__ = cls.__doc__.rstrip() + '\n' + _inherited_docs(
      gt, [p.name for p in inherited]) + '\n'
  return cls


def _inherited_docs(gt, names) -> str:
  import docstring_parser
  docs = {
      p.arg_name: ' '.join((p.description or '').split())
      for p in docstring_parser.parse(
          gt.__doc__ or '', docstring_parser.DocstringStyle.GOOGLE).params
  }
  lines = []
  for name in names:
    text = f'{name}: {docs.get(name) or "As for GenerateText."}'
    if name == 'model_handler':
      text += ' (As for GenerateText; so are the options below.)'
    lines.append(
        textwrap.fill(
            text, width=78, initial_indent='    ', subsequent_indent='      '))
  return '\n'.join(lines)


def generate_text(
    owner: str,
    options: Mapping[str, Any],
    prompt: str,
    output: str,
    response_schema: Optional[dict]):
  """A GenerateText for an operator: the user's generation options, our
  prompt/answer fields, errors to an `errors` output, and the response
  schema where the backend can constrain or structure its output to one."""
  generate_options = {n: options[n] for n in inherited_names() if n in options}
  spec = generate_options.get('model_handler')
  if response_schema is not None and isinstance(spec, Mapping):
    from beam_llm import handlers
    try:
      backend = handlers.backend_class(owner, spec.get('type'))
    except _config.ConfigError:
      backend = None  # GenerateText reports it below.
    if backend is not None and not backend.supports_response_schema:
      response_schema = None  # Prompted only; the answer is still checked.
  from beam_llm import _rows
  # GenerateText's own checks (values, backend options) name this operator.
  with _config.reported_as(owner):
    return _generate_text()(
        **generate_options,
        prompt=prompt,
        output=output,
        response_schema=response_schema,
        error_handling={'output': _rows.INNER_ERRORS})


def handler_of(generate):
  """The backend a GenerateText built (and checked) from the options, for
  operators that call the model themselves (SummarizePerKey's combine)."""
  return generate.handler
