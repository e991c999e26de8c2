"""Each remote backend on its real client library against the local server:
what it sends, what it makes of the answer, how it fails at load time."""
import json

import pytest

from beam_llm import GenerateText
from beam_llm._config import ConfigError
from beam_llm.handlers import create_handler
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.gemini import GeminiHandler
from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
from beam_llm.remote import RemoteUnavailable
from beam_llm.handlers.vertex_ai import VertexAIHandler
from beam_llm.testing.fake_llm_server import Faults
from tests.beam_helpers import run_transform

SCHEMA = {'type': 'object', 'properties': {'sentiment': {'type': 'integer'}},
          'required': ['sentiment']}
CHAT = [{'role': 'system', 'content': 'Be brief.'},
        {'role': 'user', 'content': 'Hi there'}]
FAST = dict(max_concurrency=4, timeout_secs=2.0, initial_backoff_secs=0.01,
            max_backoff_secs=0.05, max_retries=2)


def generate(handler, prompts):
  return [r.inference for r in handler.run_inference(prompts, handler.load_model())]


# -- OpenAICompatible ------------------------------------------------------

def test_openai_chat_request_carries_the_generation_parameters(llm_server, monkeypatch):
  monkeypatch.setenv('MY_LLM_KEY', 'sk-local-test-0001')
  server = llm_server()
  h = OpenAICompatibleHandler(
      model='qwen', base_url=server.url + '/v1', api_key_env='MY_LLM_KEY',
      generation={'max_new_tokens': 32, 'top_p': 0.9, 'top_k': 20,
                  'generation_config': {'seed': 7, 'repetition_penalty': 1.1},
                  'response_schema': SCHEMA},
      batching={}, **FAST)
  [text, chat] = generate(h, ['Hi', CHAT])
  assert text == Generation('echo: Hi', 1, 2)
  assert chat.text == 'echo: Be brief.\nHi there'
  first, second = sorted(server.log, key=lambda r: r.prompt != 'Hi')
  assert first.path == '/v1/chat/completions'
  assert first.auth == 'Bearer sk-local-test-0001'
  assert first.body == {
      'model': 'qwen', 'messages': [{'role': 'user', 'content': 'Hi'}],
      'max_tokens': 32, 'temperature': 1.0, 'top_p': 0.9, 'top_k': 20,  # top_p: sampling
      'seed': 7, 'repetition_penalty': 1.1,
      'response_format': {'type': 'json_schema', 'json_schema': {
          'name': 'response', 'schema': SCHEMA}}}
  assert second.body['messages'] == CHAT


def test_openai_completions_api_takes_text_prompts_only(llm_server):
  server = llm_server()
  h = OpenAICompatibleHandler(
      model='m', base_url=server.url + '/v1', api='completions',
      generation={'max_new_tokens': 5, 'temperature': 0.5}, batching={}, **FAST)
  [text, chat] = generate(h, ['Once upon', CHAT])
  assert text.text == 'echo: Once upon'
  assert chat.error_type == 'bad_prompt' and 'api: chat' in chat.msg
  assert [r.path for r in server.log] == ['/v1/completions']
  assert server.log[0].body['temperature'] == 0.5


def test_a_missing_api_key_variable_fails_at_load_naming_it(llm_server, monkeypatch):
  monkeypatch.delenv('NOT_SET_KEY', raising=False)
  h = OpenAICompatibleHandler(model='m', base_url='http://127.0.0.1:9/v1',
                              api_key_env='NOT_SET_KEY', generation={}, batching={})
  with pytest.raises(RemoteUnavailable, match="'NOT_SET_KEY' \\(api_key_env\\) is not set"):
    h.load_model()


def test_usage_fields_on_output_rows(llm_server):
  server = llm_server()
  out, types = run_transform(
      GenerateText(
          model_handler={'type': 'OpenAICompatible', 'config': {
              'model': 'm', 'base_url': server.url + '/v1'}},
          usage_fields=True),
      [{'id': 1, 'prompt': 'one two three'}])
  [row] = out['good']
  assert (row.response, row.input_tokens, row.output_tokens) == (
      'echo: one two three', 3, 4)
  fields = dict(types['good']._fields)
  assert set(fields) == {'id', 'prompt', 'response', 'input_tokens', 'output_tokens'}


# -- VertexAI --------------------------------------------------------------

def vertex(server, **config):
  generation = config.pop('generation', {'max_new_tokens': 16})
  return VertexAIHandler(project='proj', location='europe-west4',
                         api_endpoint=server.url, generation=generation,
                         batching={}, **{'endpoint': '1234', **FAST, **config})


