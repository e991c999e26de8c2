"""Lineage (`lineage: true`): each row says which run, model, template and
schema produced it, through the user path (tiny HF model, the OpenAI client
against the local server, ParseJSON, and a YAML pipeline)."""
import hashlib
import json
import os

import pytest

from beam_llm import GenerateText
from beam_llm import ParseJSON
from beam_llm import RenderPrompt
from beam_llm import lineage
from beam_llm._config import ConfigError
from tests.beam_helpers import run_transform
from tests.conftest import ROOT, read_json_lines, run_yaml

SCHEMA = {'type': 'object',
          'properties': {'sentiment': {'type': 'integer'},
                         'summary': {'type': 'string'}},
          'required': ['sentiment', 'summary']}
TEMPLATE = 'Chat: {{ history }}'
ROWS = [{'chat_id': i, 'history': f'chat number {i}'} for i in range(4)]


def sha12(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]


def canonical(value) -> str:
  return json.dumps(value, sort_keys=True, separators=(',', ':'),
                    ensure_ascii=False)


def test_hashes_are_sha256_of_the_source_first_12_hex():
  assert lineage.text_hash(TEMPLATE) == sha12(TEMPLATE)
  assert lineage.json_hash(SCHEMA) == sha12(canonical(SCHEMA))
  # Key order does not change a schema's hash.
  assert lineage.json_hash(dict(reversed(list(SCHEMA.items())))) == \
      lineage.json_hash(SCHEMA)


def test_endpoints_lose_user_info_and_query():
  assert lineage.safe_endpoint(
      'https://user:sk-secret@api.example.com:8443/v1?key=sk-secret#x') == \
      'https://api.example.com:8443/v1'
  assert lineage.safe_endpoint('http://127.0.0.1:8000/v1') == \
      'http://127.0.0.1:8000/v1'
  assert lineage.safe_endpoint(None) is None


def test_local_model_lineage_on_every_row(tiny_causal_lm, monkeypatch):
  monkeypatch.delenv(lineage.RUN_ID_ENV, raising=False)
  messages = [{'role': 'system', 'content': 'Answer in JSON.'},
              {'role': 'user', 'content': TEMPLATE}]
  out, types = run_transform(
      RenderPrompt(messages=messages, lineage=True)
      | GenerateText(
          model_handler={'type': 'HuggingFace', 'config': {
              'model': tiny_causal_lm}},
          max_new_tokens=4, max_batch_size=2, lineage=True,
          response_schema=SCHEMA),
      ROWS)
  rows = out['good']
  assert sorted(r.chat_id for r in rows) == [0, 1, 2, 3]
  template_hash = sha12(canonical(messages))  # role + content, in order
  run_ids = {r.lineage.run_id for r in rows}
  assert len(run_ids) == 1 and len(run_ids.pop()) == 12
  for r in rows:
    assert r.lineage._asdict() == {
        'run_id': rows[0].lineage.run_id, 'template_hash': template_hash,
        'backend': 'HuggingFace', 'model': tiny_causal_lm, 'revision': None,
        'endpoint': None, 'response_schema_hash': sha12(canonical(SCHEMA)),
        'schema_hash': None}
  assert dict(types['good']._fields)['lineage'] == lineage.LINEAGE


def test_remote_model_lineage_through_all_three_transforms(
    llm_server, monkeypatch):
  monkeypatch.delenv(lineage.RUN_ID_ENV, raising=False)
  monkeypatch.setenv('MY_LLM_KEY', 'sk-never-in-lineage-0001')
  server = llm_server(
      reply=lambda prompt: json.dumps({'sentiment': 1, 'summary': prompt}))
  out, _ = run_transform(
      RenderPrompt(template=TEMPLATE, lineage=True)
      | GenerateText(
          model_handler={'type': 'OpenAICompatible', 'config': {
              'model': 'qwen', 'base_url': server.url + '/v1',
              'api_key_env': 'MY_LLM_KEY'}},
          lineage=True)
      | ParseJSON(field='response', schema=SCHEMA, lineage=True,
                  error_handling={'output': 'invalid'}),
      ROWS)
  assert out['invalid'] == []
  rows = out['good']
  assert sorted((r.chat_id, r.sentiment) for r in rows) == [
      (i, 1) for i in range(4)]
  [run_id] = {r.lineage.run_id for r in rows}  # One run id for all.
  for r in rows:
    assert r.lineage._asdict() == {
        'run_id': run_id, 'template_hash': sha12(TEMPLATE),
        'backend': 'OpenAICompatible', 'model': 'qwen', 'revision': None,
        'endpoint': server.url + '/v1', 'response_schema_hash': None,
        'schema_hash': sha12(canonical(SCHEMA))}
    assert 'sk-never' not in repr(r)
  assert server.log[0].auth == 'Bearer sk-never-in-lineage-0001'


