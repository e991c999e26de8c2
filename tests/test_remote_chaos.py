"""Whole pipelines (GenerateText on the FnApiRunner) against a local server
that misbehaves: no row lost or duplicated, metrics that add up, and API
keys that never leak."""
import logging

import pytest

from beam_llm import GenerateText
from beam_llm.testing.fake_llm_server import Faults
from tests.beam_helpers import run_transform

KEY_ENV = 'BEAM_LLM_TEST_API_KEY'
SECRET = 'sk-beamllm-DO-NOT-LEAK-7f3a9c2e5b1d'


def model_handler(backend, server, **policy):
  config = {
      'OpenAICompatible': {'model': 'm', 'base_url': server.url + '/v1',
                           'api_key_env': KEY_ENV},
      'VertexAI': {'endpoint': '1234', 'project': 'p', 'api_endpoint': server.url},
      'Gemini': {'model': 'g', 'api_key_env': KEY_ENV, 'base_url': server.url,
                 'api_version': 'v1beta'},
  }[backend]
  return {'type': backend, 'config': {**config, **policy}}


@pytest.mark.parametrize('backend', ['OpenAICompatible', 'VertexAI', 'Gemini'])
def test_1000_prompts_through_chaos_each_come_out_exactly_once(
    llm_server, monkeypatch, backend):
  monkeypatch.setenv(KEY_ENV, SECRET)
  server = llm_server(faults=Faults(
      rate_limited=0.30, server_error=0.10, timeout=0.05, malformed=0.02,
      slow_secs=1.2))
  rows = [{'id': i, 'prompt': f'prompt number {i}'} for i in range(1000)]
  out, _, metrics = run_transform(
      GenerateText(
          model_handler=model_handler(
              backend, server, max_concurrency=64, timeout_secs=0.75,
              max_retries=8, initial_backoff_secs=0.01, max_backoff_secs=0.1,
              deadline_secs=60),
          max_new_tokens=16, error_handling={'output': 'errors'}),
      rows, metrics=True)
  good, errors = out['good'], out['errors']
  ids = [r.id for r in good] + [e.element.id for e in errors]
  assert sorted(ids) == list(range(1000))  # Exactly once: none lost, none twice.
  assert all(r.response == f'echo: {r.prompt}' for r in good)  # Its own answer.
  types = {e.error_type for e in errors}
  assert types <= {'bad_response', 'rate_limited', 'server_error', 'timeout'}
  # Malformed answers are not retried (a few may land after the client gave
  # up waiting, as timeouts, under load).
  malformed = sum(r.fault == 'malformed' for r in server.log)
  assert 0 < sum(e.error_type == 'bad_response' for e in errors) <= malformed
  # The metrics agree with what the server saw. (A 429 can reach a client
  # that already gave up on it: on a loaded 2-core machine a fast answer can
  # come later than timeout_secs; the client then counts a timeout.)
  assert metrics['requests'] == len(server.log)
  assert metrics['retries'] == len(server.log) - 1000
  sent_429 = sum(r.status == 429 for r in server.log)
  assert 0.9 * sent_429 <= metrics['responses_429'] <= sent_429
  assert metrics['request_latency_msecs'].count == len(server.log)
  assert metrics['throttled_msecs'] > 0
  assert metrics['rows'] == 1000 and metrics['failed_rows'] == len(errors)
  if backend != 'VertexAI':  # Predict answers carry no token usage.
    assert metrics['input_tokens'] == sum(len(r.prompt.split()) for r in good)
    assert metrics['output_tokens'] == sum(len(r.response.split()) for r in good)


@pytest.mark.parametrize('backend', ['OpenAICompatible', 'Gemini'])
def test_api_keys_never_reach_error_rows_logs_or_metrics(
    llm_server, monkeypatch, caplog, backend):
  monkeypatch.setenv(KEY_ENV, SECRET)
  caplog.set_level(logging.DEBUG)
  # A server that echoes the request's auth headers in its error bodies, as
  # a misconfigured proxy might: client exceptions then carry the key.
  server = llm_server(faults=Faults(
      script=['401', '403', '500', '500', '429', '429'], server_error=0.3,
      leak_auth_in_errors=True))
  rows = [{'id': i, 'prompt': f'p{i}'} for i in range(20)]
  out, _, metrics = run_transform(
      GenerateText(
          model_handler=model_handler(
              backend, server, max_concurrency=1, max_retries=1,
              initial_backoff_secs=0.01, max_backoff_secs=0.01),
          error_handling={'output': 'errors'}),
      rows, metrics=True)
  assert any(SECRET in r.auth for r in server.log)  # The key was really sent,
  assert any('[REDACTED]' in e.msg for e in out['errors'])  # and leaked back.
  assert len(out['good']) + len(out['errors']) == 20
  for text, where in ((repr(out), 'output or error rows'),
                      (caplog.text, 'logs'), (repr(metrics), 'metrics')):
    assert SECRET not in text, f'the API key leaked into {where}'
    assert SECRET[8:20] not in text, f'part of the API key leaked into {where}'