def test_vertex_instance_and_parameters_come_from_templates(llm_server):
  server = llm_server(reply=lambda p: json.dumps({'choices': [{'text': 'ok ' + p}]}))
  server.reply = lambda p: 'ignored'
  h = vertex(
      server,
      instance={'prompt': 'Q: ${prompt}\nA:', 'history': '${messages}',
                'max_tokens': '${max_new_tokens}', 'raw': True},
      parameters={'maxOutputTokens': '${max_new_tokens}', 'topK': '${top_k}',
                  'cost': '$$0'},
      generation={'max_new_tokens': 16, 'generation_config': {'seed': 3}})
  [answer] = generate(h, ['Hi'])
  assert answer == Generation('ignored')
  body = server.log[0].body
  assert server.log[0].path == (
      '/v1/projects/proj/locations/europe-west4/endpoints/1234:predict')
  assert body == {
      'instances': [{'prompt': 'Q: Hi\nA:',
                     'history': [{'role': 'user', 'content': 'Hi'}],
                     'max_tokens': 16, 'raw': True}],
      # top_k is unset, so it is left out; generation_config is added.
      'parameters': {'maxOutputTokens': 16, 'cost': '$0', 'seed': 3}}


def test_vertex_instance_can_use_other_fields_of_the_row(llm_server):
  server = llm_server()
  config = {'endpoint': '1234', 'project': 'p', 'api_endpoint': server.url,
            'instance': {'prompt': '${prompt}', 'image': {'uri': '${row.image_uri}'},
                         'caption': 'Photo ${row.id}: ${prompt}'}}
  out, _ = run_transform(
      GenerateText(model_handler={'type': 'VertexAI', 'config': config}),
      [{'id': 7, 'image_uri': 'gs://b/7.png', 'prompt': 'Describe it'}])
  assert [r.response for r in out['good']] == ['echo: Describe it']
  assert server.log[0].body['instances'] == [{
      'prompt': 'Describe it', 'image': {'uri': 'gs://b/7.png'},
      'caption': 'Photo 7: Describe it'}]
  config['instance'] = {'prompt': '${prompt}', 'image': '${row.picture}'}
  with pytest.raises(ConfigError, match=r"\$\{row.picture\}, but the input has no field 'picture'"):
    run_transform(GenerateText(model_handler={'type': 'VertexAI', 'config': config}),
                  [{'id': 7, 'prompt': 'Describe it'}])


def test_vertex_response_field_and_chat_prompts(llm_server):
  server = llm_server(reply=lambda p: 'unused')
  h = vertex(server, instance={'messages': '${messages}'},
             response_field='0', parameters={})
  # The fake's prediction is a string: a path into it finds nothing.
  [failure] = generate(h, [CHAT])
  assert failure.error_type == 'bad_response' and 'response_field' in failure.msg
  assert server.log[0].body == {'instances': [{'messages': CHAT}]}
  [ok] = generate(vertex(server, instance={'messages': '${messages}'}), [CHAT])
  assert ok.text == 'unused'
  [bad] = generate(vertex(server), [CHAT])  # The default template needs text.
  assert bad.error_type == 'bad_prompt'


def test_vertex_private_endpoint_predicts_on_its_private_uri(llm_server):
  server = llm_server()
  [answer] = generate(vertex(server, endpoint='5678', private=True), ['Hi'])
  assert answer.text == 'echo: Hi'
  assert server.log[0].path == '/private/5678:predict'


@pytest.mark.parametrize('config, message', [
    ({'endpoint': '999'}, "endpoint '999' .* does not exist .*404"),
    ({'endpoint': '4321'}, 'has no deployed model'),
    ({'endpoint': '1234', 'private': True}, 'private: true needs a private endpoint'),
])
def test_vertex_checks_the_endpoint_at_load(llm_server, config, message):
  server = llm_server()
  with pytest.raises(RemoteUnavailable, match=message):
    vertex(server, **config).load_model()


def test_vertex_unreachable_service_fails_at_load():
  h = VertexAIHandler(endpoint='1234', project='p', api_endpoint='http://127.0.0.1:9',
                      deadline_secs=1, generation={}, batching={})
  with pytest.raises(RemoteUnavailable, match='cannot (reach|look up)'):
    h.load_model()


def test_vertex_unknown_template_variable_is_a_config_error():
  with pytest.raises(ConfigError, match=r'instance.*\$\{history\}'):
    VertexAIHandler(endpoint='1', instance={'p': '${history}'},
                    generation={}, batching={})


# -- Gemini ----------------------------------------------------------------

def gemini(server, **config):
  generation = config.pop('generation', {'max_new_tokens': 16})
  config = {'api_version': 'v1beta', **FAST, **config}
  return GeminiHandler(model='gemini-test', api_key_env='GEMINI_TEST_KEY',
                       base_url=server.url, generation=generation, batching={},
                       **config)


def test_gemini_sends_one_request_per_row_and_pairs_each_answer(llm_server, monkeypatch):
  monkeypatch.setenv('GEMINI_TEST_KEY', 'AIza-local-test-0002')
  server = llm_server(latency_secs=0.02)
  prompts = [f'row {i}' for i in range(20)]
  answers = generate(gemini(server), prompts)
  assert [a.text for a in answers] == [f'echo: {p}' for p in prompts]
  assert len(server.log) == 20
  assert {r.path for r in server.log} == {'/v1beta/models/gemini-test:generateContent'}
  assert {r.auth for r in server.log} == {'AIza-local-test-0002'}
  assert answers[0].input_tokens == 2 and answers[0].output_tokens == 3


