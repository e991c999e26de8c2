"""Remote rows as a flow: bugs that fail the pipeline, a cache that cannot
hurt, budgets, and no batch barrier — through GenerateText and the real
OpenAI client against the local server."""
import json
import time

import pytest

from beam_llm import GenerateText
from beam_llm import handlers
from beam_llm.handlers.base import Generation
from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
from beam_llm.testing.fake_llm_server import Faults
from tests.beam_helpers import run_transform


class MisspeltHandler(OpenAICompatibleHandler):
  """A backend with a bug in its answer handling, as a typo would make."""
  def read_answer(self, response, chat):
    answer = super().read_answer(response, chat)
    return answer.txet  # AttributeError: a bug, not the service's fault.


def handler_config(server, **config):
  return {'model': 'm', 'base_url': server.url + '/v1', **config}


def test_a_bug_in_a_backend_fails_the_pipeline_with_its_traceback(
    llm_server, monkeypatch):
  monkeypatch.setitem(handlers.BACKENDS, 'Misspelt',
                      'tests.test_remote_flow:MisspeltHandler')
  server = llm_server()
  with pytest.raises(Exception, match="has no attribute 'txet'"):
    run_transform(
        GenerateText(model_handler={'type': 'Misspelt',
                                    'config': handler_config(server)},
                     error_handling={'output': 'errors'}),
        [{'prompt': f'p{i}'} for i in range(5)])


def test_a_bug_in_a_local_backend_fails_the_pipeline(monkeypatch):
  from beam_llm.handlers.base import TextGenerationHandler

  class Broken(TextGenerationHandler):
    def generate(self, model, prompts):
      return [p.upper() for p in prompts if p.missing]  # AttributeError.

  h = Broken({}, {})
  with pytest.raises(AttributeError):
    h.run_inference(['a', 'b'], None)

  class FailsEveryRowAlike(TextGenerationHandler):
    def generate(self, model, prompts):
      raise RuntimeError('CUDA error: device-side assert triggered')

  with pytest.raises(RuntimeError, match='device-side'):
    FailsEveryRowAlike({}, {}).run_inference(['a', 'b', 'c'], None)

  class FailsOneRow(TextGenerationHandler):
    def generate(self, model, prompts):
      if 'bad' in prompts:
        raise RuntimeError('this row is too much')
      return [p.upper() for p in prompts]

  results = FailsOneRow({}, {}).run_inference(['a', 'bad', 'c'], None)
  assert [type(r.inference).__name__ for r in results] == [
      'str', 'GenerationFailure', 'str']


def test_sampling_without_a_seed_does_not_reuse_answers(llm_server):
  server = llm_server()
  sampled = OpenAICompatibleHandler(
      generation={'temperature': 0.8}, batching={}, **handler_config(server))
  sampled.generate(sampled.load_model(), ['same', 'same'])
  assert len(server.log) == 2  # Two independent samples.
  seeded = OpenAICompatibleHandler(
      generation={'temperature': 0.8, 'generation_config': {'seed': 3}},
      batching={}, **handler_config(server))
  seeded.generate(seeded.load_model(), ['same', 'same'])
  assert len(server.log) == 3  # A seed makes the answer repeatable: once.
  forced = OpenAICompatibleHandler(
      generation={'temperature': 0.8}, batching={}, cache=True,
      **handler_config(server))
  forced.generate(forced.load_model(), ['same', 'same'])
  assert len(server.log) == 4  # cache: true, as asked.


@pytest.mark.parametrize('content', [
    '{"text": "trunc', '{"text": 5}', '["a list"]', '{"text": "x", "input_tokens": "7"}',
    '\x00\xff garbage', '{}'])
def test_a_corrupt_or_foreign_cache_entry_is_a_miss(llm_server, tmp_path, content):
  server = llm_server()
  config = handler_config(server, cache_dir=str(tmp_path))
  first = OpenAICompatibleHandler(generation={}, batching={}, **config)
  first.generate(first.load_model(), ['a', 'b', 'c'])
  paths = sorted(tmp_path.rglob('*.json'))
  assert len(paths) == 3
  paths[0].write_text(content)  # One entry of three spoilt.
  second = OpenAICompatibleHandler(generation={}, batching={}, **config)
  answers = second.generate(second.load_model(), ['a', 'b', 'c'])
  # Every row still answered: the spoilt entry sent again, the others kept.
  assert [a.text for a in answers] == ['echo: a', 'echo: b', 'echo: c']
  assert len(server.log) == 4
  assert all(isinstance(a, Generation) for a in answers)