def test_each_pipeline_gets_its_own_run_id_unless_the_env_sets_one(
    monkeypatch):
  monkeypatch.delenv(lineage.RUN_ID_ENV, raising=False)
  row = {'text': '{"sentiment": 0, "summary": "s"}'}
  ids = [run_transform(ParseJSON(field='text', schema=SCHEMA, lineage=True),
                       [row])[0]['good'][0].lineage.run_id for _ in range(2)]
  assert ids[0] != ids[1]
  monkeypatch.setenv(lineage.RUN_ID_ENV, 'nightly-2026-11-26')
  [good] = run_transform(
      ParseJSON(field='text', schema=SCHEMA, lineage=True), [row])[0]['good']
  assert good.lineage.run_id == 'nightly-2026-11-26'
  assert good.lineage.schema_hash == sha12(canonical(SCHEMA))
  assert good.lineage.template_hash is None and good.lineage.model is None


def test_off_by_default_adds_nothing(llm_server):
  server = llm_server()
  out, types = run_transform(
      RenderPrompt(template=TEMPLATE)
      | GenerateText(model_handler={'type': 'OpenAICompatible', 'config': {
          'model': 'm', 'base_url': server.url + '/v1'}}),
      ROWS)
  fields = [name for name, _ in types['good']._fields]
  assert fields == ['chat_id', 'history', 'prompt', 'response']
  assert all('lineage' not in r._asdict() for r in out['good'])
  out, types = run_transform(
      ParseJSON(field='text', schema=SCHEMA),
      [{'text': '{"sentiment": 0, "summary": "s"}'}])
  assert 'lineage' not in out['good'][0]._asdict()


def test_lineage_option_is_checked_at_build_time():
  with pytest.raises(ConfigError, match='ParseJSON.*lineage'):
    ParseJSON(field='text', schema=SCHEMA, lineage='yes')
  with pytest.raises(ConfigError, match='RenderPrompt.*lineage'):
    RenderPrompt(template=TEMPLATE, lineage=1)
  with pytest.raises(ConfigError, match='GenerateText.*lineage'):
    GenerateText(model_handler={'type': 'OpenAICompatible', 'config': {
        'model': 'm', 'base_url': 'http://127.0.0.1:1/v1'}}, lineage='on')


def test_yaml_pipeline_writes_lineage_as_an_object(llm_server, tmp_path):
  server = llm_server(
      reply=lambda prompt: '{"sentiment": -1, "summary": "late fries"}')
  out = str(tmp_path / 'out')
  result = run_yaml(
      'tests/pipelines/lineage.yaml',
      jinja_variables={'base_url': server.url + '/v1', 'output': out},
      env={lineage.RUN_ID_ENV: 'run-42', 'LINEAGE_TEST_KEY': 'sk-yaml-0002'})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_json_lines(out)
  with open(os.path.join(ROOT, 'pipelines/data/chats.jsonl')) as f:
    assert len(rows) == sum(1 for line in f if line.strip())
  with open(os.path.join(ROOT, 'pipelines/prompts/chat_sentiment.j2')) as f:
    template_hash = sha12(f.read())
  with open(os.path.join(ROOT, 'schemas/sentiment_summary.json')) as f:
    schema_hash = sha12(canonical(json.load(f)))
  for r in rows:
    assert r['sentiment'] == -1
    assert r['lineage'] == {
        'run_id': 'run-42', 'template_hash': template_hash,
        'backend': 'OpenAICompatible', 'model': 'tiny-remote',
        'revision': None, 'endpoint': server.url + '/v1',
        'response_schema_hash': None, 'schema_hash': schema_hash}
  assert 'sk-yaml' not in json.dumps(rows) + result.stdout + result.stderr


def test_every_backend_describes_its_model_without_secrets(tiny_causal_lm):
  from beam_llm.handlers import create_handler
  secret_url = 'http://user:sk-url-secret@127.0.0.1:9/v1?key=sk-url-secret'
  specs = {
      'HuggingFace': {'model': tiny_causal_lm, 'revision': 'main'},
      'KerasHub': {'preset': '/models/gemma'},
      'OpenAICompatible': {'model': 'm', 'base_url': secret_url},
      'Gemini': {'model': 'gemini-2.0-flash', 'base_url': secret_url},
      'VertexAI': {'endpoint': '1234', 'project': 'p', 'location': 'l',
                   'api_endpoint': secret_url},
  }
  described = {
      name: create_handler('GenerateText', {'type': name, 'config': config},
                           {}, {}).describe_model()
      for name, config in specs.items()}
  assert described['HuggingFace'] == {
      'backend': 'HuggingFace', 'model': tiny_causal_lm, 'revision': 'main',
      'endpoint': None}
  assert described['KerasHub']['model'] == '/models/gemma'
  assert described['OpenAICompatible']['endpoint'] == 'http://127.0.0.1:9/v1'
  assert described['Gemini'] == {
      'backend': 'Gemini', 'model': 'gemini-2.0-flash', 'revision': None,
      'endpoint': 'http://127.0.0.1:9/v1'}
  assert described['VertexAI'] == {
      'backend': 'VertexAI', 'model': '1234', 'revision': None,
      'endpoint': 'http://127.0.0.1:9/v1 p/l'}
  assert 'sk-url-secret' not in repr(described)
