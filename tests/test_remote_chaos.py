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


# The faulty server of the issue: 2 % bodies cut off, 2 % dropped
# connections, 10 % 5xx, 429s with a Retry-After, and slow answers.
CHAOS = dict(rate_limited=0.10, server_error=0.10, drop=0.02, malformed=0.02,
             timeout=0.02, slow_secs=0.3, retry_after=0.05)


@pytest.mark.parametrize('backend, policy, n', [
    ('OpenAICompatible', {}, 1000),  # Default options.
    ('OpenAICompatible', {'max_concurrency': 64}, 1000),
    ('VertexAI', {'initial_backoff_secs': 0.05}, 300),
    ('Gemini', {'initial_backoff_secs': 0.05}, 300),
])
def test_prompts_through_chaos_each_come_out_exactly_once(
    llm_server, monkeypatch, backend, policy, n):
  monkeypatch.setenv(KEY_ENV, SECRET)
  server = llm_server(faults=Faults(**CHAOS), latency_secs=0.01)
  rows = [{'id': i, 'prompt': f'prompt number {i}'} for i in range(n)]
  out, _, metrics = run_transform(
      GenerateText(
          model_handler=model_handler(backend, server, **policy),
          max_new_tokens=16, error_handling={'output': 'errors'}),
      rows, metrics=True)
  good, errors = out['good'], out['errors']
  ids = [r.id for r in good] + [e.element.id for e in errors]
  assert sorted(ids) == list(range(n))  # Exactly once: none lost, none twice.
  assert all(r.response == f'echo: {r.prompt}' for r in good)  # Its own answer.
  # Every fault here is transient: at most 1 % given up.
  print(f'{len(errors)} of {n} rows given up')
  assert len(errors) <= n // 100, [e.msg for e in errors[:3]]
  assert {e.error_type for e in errors} <= {
      'bad_response', 'rate_limited', 'server_error', 'connection_error'}
  # Retry-After was kept: few requests arrived inside the 50 ms a 429 asked
  # for, past 30 ms after it left (requests already on the wire then, or
  # sent before a loaded client read the 429, still land: typically 0-1 %
  # with the async OpenAI client, 10-13 % with Gemini's threaded one on a
  # quiet machine, where a 429 is read on one of many threads contending
  # for the GIL; more under a loaded CI). The exact check is in
  # test_remote_policy.py, with longer windows.
  windows = server.retry_after_windows
  assert windows
  early = {id(r) for r in server.log for sent, until in windows
           if sent + 0.03 < r.arrived < until}
  print(f'{len(early)} of {len(server.log)} requests inside a Retry-After window')
  assert len(early) <= 0.25 * len(server.log)
  # The metrics agree with what the server saw.
  assert metrics['requests'] == len(server.log)
  assert metrics['retries'] == len(server.log) - n
  assert metrics['responses_429'] == sum(r.status == 429 for r in server.log)
  assert metrics['request_latency_msecs'].count == len(server.log)
  assert metrics['rows'] == n and metrics['failed_rows'] == len(errors)
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
      script=['401', '403', '500', 'ok', '429', 'ok'],
      leak_auth_in_errors=True))
  rows = [{'id': i, 'prompt': f'p{i}'} for i in range(20)]
  generate = lambda: GenerateText(
      model_handler=model_handler(
          backend, server, max_concurrency=1, max_retries=1,
          initial_backoff_secs=0.01, max_backoff_secs=0.01),
      error_handling={'output': 'errors'})
  out, _, metrics = run_transform(generate(), rows, metrics=True)
  assert any(SECRET in r.auth for r in server.log)  # The key was really sent,
  assert any('[REDACTED]' in e.msg for e in out['errors'])  # and leaked back.
  assert len(out['good']) + len(out['errors']) == 20
  # And when the service stays down, the error that fails the run.
  server.faults = Faults(rate_limited=1.0, leak_auth_in_errors=True)
  with pytest.raises(Exception, match='kept failing') as outage:
    run_transform(generate(), rows)
  for text, where in ((repr(out), 'output or error rows'),
                      (caplog.text, 'logs'), (repr(metrics), 'metrics'),
                      (str(outage.value), 'the error that failed the run')):
    assert SECRET not in text, f'the API key leaked into {where}'
    assert SECRET[8:20] not in text, f'part of the API key leaked into {where}'
