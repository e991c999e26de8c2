"""`batch_api: true` on the Gemini backend: what is the Gemini Developer
API's own in its Batch Mode, on the real `google-genai` client against the
fake of beam_llm/testing/fake_gemini_batch_api.py (resumable uploads,
:batchGenerateContent, batch operations, result files): its result lines
judged as synchronous answers, its lines carrying exactly the synchronous
request, its file limits. The scenarios every provider shares (follow-ups,
error rows, resume, crashes, outages, file cleanup) run on it in
tests/test_batch_api_scenarios.py and test_batch_api_cleanup.py; Vertex
AI's batch jobs: tests/test_vertex_batch_api.py."""
import functools
import json

import pytest

from beam_llm.handlers.base import Generation
from tests import batch_providers

SCHEMA = {'type': 'object', 'properties': {'n': {'type': 'integer'}},
          'required': ['n']}
GEMINI = batch_providers.PROVIDERS['gemini']
run = functools.partial(batch_providers.run, GEMINI)


@pytest.fixture(autouse=True)
def gemini_key(monkeypatch):
  batch_providers.set_keys(monkeypatch)


def test_result_lines_are_judged_as_synchronous_answers_are():
  from beam_llm.batch_api import gemini_batches
  from beam_llm.handlers.gemini import GeminiHandler
  handler = GeminiHandler(model='g', generation={}, batching={})
  ok = {'candidates': [{'content': {'role': 'model', 'parts': [
      {'text': 'thinking...', 'thought': True}, {'text': ' hi '}]},
      'finishReason': 'STOP'}],
        'usageMetadata': {'promptTokenCount': 3, 'candidatesTokenCount': 1}}
  text = '\n'.join(json.dumps(l) for l in [
      {'key': 'a', 'response': ok},
      {'key': 'b', 'error': {'code': 13, 'message': 'Internal error.'}},
      {'key': 'c', 'error': {'code': 3, 'message': 'bad field'}},
      {'key': 'd', 'error': {'code': 8, 'message': 'quota'}},
      {'key': 'e', 'response': {'promptFeedback': {'blockReason': 'SAFETY'}}},
      {'key': 'f', 'error': {'code': 503, 'message': 'unavailable'}},
      {'key': 'g', 'response': {'candidates': [{'content': {'parts': []},
                                                'finishReason': 'MAX_TOKENS'}]}},
      {'response': ok},  # No key: skipped.
  ]) + '\nnot json\n'
  v = gemini_batches.read_results([text], handler.read_rest_answer)
  # The same answer the synchronous parser gives: thoughts left out, usage.
  assert v['a'].value == Generation('hi', 3, 1) and not v['a'].retry
  assert v['b'].retry and v['b'].failure.error_type == 'server_error'
  assert not v['c'].retry and v['c'].failure.error_type == 'client_error'
  assert 'bad field' in v['c'].failure.msg
  assert v['d'].retry and v['d'].failure.error_type == 'rate_limited'
  assert v['e'].retry and 'SAFETY' in v['e'].failure.msg
  assert v['f'].retry and v['f'].failure.status == 503
  assert v['g'].retry and 'MAX_TOKENS' in v['g'].failure.msg
  assert set(v) == set('abcdefg')  # A line missing here counts as unrun.


def test_the_same_rows_as_synchronous_mode_and_the_same_requests(llm_server):
  server = llm_server()
  sent_sync = batch_providers.same_rows_as_synchronous(
      GEMINI, server, {'batch_api': False}, usage_fields=True,
      response_schema=SCHEMA, max_new_tokens=64)
  # One line per distinct request, in one batch for the model; each line's
  # request is what the synchronous call sent for that prompt.
  [batch] = server.gemini_batch_api.batch_list()
  assert batch['total'] == 20 and batch['state'] == 'BATCH_STATE_SUCCEEDED'
  lines = server.gemini_batch_api.sent_lines()
  for line in lines:
    prompt = line['request']['contents'][0]['parts'][0]['text']
    assert line['request'] == sent_sync[prompt]
  assert lines[0]['request']['generationConfig']['responseJsonSchema'] == SCHEMA
  assert len({line['key'] for line in lines}) == 20


def test_a_chat_line_carries_what_the_synchronous_request_sends(llm_server):
  # System instruction, model turns, sampling and GenerateContentConfig
  # fields from generation_config: the line's request is the body the
  # synchronous call posts (google-genai's conversion, not ours).
  from beam_llm.handlers.gemini import GeminiHandler
  server = llm_server()
  handler = GeminiHandler(
      model='gemini-test', base_url=server.url, api_version='v1beta',
      api_key_env='GEMINI_BATCH_TEST_KEY', batch_api=True, batching={},
      generation={'max_new_tokens': 32, 'temperature': 0.7, 'top_k': 5,
                  'generation_config': {
                      'seed': 11, 'stop_sequences': ['END'],
                      'thinking_config': {'thinking_budget': 0}}})
  chat = [{'role': 'system', 'content': 'Be brief.'},
          {'role': 'user', 'content': 'Hi'},
          {'role': 'assistant', 'content': 'Hello!'},
          {'role': 'user', 'content': 'Bye'}]
  [result] = handler.run_inference([chat], handler.load_model())
  assert result.inference.text.startswith('echo:')
  model, body = handler.batch_line(handler.build_request(chat))
  assert model == 'models/gemini-test'
  assert body == server.log[0].body
  assert body['systemInstruction']['parts'] == [{'text': 'Be brief.'}]
  config = body['generationConfig']
  assert config['seed'] == 11 and config['stopSequences'] == ['END']
  assert config['topK'] == 5 and config['thinkingConfig']
  assert json.loads(handler.batch_provider.encode('k', model, body)) == {
      'key': 'k', 'request': body}


def test_gemini_file_limits_are_its_own():
  from beam_llm.handlers.gemini import GeminiHandler
  from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
  gemini = GeminiHandler(model='g', batch_api=True, generation={}, batching={})
  openai = OpenAICompatibleHandler(model='m', base_url='http://x/v1',
                                   batch_api=True, generation={}, batching={})
  assert gemini.batch.batch_max_bytes == 2_000_000_000
  assert openai.batch.batch_max_bytes == 200_000_000
  assert GeminiHandler(model='g', batch_api=True, batch_max_bytes=10,
                       generation={}, batching={}).batch.batch_max_bytes == 10
