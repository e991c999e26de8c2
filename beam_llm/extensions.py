"""Backends and transforms from other packages, found through entry points.

A package extends beam-llm without forking it by declaring entry points:

    [options.entry_points]
    beam_llm.backends =
        Keyword = my_pkg.backend:KeywordHandler     # model_handler: {type: Keyword}
    beam_llm.transforms =
        Redact = my_pkg.transforms:Redact           # type: Redact

A backend is then usable in every transform that takes `model_handler`
(GenerateText and the semantic operators), checked at build time like the
built-ins; a transform is importable as `beam_llm.<Name>`, is provided by the
listing shipped in beam-llm (its `beamLlmExtensions` provider, see
`register_provider_type`), and is in the reference
`python -m beam_llm.docgen --extensions` writes. Built-in names win over an
extension's (a clash is reported by `python -m beam_llm.provider`).

The helpers below are the small public surface extension code may use; they
are the ones beam-llm's own transforms use. docs/extending.md walks through
an example package (examples/beam_llm_example).
"""
import functools
import sys
from typing import Any, Dict

BACKENDS_GROUP = 'beam_llm.backends'
TRANSFORMS_GROUP = 'beam_llm.transforms'
# The Beam YAML provider type that provides the installed extension transforms.
PROVIDER_TYPE = 'beamLlmExtensions'


@functools.lru_cache(maxsize=None)
def _found(group: str) -> Dict[str, Any]:
  from importlib import metadata
  return {ep.name: ep for ep in metadata.entry_points(group=group)}


def backends() -> Dict[str, str]:
  """Extension backends: type name -> 'module:attribute'."""
  return {name: ep.value for name, ep in _found(BACKENDS_GROUP).items()}


def transforms() -> Dict[str, str]:
  """Extension transforms: type name -> 'module:attribute'."""
  return {name: ep.value for name, ep in _found(TRANSFORMS_GROUP).items()}


def load_backend(name: str):
  return _found(BACKENDS_GROUP)[name].load()


def load_transform(name: str):
  return _found(TRANSFORMS_GROUP)[name].load()


def register_provider_type() -> None:
  """Teaches Beam YAML the provider type `beamLlmExtensions`, if Beam YAML is
  loaded (nothing to do otherwise, and `import beam_llm` stays cheap).

  Beam YAML reads a providers listing before any Python of ours runs and has
  no entry-point hook, so a static listing cannot name the transforms that
  installed packages add. But it builds the providers of a listing in order,
  and the shipped listing's first provider (`type: python`) imports
  beam_llm's transforms, which calls this. Its second provider,
  `type: beamLlmExtensions`, then resolves to the extension transforms.
  """
  yaml_provider = sys.modules.get('apache_beam.yaml.yaml_provider')
  if yaml_provider is not None:
    yaml_provider.ExternalProvider.register_provider_type(PROVIDER_TYPE)(
        _extensions_provider)


def _extensions_provider(urns):
  """The provider of every installed extension transform that no built-in
  shadows (`urns`, the listing's `transforms`, is empty: they are found)."""
  import beam_llm
  from apache_beam.yaml import yaml_provider
  if urns:
    raise ValueError(f'{PROVIDER_TYPE} finds its transforms through entry '
                     f'points; leave its transforms empty, not {sorted(urns)}')
  return yaml_provider.InlineProvider({
      name: load_transform(name)
      for name in transforms() if name not in beam_llm.TRANSFORMS
  })


# -- the public helpers for extension code -------------------------------


def check_options(owner: str, func, options) -> dict:
  """Checks YAML options against `func`'s signature (unknown keys with a
  did-you-mean hint, missing required keys, wrong types), naming `owner`."""
  from beam_llm import _config
  return _config.check_call_options(owner, func, options)


def config_error(owner: str, key: str, problem: str):
  """Raises the build-time error beam-llm raises: `owner: option 'key' ...`."""
  from beam_llm import _config
  _config.fail(owner, key, problem)


def error_output_name(owner: str, error_handling):
  """The error output's name from Beam YAML's `error_handling`, checked."""
  from beam_llm import _config
  return _config.error_output_name(owner, error_handling)


def split_outputs(pcoll, label, dofn, main_type, error_output, element_type=None):
  """Applies a DoFn that tags bad rows (see `error`) and returns Beam YAML's
  `{good, <error output>}` result, or fails loudly without error_handling."""
  from beam_llm import _rows
  return _rows.split_outputs(pcoll, label, dofn, main_type, error_output,
                             element_type)


def error(row, msg: str, error_type: str):
  """Yield this from a DoFn for a row that failed (an error row)."""
  from beam_llm import _rows
  return _rows.tag_error(_rows.error_row(row, msg, error_type))
