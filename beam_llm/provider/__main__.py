"""`python -m beam_llm.provider` prints the path of the providers listing
shipped in beam-llm, for `- include: <path>`. The listing provides every
built-in transform and those installed packages add through the
`beam_llm.transforms` entry point; shadowed extension names are reported."""
import sys

from beam_llm import extensions
from beam_llm.cli import quiet
from beam_llm.provider import PROVIDERS_FILE


def clashes() -> list:
  """Extension names that a built-in shadows (those extensions are unused)."""
  quiet.before_beam_starts()  # beam_llm.TRANSFORMS imports Beam.
  import beam_llm
  from beam_llm import handlers
  return sorted(
      [f'backend {n}' for n in extensions.backends() if n in handlers.BACKENDS] +
      [f'transform {n}' for n in extensions.transforms()
       if n in beam_llm.TRANSFORMS])


found = extensions.transforms() or extensions.backends()
for clash in clashes() if found else []:
  print(f'warning: the extension {clash} is shadowed by a built-in', file=sys.stderr)
print(PROVIDERS_FILE)
