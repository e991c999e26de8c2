"""Config checks that run when the pipeline is built, before any model loads.

A transform's (or backend's) signature is its config schema: these helpers check
YAML-supplied options against it and raise one clear error naming the transform
and the key, instead of a TypeError deep inside a worker.
"""
import collections.abc
import contextlib
import contextvars
import difflib
import functools
import inspect
import logging
import os
import typing
import warnings
from typing import Any, Callable, Literal, Mapping, Optional, Union

from apache_beam.io.filesystems import FileSystems


class ConfigError(ValueError):
  """A pipeline option is missing, unknown or of the wrong type.

  Carries the transform it is reported for (`owner`) apart from what is
  wrong (`detail`), so an operator built from other transforms reports
  their errors under its own name (`reported_as`) without rewriting text.
  """
  def __init__(self, owner: str, detail: str):
    super().__init__(f'{owner}: {detail}')
    self.owner = owner
    self.detail = detail


def fail(owner: str, key: str, problem: str) -> typing.NoReturn:
  raise ConfigError(owner, f'option {key!r} {problem}')


# The transform the user wrote, while its building blocks are built.
_USER_OWNER = contextvars.ContextVar('beam_llm_user_owner', default=None)


@contextlib.contextmanager
def reported_as(owner: str):
  """Config errors raised inside name `owner` (the transform the user
  wrote) instead of the building block that found them, and so do the
  models built inside (`user_owner`) in their messages at run time."""
  token = _USER_OWNER.set(_USER_OWNER.get() or owner)
  try:
    yield
  except ConfigError as exn:
    raise ConfigError(owner, exn.detail) from None
  finally:
    _USER_OWNER.reset(token)


def user_owner(owner: str) -> str:
  """The transform to name in a model's messages: the outermost
  `reported_as` being built, else `owner`."""
  return _USER_OWNER.get() or owner


def checks_options(owner: str):
  """Decorator for a transform's `__init__`, whose keyword parameters are
  its YAML options: every call is checked against that signature (unknown
  keys with a did-you-mean, missing required ones, wrong types), naming
  `owner`, before the body runs. The options are declared once, by the
  signature; the body checks only what a type cannot say."""
  def decorate(init):
    signature = inspect.signature(init)

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
      given = signature.bind_partial(self, *args, **kwargs).arguments
      given.pop('self', None)
      check_call_options(owner, init, given)
      bound = signature.bind(self, *args, **kwargs)
      bound.apply_defaults()
      self.options = Options(
          {k: v for k, v in bound.arguments.items() if k != 'self'})
      init(self, *args, **kwargs)
    return checked
  return decorate


class Options:
  """A transform's options as given (defaults filled in), read-only: what
  `checks_options` hands the transform, and the transform its DoFns, as
  one object rather than a row of positional arguments."""
  def __init__(self, values: Mapping[str, Any]):
    object.__setattr__(self, '_values', dict(values))

  def __getattr__(self, name: str) -> Any:
    if name.startswith('_'):  # Not an option (pickling asks for these).
      raise AttributeError(name)
    try:
      return self._values[name]
    except KeyError:
      raise AttributeError(f'no option {name!r}') from None

  def __setattr__(self, name: str, value: Any) -> None:
    raise AttributeError('options are read-only')

  def __repr__(self) -> str:
    return f'Options({self._values!r})'


def renamed(owner: str, old: str, new: str, old_value: Any, new_value: Any):
  """The value of option `new`, also accepted one release under its old
  name `old` (None when not given), with a deprecation warning."""
  if old_value is None:
    return new_value
  warnings.warn(f'{owner}: option {old!r} is now called {new!r}; the old '
                'name stops working in the next release', DeprecationWarning,
                stacklevel=3)
  logging.getLogger('beam_llm').warning(
      '%s: option %r is now called %r; the old name stops working in the '
      'next release', owner, old, new)
  return old_value


def reachability_checks() -> bool:
  """Whether build-time checks may contact hubs, servers and stores.

  On by default (a model that cannot be fetched fails at build time, in
  seconds). `beam-llm validate` turns it off unless asked to check
  reachability, so validating stays offline and fast.
  """
  return os.environ.get('BEAM_LLM_CHECK_REACHABLE', '1') != '0'


class MissingExtra(ImportError):
  """A backend's client library is not installed."""


def require_extra(owner: str, what: str, extra: str, modules) -> None:
  """Fails at build time, naming the extra to install, if `modules` are missing.

  Checked without importing them (find_spec), so building stays cheap.
  """
  import importlib.util
  import sys
  missing = []
  for module in modules:
    try:
      # None in sys.modules is Python's mark for a module that must not load.
      found = sys.modules.get(module, True) is not None and (
          importlib.util.find_spec(module) is not None)
    except ModuleNotFoundError:  # A missing parent package.
      found = False
    if not found:
      missing.append(module)
  if missing:
    raise MissingExtra(
        f"{owner}: {what} needs beam-llm's [{extra}] extra, which is not "
        f"installed here (no module {', '.join(missing)}). Install it with: "
        f"pip install 'beam-llm[{extra}]'")


def check_model_handler_spec(owner: str, spec: Any, example_type: str) -> None:
  """Checks the shape of a YAML `model_handler: {type, config}` block."""
  if not isinstance(spec, Mapping):
    fail(owner, 'model_handler',
         f'must be a mapping like {{type: {example_type}, config: {{...}}}}')
  unknown = set(spec) - {'type', 'config'}
  if unknown:
    fail(owner, f'model_handler.{sorted(unknown)[0]}',
         'is unknown; model_handler takes type and config')
  if 'type' not in spec:
    fail(owner, 'model_handler.type', 'is required')


