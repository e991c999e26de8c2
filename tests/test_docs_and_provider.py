import os
import subprocess
import sys

import pytest
import yaml

import beam_llm
from beam_llm import docgen
from beam_llm import embeddings
from beam_llm import handlers
from beam_llm.provider import PROVIDERS_FILE
from tests.conftest import ROOT

DOCUMENTED = [getattr(beam_llm, n) for n in sorted(beam_llm.TRANSFORMS)] + [
    handlers.backend_class('test', n) for n in sorted(handlers.BACKENDS)] + [
    embeddings.backend_class('test', n) for n in sorted(embeddings.BACKENDS)]


@pytest.mark.parametrize('cls', DOCUMENTED, ids=lambda c: c.__name__)
def test_every_option_is_documented(cls):
  undocumented = [name for name, _, _, desc in docgen.options(cls) if not desc]
  assert undocumented == []


def test_reference_doc_is_up_to_date():
  with open(os.path.join(ROOT, 'docs', 'transforms.md')) as f:
    assert f.read() == docgen.reference(), (
        'run: python -m beam_llm.docgen > docs/transforms.md')


def test_providers_listing_names_every_transform():
  with open(PROVIDERS_FILE) as f:
    [provider, extension_provider] = yaml.safe_load(f)
  assert provider['transforms'] == {n: f'beam_llm.{n}' for n in beam_llm.TRANSFORMS}
  # Extension transforms: found through entry points (tests/test_extensions.py).
  assert extension_provider == {'type': 'beamLlmExtensions', 'config': {}, 'transforms': {}}


def test_import_is_cheap():
  # Heavy libraries load only when a pipeline uses a backend.
  code = ('import sys, beam_llm; '
          'print(sorted(m for m in ("torch", "transformers", "tensorflow", "keras", '
          '"jinja2", "apache_beam") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
  assert out.stdout.strip() == '[]'
