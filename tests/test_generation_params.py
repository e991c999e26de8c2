"""The same generation options mean the same thing on every backend.

Greedy vs sampling is decided once (beam_llm/generation_params.py); each
backend maps the decision. The remote backends are read from what their
real clients sent to the local server; HuggingFace from the generate()
arguments it builds; KerasNLP from the keras-hub sampler it builds (in a
fresh process, so that this test does not choose the process's Keras
backend for the others).
"""
import json
import os
import subprocess
import sys
import types

import pytest

from beam_llm.generation_params import GenerationParams
from beam_llm.handlers.gemini import GeminiHandler
from beam_llm.handlers.huggingface import HuggingFaceHandler
from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
from beam_llm.handlers.vertex_ai import VertexAIHandler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Options -> their one meaning: None is greedy, else the sampling settings.
CASES = [
    ({}, None),
    ({'temperature': 0}, None),
    ({'temperature': 0, 'top_p': 0.9}, None),  # An explicit 0 is greedy.
    ({'do_sample': False, 'temperature': 0.7}, None),
    ({'top_p': 0.9}, {'temperature': 1.0, 'top_p': 0.9}),
    ({'top_k': 5}, {'temperature': 1.0, 'top_k': 5}),
    ({'temperature': 0.7}, {'temperature': 0.7}),
    ({'do_sample': True}, {'temperature': 1.0}),
    ({'temperature': 0.5, 'top_p': 0.8, 'top_k': 3},
     {'temperature': 0.5, 'top_p': 0.8, 'top_k': 3}),
]


def _sampled(settings: dict):
  """A backend's settings -> the meaning (None for greedy)."""
  if not settings.get('temperature') and not settings.get('do_sample'):
    return None
  return {k: float(v) if k == 'temperature' else v for k, v in settings.items()
          if k in ('temperature', 'top_p', 'top_k') and v is not None}


def _openai(server, options):
  h = OpenAICompatibleHandler(model='m', base_url=server.url + '/v1',
                              generation=options, batching={}, cache=False)
  h.generate(h.load_model(), ['hi'])
  body = server.log[-1].body
  return _sampled(body)


def _gemini(server, options, monkeypatch):
  monkeypatch.setenv('GEMINI_TEST_KEY', 'AIza-local-test-0003')
  h = GeminiHandler(model='g', api_key_env='GEMINI_TEST_KEY', base_url=server.url,
                    api_version='v1beta', generation=options, batching={},
                    cache=False)
  h.generate(h.load_model(), ['hi'])
  config = server.log[-1].body['generationConfig']
  return _sampled({'temperature': config.get('temperature'),
                   'top_p': config.get('topP'), 'top_k': config.get('topK')})


def _vertex(server, options):
  h = VertexAIHandler(endpoint='1234', project='p', api_endpoint=server.url,
                      generation=options, batching={}, cache=False)
  h.generate(h.load_model(), ['hi'])
  return _sampled(server.log[-1].body['parameters'])


def _huggingface(options):
  h = HuggingFaceHandler(model='unused', generation=options, batching={})
  kwargs = h._generate_kwargs(types.SimpleNamespace(pad_token_id=0))  # pylint: disable=protected-access
  assert kwargs['do_sample'] == GenerationParams.of(options).sampling
  return _sampled(kwargs) if kwargs['do_sample'] else None


_KERAS_PROBE = r'''
import json, sys, keras_hub
from beam_llm.handlers.keras_hub_lm import KerasHubHandler
out = []
for options in json.loads(sys.argv[1]):
  s = KerasHubHandler(preset='unused', generation=options, batching={})._make_sampler(keras_hub)
  c = s.get_config()
  greedy = type(s).__name__ == 'GreedySampler'
  out.append(None if greedy else {'temperature': c.get('temperature'),
             'top_p': c.get('p'), 'top_k': c.get('k')})
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def keras_meanings():
  proc = subprocess.run(
      [sys.executable, '-c', _KERAS_PROBE, json.dumps([c for c, _ in CASES])],
      capture_output=True, text=True, cwd=ROOT, timeout=300,
      env={**os.environ, 'KERAS_BACKEND': 'torch', 'PYTHONPATH': ROOT})
  assert proc.returncode == 0, proc.stderr[-3000:]
  found = json.loads(proc.stdout.strip().splitlines()[-1])
  return [None if f is None else _sampled(f) for f in found]


@pytest.mark.parametrize('i', range(len(CASES)))
def test_every_backend_sends_the_same_meaning(llm_server, monkeypatch, keras_meanings, i):
  options, meaning = CASES[i]
  server = llm_server()
  assert GenerationParams.of(options).sampling == (meaning is not None)
  found = {
      'OpenAICompatible': _openai(server, dict(options)),
      'Gemini': _gemini(server, dict(options), monkeypatch),
      'VertexAI': _vertex(server, dict(options)),
      'HuggingFace': _huggingface(dict(options)),
      'KerasNLP': keras_meanings[i],
  }
  assert found == {backend: meaning for backend in found}, options
