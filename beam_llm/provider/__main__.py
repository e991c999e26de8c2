"""`python -m beam_llm.provider` prints the path of the providers listing
shipped in beam-llm, for `- include: <path>`. The listing provides every
built-in transform and those installed packages add through the
`beam_llm.transforms` entry point; shadowed extension names are reported."""
import sys

from beam_llm import extensions
from beam_llm.cli import quiet
from beam_llm.provider import PROVIDERS_FILE

if extensions.transforms() or extensions.backends():
  quiet.before_beam_starts()  # clashes() imports Beam.
  clashes = extensions.clashes()
else:
  clashes = []
for clash in clashes:
  print(f'warning: the extension {clash} is shadowed by a built-in', file=sys.stderr)
print(PROVIDERS_FILE)