def check_call_options(
    owner: str,
    func: Callable,
    options: Mapping[str, Any],
    prefix: str = '',
    exclude: tuple = ()) -> dict:
  """Checks `options` against `func`'s keyword parameters and returns them.

  Unknown keys (with a did-you-mean hint), missing required keys and values of
  the wrong type each raise ConfigError naming `owner` and `prefix + key`.
  """
  if not isinstance(options, Mapping):
    raise ConfigError(
        owner, f'{prefix.rstrip(".") or "config"} must be a mapping, '
        f'got {type(options).__name__}')
  params = {
      name: p
      for name, p in inspect.signature(func).parameters.items()
      if name != 'self' and name not in exclude and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
  }
  hints = typing.get_type_hints(func)
  for key in options:
    if key not in params:
      close = difflib.get_close_matches(str(key), params, n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ''
      fail(
          owner,
          prefix + str(key),
          f'is unknown{hint}; known options: {", ".join(sorted(params))}')
  for name, param in params.items():
    if name not in options:
      if param.default is inspect.Parameter.empty:
        fail(owner, prefix + name, 'is required')
      continue
    check_type(owner, prefix + name, options[name], hints.get(name, Any))
  return dict(options)


def check_type(owner: str, key: str, value: Any, hint: Any) -> None:
  if not _matches(value, hint):
    fail(
        owner,
        key,
        f'must be {_describe(hint)}, got {type(value).__name__} {value!r}')


def _matches(value: Any, hint: Any) -> bool:
  if hint is Any:
    return True
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if origin is Union:
    return any(_matches(value, a) for a in args)
  if origin is Literal:
    return value in args
  if hint is type(None):
    return value is None
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is str:
    return isinstance(value, str)
  if origin in (list, collections.abc.Sequence):
    if not isinstance(value, (list, tuple)):
      return False
    return not args or all(_matches(v, args[0]) for v in value)
  if origin in (dict, collections.abc.Mapping) or hint in (dict, Mapping):
    return isinstance(value, Mapping)
  if isinstance(hint, type):
    return isinstance(value, hint)
  return True


def _describe(hint: Any) -> str:
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if origin is Union:
    return ' or '.join(
        'null' if a is type(None) else _describe(a) for a in args)
  if origin is Literal:
    return 'one of ' + ', '.join(repr(a) for a in args)
  if origin in (list, collections.abc.Sequence):
    return f'a list of {_describe(args[0])}' if args else 'a list'
  if origin in (dict, collections.abc.Mapping) or hint in (dict, Mapping):
    return 'a mapping'
  names = {
      str: 'a string',
      int: 'an integer',
      float: 'a number',
      bool: 'true or false'
  }
  return names.get(hint, getattr(hint, '__name__', str(hint)))


def exactly_one(owner: str, **options: Any) -> str:
  """Returns the name of the one option given; raises if none or several."""
  given = [name for name, value in options.items() if value is not None]
  if len(given) != 1:
    names = ' or '.join(repr(n) for n in options)
    raise ConfigError(
        owner, f'give exactly one of {names}'
        + (f' (got {", ".join(given)})' if given else ''))
  return given[0]


def read_text_file(owner: str, key: str, path: str) -> str:
  """Reads a local or remote (gs://, s3://, ...) file at build time.

  Relative paths are resolved against the current directory, as Beam YAML
  does for its own file options.
  """
  try:
    with FileSystems.open(path) as f:
      return f.read().decode('utf-8')
  except Exception as exn:  # FileSystems raises several types.
    raise ConfigError(
        owner, f'option {key!r}: cannot read {path!r} '
        f'(relative paths are resolved from {os.getcwd()!r}): {exn}'
    ) from None


def error_output_name(owner: str, error_handling: Optional[Mapping]) -> Optional[str]:
  """Returns the error output's name, checking Beam YAML's error_handling."""
  if error_handling is None:
    return None
  if not isinstance(error_handling, Mapping) or not isinstance(
      error_handling.get('output'), str):
    raise ConfigError(
        owner, "option 'error_handling' must be a mapping like "
        f"{{output: my_errors}}, got {error_handling!r}")
  unknown = set(error_handling) - {'output'}
  if unknown:
    fail(owner, f'error_handling.{sorted(unknown)[0]}', 'is unknown; known options: output')
  return error_handling['output']


def load_json_schema(
    owner: str,
    schema: Optional[Mapping],
    schema_file: Optional[str],
    key: str = 'schema') -> dict:
  """The JSON Schema given inline (`key`) or in a file (`key`_file), checked."""
  import json

  import jsonschema
  file_key = f'{key}_file'
  if exactly_one(owner, **{key: schema, file_key: schema_file}) == file_key:
    text = read_text_file(owner, file_key, schema_file)
    try:
      schema = json.loads(text)
    except ValueError as exn:
      fail(owner, file_key, f'{schema_file!r} is not JSON: {exn}')
    key = file_key
  schema = dict(schema)
  try:
    jsonschema.validators.validator_for(schema).check_schema(schema)
  except jsonschema.SchemaError as exn:
    fail(owner, key, f'is not a valid JSON Schema: {exn.message}')
  return schema
