"""The providers listing Beam YAML reads to find beam-llm's transforms."""
import os

PROVIDERS_FILE = os.path.join(os.path.dirname(__file__), 'providers.yaml')


def listing(with_extensions: bool = False) -> str:
  """A providers listing (YAML text): the built-in transforms and, with
  `with_extensions`, those installed packages add (beam_llm.extensions)."""
  import beam_llm
  names = dict.fromkeys(beam_llm.TRANSFORMS)
  if with_extensions:
    from beam_llm import extensions
    names.update(dict.fromkeys(extensions.transforms()))
  lines = ['- type: python', '  config: {}', '  transforms:']
  lines += [f'    {name}: beam_llm.{name}' for name in names]
  return '\n'.join(lines) + '\n'