def test_requests_per_minute_spreads_requests(llm_server):
  server = llm_server()
  h = OpenAICompatibleHandler(
      generation={}, batching={}, cache=False, requests_per_minute=600,
      **handler_config(server))
  start = time.monotonic()
  h.generate(h.load_model(), [f'p{i}' for i in range(30)])
  elapsed = time.monotonic() - start
  # 10 per second after a second's worth at once: ~2 s for 30.
  assert 1.5 < elapsed < 6, elapsed
  gaps = [b.arrived - a.arrived for a, b in zip(server.log, server.log[20:])]
  assert min(gaps) > 0.9  # Never more than 10 + 10 in any second.


def test_tokens_per_minute_counts_reported_usage(llm_server):
  # Each answer reports 2 prompt + 3 completion tokens: 5 per request.
  server = llm_server(reply=lambda p: 'one two three')
  h = OpenAICompatibleHandler(
      generation={}, batching={}, cache=False, tokens_per_minute=1200,
      max_concurrency=1, **handler_config(server))
  start = time.monotonic()
  answers = h.generate(h.load_model(), [f'p {i}' for i in range(16)])
  elapsed = time.monotonic() - start
  assert all(a.input_tokens == 2 and a.output_tokens == 3 for a in answers)
  # 80 tokens at 20 per second, 20 allowed at once: about 3 s.
  assert 2.0 < elapsed < 8, elapsed


def test_rows_flow_without_waiting_for_the_slowest_of_a_batch(llm_server):
  # One slow answer (1.5 s) among fast ones (10 ms): the others finish
  # long before it; with a batch barrier every later batch would wait.
  server = llm_server(faults=Faults(script=['timeout'], slow_secs=1.5),
                      latency_secs=0.01)
  out, _ = run_transform(
      GenerateText(model_handler={'type': 'OpenAICompatible', 'config':
                                  handler_config(server, max_concurrency=4)},
                   max_batch_size=8),
      [{'id': i, 'prompt': f'p{i}'} for i in range(120)])
  assert len(out['good']) == 120
  [slow] = [r for r in server.log if r.fault == 'timeout']
  # While the slow request was out, the other slots kept serving rows.
  during = [r for r in server.log
            if slow.arrived < r.arrived < slow.arrived + 1.4]
  assert len(during) >= 60, len(during)


def test_policy_options_are_declared_once_and_shared():
  import inspect
  from beam_llm import remote
  names = [f.name for f in __import__('dataclasses').fields(remote.RemotePolicy)]
  from beam_llm.embeddings.openai_compatible import OpenAIEmbedder
  from beam_llm.embeddings.vertex_ai import VertexAIEmbedder
  classes = [handlers.backend_class('GenerateText', b)
             for b in ('OpenAICompatible', 'VertexAI', 'Gemini')]
  # EmbedText's remote backends: the same options, the same defaults.
  for cls in classes + [OpenAIEmbedder, VertexAIEmbedder]:
    params = inspect.signature(cls.__init__).parameters
    for f in __import__('dataclasses').fields(remote.RemotePolicy):
      assert f.name in params, (cls, f.name)
      assert params[f.name].default == f.default, (cls, f.name)
      assert f'    {f.name}:' in cls.__doc__, (cls, f.name)
  with pytest.raises(ValueError, match="'model_handler.config.max_concurrency' must be"):
    handlers.create_handler('GenerateText', {'type': 'Gemini', 'config': {
        'model': 'g', 'max_concurrency': 0}}, {}, {})
  with pytest.raises(ValueError, match="did you mean 'max_retries'"):
    handlers.create_handler('GenerateText', {'type': 'Gemini', 'config': {
        'model': 'g', 'max_retry': 3}}, {}, {})
  json.dumps(remote.policy_doc())
