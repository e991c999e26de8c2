"""Structured output in the form each server takes: found once per worker
process by falling back after a refusal, remembered, never retried as if
the refusal were transient. The fake server plays each server's behaviour
(beam_llm.testing.fake_llm_server.STRUCTURED)."""
import json

import pytest

from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
from beam_llm.testing.fake_llm_server import sentiment_reply
from tests.conftest import read_json_lines
from tests.conftest import run_yaml

SCHEMA = {'type': 'object', 'properties': {'sentiment': {'type': 'integer'}},
          'required': ['sentiment']}


def handler(server, **config):
  return OpenAICompatibleHandler(
      model='m', base_url=server.url + '/v1', batching={},
      generation={'max_new_tokens': 64, 'response_schema': SCHEMA},
      **{'max_concurrency': 1, 'initial_backoff_secs': 0.01, **config})


@pytest.mark.parametrize('server_kind, form, refusals', [
    ('openai', 'json_schema', 0),
    ('vllm', 'json_schema', 0),
    ('llama-cpp-python', 'json_object', 1),  # Its HTTP 500 validation error.
    ('text-only', 'none', 4),
])
def test_the_form_a_server_takes_is_found_once_and_kept(
    llm_server, server_kind, form, refusals):
  server = llm_server(structured=server_kind)
  h = handler(server)
  loaded = h.load_model()
  answers = h.generate(loaded, [f'chat {i}' for i in range(5)])
  assert all(isinstance(a, Generation) for a in answers), answers
  assert [r.form for r in server.log if r.status == 200] == [form] * 5
  assert sum(r.fault == 'refused' for r in server.log) == refusals
  assert h.stats['retries'] == 0  # A refusal is not retried as transient.
  # Remembered: later rows go straight to the form that works.
  h.generate(loaded, ['one more'])
  assert server.log[-1].form == form and server.log[-1].status == 200


def test_concurrent_first_requests_wait_for_one_probe_of_the_form(llm_server):
  # Against the real llama-cpp-python server, 12 rows sent at once all went
  # out as json_schema first (12 refusals); one probe settles it.
  server = llm_server(structured='llama-cpp-python', latency_secs=0.05)
  h = handler(server, max_concurrency=8)
  answers = h.generate(h.load_model(), [f'chat {i}' for i in range(8)])
  assert all(isinstance(a, Generation) for a in answers), answers
  assert sum(r.fault == 'refused' for r in server.log) == 1
  assert [r.form for r in server.log if r.status == 200] == ['json_object'] * 8
  assert server.max_in_flight > 1  # Concurrent again once the form is known.


def test_a_form_chosen_explicitly_and_refused_fails_its_rows_at_once(llm_server):
  server = llm_server(structured='llama-cpp-python')
  h = handler(server, structured_output='json_schema')
  [failure] = h.generate(h.load_model(), ['chat'])
  assert isinstance(failure, GenerationFailure)
  assert failure.error_type == 'client_error'
  assert "Input should be 'text' or 'json_object'" in failure.msg
  assert len(server.log) == 1  # Deterministic: sent once, not 6 times.


def test_explicit_forms_are_sent_as_the_server_expects(llm_server):
  server = llm_server(structured='vllm')
  for chosen in ('json_schema', 'json_object', 'structured_outputs',
                 'guided_json', 'none'):
    h = handler(server, structured_output=chosen)
    h.generate(h.load_model(), [f'as {chosen}'])
    body = server.log[-1].body
    assert server.log[-1].form == chosen
    if chosen == 'json_object':
      assert body['response_format'] == {'type': 'json_object', 'schema': SCHEMA}
    if chosen == 'structured_outputs':
      assert body['structured_outputs'] == {'json': SCHEMA}
    if chosen == 'guided_json':
      assert body['guided_json'] == SCHEMA


def test_remote_pipeline_gives_typed_rows_against_a_llama_cpp_python_server(
    llm_server, tmp_path, chats):
  server = llm_server(reply=sentiment_reply, structured='llama-cpp-python')
  result = run_yaml('pipelines/chat_sentiment_remote.yaml', jinja_variables={
      'base_url': server.url + '/v1', 'output': str(tmp_path / 'out')})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_json_lines(str(tmp_path / 'out'))
  assert len(rows) == len(chats)
  assert all(r['sentiment'] == 0 and isinstance(r['summary'], str) for r in rows)
  assert read_json_lines(str(tmp_path / 'out-errors')) == []
  answered = [r for r in server.log if r.status == 200]
  assert {r.form for r in answered} == {'json_object'}
  # Only requests already in flight when the first refusal came back were
  # refused; none of them retried as transient.
  refused = [r for r in server.log if r.fault == 'refused']
  assert 1 <= len(refused) <= 32
  assert len(answered) == len(chats)
  json.dumps([r.body for r in refused])