def test_gemini_request_mapping(llm_server, monkeypatch):
  monkeypatch.setenv('GEMINI_TEST_KEY', 'AIza-local-test-0002')
  server = llm_server()
  h = gemini(server, generation={
      'max_new_tokens': 64, 'top_k': 5, 'response_schema': SCHEMA,
      'generation_config': {'seed': 11}})
  [answer] = generate(h, [CHAT + [{'role': 'assistant', 'content': 'Hello!'},
                                  {'role': 'user', 'content': 'Bye'}]])
  assert isinstance(answer, Generation)
  body = server.log[0].body
  assert body['contents'] == [
      {'role': 'user', 'parts': [{'text': 'Hi there'}]},
      {'role': 'model', 'parts': [{'text': 'Hello!'}]},
      {'role': 'user', 'parts': [{'text': 'Bye'}]}]
  assert body['systemInstruction']['parts'] == [{'text': 'Be brief.'}]
  assert body['generationConfig'] == {
      'maxOutputTokens': 64, 'temperature': 1.0, 'topK': 5, 'seed': 11,
      'responseMimeType': 'application/json', 'responseJsonSchema': SCHEMA}


def test_gemini_honours_retry_info_in_the_error_body(llm_server, monkeypatch):
  monkeypatch.setenv('GEMINI_TEST_KEY', 'AIza-local-test-0002')
  server = llm_server(faults=Faults(script=['429'], retry_after='info:0.5'))
  h = gemini(server)
  [answer] = generate(h, ['Hi'])
  assert answer.text == 'echo: Hi'
  assert server.log[1].arrived - server.log[0].arrived >= 0.5


def test_gemini_bad_generation_config_fails_at_load(llm_server, monkeypatch):
  monkeypatch.setenv('GEMINI_TEST_KEY', 'AIza-local-test-0002')
  server = llm_server()
  h = gemini(server, generation={'generation_config': {'no_such_field': 1}})
  with pytest.raises(RemoteUnavailable, match='no_such_field'):
    h.load_model()


# -- config ----------------------------------------------------------------

@pytest.mark.parametrize('backend, config, message', [
    ('OpenAICompatible', {'model': 'm', 'base_url': 'u', 'max_concurrency': 0},
     "'model_handler.config.max_concurrency' must be at least 1"),
    ('OpenAICompatible', {'model': 'm', 'base_url': 'u', 'api_key': 'sk-x'},
     "'model_handler.config.api_key' is unknown"),
    ('OpenAICompatible', {'model': 'm'}, "'model_handler.config.base_url' is required"),
    ('Gemini', {'model': 'g', 'timeout_secs': 0}, 'timeout_secs'),
    ('VertexAI', {'endpoint': '1', 'max_retries': -1}, 'max_retries'),
])
def test_remote_config_errors(backend, config, message):
  with pytest.raises(ConfigError, match=message):
    create_handler('GenerateText', {'type': backend, 'config': config}, {}, {})


def test_large_model_makes_no_sense_for_a_remote_backend():
  with pytest.raises(ConfigError, match="'large_model' is for models on the worker"):
    create_handler('GenerateText', {'type': 'OpenAICompatible', 'config': {
        'model': 'm', 'base_url': 'u'}}, {}, {'large_model': True})


@pytest.mark.parametrize('backend', ['openai', 'vertex', 'gemini'])
def test_an_answer_without_text_is_a_bad_response_retried(
    llm_server, monkeypatch, backend):
  monkeypatch.setenv('GEMINI_TEST_KEY', 'AIza-local-test-0002')
  server = llm_server(faults=Faults(script=['empty'] * 3))
  h = {'openai': lambda: OpenAICompatibleHandler(
           model='m', base_url=server.url + '/v1', generation={}, batching={},
           **FAST),
       'vertex': lambda: vertex(server),
       'gemini': lambda: gemini(server)}[backend]()
  [failure] = generate(h, ['Hi'])
  assert isinstance(failure, GenerationFailure)
  assert failure.error_type == 'bad_response'
  assert len(server.log) == 3  # FAST: max_retries=2.
  server.faults.script = ['empty', 'malformed']  # Then an answer.
  [answer] = generate(h, ['Hi again'])
  assert answer.text == 'echo: Hi again'
  assert len(server.log) == 6


def test_gemini_through_vertex_ai(llm_server):
  server = llm_server()
  h = GeminiHandler(model='gemini-2.5-flash', vertexai=True, project='proj',
                    location='europe-west4', base_url=server.url,
                    generation={'max_new_tokens': 8}, batching={}, **FAST)
  [answer] = generate(h, ['Hi'])
  assert answer == Generation('echo: Hi', 1, 2)
  assert server.log[0].path == ('/v1beta1/projects/proj/locations/europe-west4/'
                                'publishers/google/models/gemini-2.5-flash:generateContent')
  assert server.log[0].body['generationConfig']['maxOutputTokens'] == 8
