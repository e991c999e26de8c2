"""`python -m beam_llm.provider` prints the providers file, for `include:`.

`python -m beam_llm.provider --extensions > providers.yaml` writes a listing
of every transform, the built-ins and those installed packages add through
the `beam_llm.transforms` entry point, for `- include: providers.yaml`.
"""
import argparse
import sys

from beam_llm.provider import PROVIDERS_FILE, listing

parser = argparse.ArgumentParser(prog='python -m beam_llm.provider')
parser.add_argument(
    '--extensions', action='store_true',
    help='print a listing with the installed extension transforms too')
args = parser.parse_args()
if args.extensions:
  from beam_llm import extensions
  for clash in extensions.clashes():
    print(f'warning: the extension {clash} is shadowed by a built-in',
          file=sys.stderr)
  print(listing(with_extensions=True), end='')
else:
  print(PROVIDERS_FILE)
