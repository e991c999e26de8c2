"""Classify, Extract and SemanticFilter, run for real: through
`python -m apache_beam.yaml.main` on a tiny random-weight model (where the
constraint, not luck, makes every answer typed) and on the OpenAI-compatible
fake server with the real `openai` client."""
import json
import re

import pytest
import yaml

from beam_llm.testing.fake_llm_server import Faults
from tests.beam_helpers import run_transform
from tests.conftest import ROOT, read_json_lines, run_yaml

LABELS = {-1: 'unhappy customer', 0: 'neutral', 1: 'happy customer'}
PROVIDERS = {'type': 'python', 'config': {}, 'transforms': {
    n: f'beam_llm.{n}' for n in ('Classify', 'Extract', 'SemanticFilter', 'FormatErrors')}}


def write_pipeline(tmp_path, operator, config, input_path=None):
  """Chats -> operator -> results file + readable errors file."""
  prefix = str(tmp_path / 'out')
  spec = {
      'pipeline': {'transforms': [
          {'type': 'ReadFromJson', 'name': 'Chats',
           'config': {'path': input_path or f'{ROOT}/pipelines/data/chats.jsonl'}},
          {'type': operator, 'name': 'Op', 'input': 'Chats',
           'config': {**config, 'error_handling': {'output': 'failed'}}},
          {'type': 'WriteToJson', 'input': 'Op', 'config': {'path': prefix}},
          {'type': 'FormatErrors', 'name': 'Errors', 'input': 'Op.failed',
           'config': {'fields': ['chat_id']}},
          {'type': 'WriteToJson', 'input': 'Errors', 'config': {'path': prefix + '-errors'}},
      ]},
      'providers': [PROVIDERS],
  }
  path = tmp_path / 'pipeline.yaml'
  path.write_text(yaml.safe_dump(spec, sort_keys=False))
  return str(path), prefix


def run_operator(tmp_path, operator, config, **kwargs):
  path, prefix = write_pipeline(tmp_path, operator, config, **kwargs)
  result = run_yaml(path)
  assert result.returncode == 0, result.stderr[-3000:]
  return read_json_lines(prefix), read_json_lines(prefix + '-errors')


def hf(model, **config):
  return {'type': 'HuggingFace', 'config': {'model': model, **config}}


def openai(server):
  return {'type': 'OpenAICompatible',
          'config': {'base_url': server.url + '/v1', 'model': 'm', 'max_retries': 2,
                     'initial_backoff_secs': 0.05, 'cache': False}}


def ids(rows):
  return sorted(r['chat_id'] for r in rows)


# -- on a tiny random-weight model ---------------------------------------


def test_classify_on_random_weights_every_row_gets_a_typed_label(
    tiny_causal_lm, tmp_path, chats):
  rows, errors = run_operator(tmp_path, 'Classify', {
      'field': 'history', 'labels': LABELS, 'output': 'sentiment',
      'instruction': "The customer's tone.", 'prompt_output': 'prompt',
      'model_handler': hf(tiny_causal_lm), 'max_new_tokens': 24})
  # Constrained decoding: gibberish weights, yet every answer is a label.
  assert errors == []
  assert ids(rows) == ids(chats)
  for row in rows:
    assert set(row) == {'chat_id', 'user_id', 'history', 'sentiment', 'prompt'}
    assert row['sentiment'] in (-1, 0, 1) and isinstance(row['sentiment'], int)
    user = row['prompt'][1]['content']
    assert '- -1: unhappy customer' in user and row['history'] in user


def test_multi_label_classify_on_random_weights_is_typed_or_an_error(
    tiny_causal_lm, tmp_path, chats):
  labels = ['delivery', 'food', 'payment', 'app']
  rows, errors = run_operator(tmp_path, 'Classify', {
      'field': 'history', 'labels': labels, 'multi_label': True, 'output': 'topics',
      'model_handler': hf(tiny_causal_lm), 'max_new_tokens': 60})
  assert ids(rows + errors) == ids(chats)  # None lost, none twice.
  assert rows, 'constrained decoding gave no typed row at all'
  for row in rows:
    assert all(t in labels for t in row['topics'])
    assert row['topics'] == [l for l in labels if l in row['topics']]  # Ordered, unique.
  for error in errors:
    assert error['error_type'] == 'truncated' and 'the model answered' in error['msg']


def test_filter_on_random_weights_every_row_is_kept_dropped_or_an_error(
    tiny_causal_lm, chats):
  from beam_llm import SemanticFilter
  out, _, metrics = run_transform(
      SemanticFilter(condition='The customer is unhappy.', field='history',
                     model_handler=hf(tiny_causal_lm), max_new_tokens=12,
                     error_handling={'output': 'failed'}),
      chats, metrics=True)
  # Every decision was a boolean: nothing undecidable on random weights.
  assert out['failed'] == []
  assert len(out['good']) + metrics['dropped_rows'] == len(chats)
  assert metrics.get('output_rows', 0) == len(out['good'])
  for row in out['good']:
    assert set(row._asdict()) == {'chat_id', 'user_id', 'history'}


def test_filter_with_reason_through_yaml(tiny_causal_lm, tmp_path, chats):
  rows, errors = run_operator(tmp_path, 'SemanticFilter', {
      'field': 'history', 'condition': 'The customer is unhappy.',
      'reason_output': 'why', 'model_handler': hf(tiny_causal_lm),
      'max_new_tokens': 1000})
  assert errors == []
  assert set(ids(rows)) <= set(ids(chats))
  for row in rows:
    assert isinstance(row['why'], str) and len(row['why']) <= 200


def test_extract_on_random_weights_gives_schema_typed_fields(
    tiny_causal_lm, tmp_path, chats):
  rows, errors = run_operator(tmp_path, 'Extract', {
      'field': 'history', 'schema_file': f'{ROOT}/schemas/sentiment_summary.json',
      'instruction': "Judge the customer's tone and summarize the chat.",
      'model_handler': hf(tiny_causal_lm), 'max_new_tokens': 700})
  assert errors == []
  assert ids(rows) == ids(chats)
  for row in rows:
    assert set(row) == {'chat_id', 'user_id', 'history', 'sentiment', 'summary'}
    assert row['sentiment'] in (-1, 0, 1) and 1 <= len(row['summary']) <= 512


def test_extract_cut_off_answers_are_errors_with_the_raw_answer(
    tiny_causal_lm, tmp_path, chats):
  rows, errors = run_operator(tmp_path, 'Extract', {
      'template': '{% raw %}Chat {{ chat_id }}: {{ history }}{% endraw %}',
      'schema_file': f'{ROOT}/schemas/sentiment_summary.json',
      'model_handler': hf(tiny_causal_lm), 'max_new_tokens': 10})
  assert rows == []
  assert ids(errors) == ids(chats)
  for error in errors:
    assert error['error_type'] == 'truncated'
    assert 'the model answered: \'{"sentiment": ' in error['msg']
    element = json.loads(error['element'])
    assert set(element) == {'chat_id', 'user_id', 'history'}  # The input row, as it came.


# -- on the OpenAI-compatible fake server ---------------------------------


def _text(prompt):
  found = re.search(r'<text>\n(.*?)\n</text>', prompt, re.S)
  return found.group(1) if found else prompt


UNHAPPY = ('annoyed', 'late', 'refund', 'rude', 'upset', 'give up', 'déçu')


def keyword_reply(prompt):
  """A model that answers each operator's question from keywords."""
  text = _text(prompt).lower()
  unhappy = any(w in text for w in UNHAPPY)
  if '"label"' in prompt:
    return json.dumps({'label': -1 if unhappy else 0})
  if '"holds"' in prompt:
    return json.dumps({'holds': unhappy})
  return json.dumps({'sentiment': -1 if unhappy else 0, 'summary': text[:40]})


def test_classify_on_a_server_sends_the_labels_as_structured_output(
    llm_server, tmp_path, chats):
  server = llm_server(reply=keyword_reply, faults=Faults(script=['429'], retry_after=0.1))
  rows, errors = run_operator(tmp_path, 'Classify', {
      'field': 'history', 'labels': LABELS, 'output': 'sentiment',
      'model_handler': openai(server)})
  assert errors == [] and ids(rows) == ids(chats)
  by_id = {r['chat_id']: r['sentiment'] for r in rows}
  assert by_id[4116] == -1 and by_id[4119] == 0
  bodies = [r.body for r in server.log if r.status == 200]
  assert len(bodies) == len(chats)
  schema = bodies[0]['response_format']['json_schema']['schema']
  assert schema['properties']['label'] == {'type': 'integer', 'enum': [-1, 0, 1]}


def test_answers_without_json_are_rescued_or_errors_with_the_raw_answer(
    llm_server, tmp_path, chats):
  def reply(prompt):
    text = _text(prompt)
    if 'pineapple' in text:
      return 'I cannot tell.'
    return ' "Unhappy." ' if any(w in text.lower() for w in UNHAPPY) else 'neutral'
  server = llm_server(reply=reply)
  rows, errors = run_operator(tmp_path, 'Classify', {
      'field': 'history', 'labels': ['unhappy', 'neutral', 'happy'],
      'model_handler': openai(server)})
  assert ids(rows + errors) == ids(chats)
  assert {r['label'] for r in rows} == {'unhappy', 'neutral'}
  [error] = errors
  assert error['chat_id'] == 4116 and error['error_type'] == 'invalid_json'
  assert "the model answered: 'I cannot tell.'" in error['msg']


def test_filter_and_extract_on_a_server(llm_server, tmp_path, chats):
  server = llm_server(reply=keyword_reply)
  kept, errors = run_operator(tmp_path / 'f', 'SemanticFilter', {
      'field': 'history', 'condition': 'The customer is unhappy.',
      'model_handler': openai(server)})
  assert errors == []
  unhappy = [c['chat_id'] for c in chats if any(w in c['history'].lower() for w in UNHAPPY)]
  assert ids(kept) == sorted(unhappy) and 0 < len(unhappy) < len(chats)
  rows, errors = run_operator(tmp_path / 'e', 'Extract', {
      'field': 'history', 'schema_file': f'{ROOT}/schemas/sentiment_summary.json',
      'model_handler': openai(server), 'temperature': 0.5})
  assert errors == [] and ids(rows) == ids(chats)
  assert {r['sentiment'] for r in rows} == {-1, 0}
  last = server.log[-1].body
  assert last['temperature'] == 0.5
  assert last['response_format']['json_schema']['schema']['required'] == ['sentiment', 'summary']


def test_a_server_error_row_names_the_operator(llm_server, tmp_path, chats):
  server = llm_server(reply=keyword_reply, faults=Faults(script=['400']))
  rows, errors = run_operator(tmp_path, 'SemanticFilter', {
      'field': 'history', 'condition': 'The customer is unhappy.',
      'model_handler': openai(server), 'max_batch_size': 1})
  [error] = errors
  assert error['error_type'] == 'client_error'
  assert error['msg'].startswith('SemanticFilter: GenerateText (client_error)')
  assert set(json.loads(error['element'])) == {'chat_id', 'user_id', 'history'}


# -- build-time checks -----------------------------------------------------


@pytest.mark.parametrize('operator,config,message', [
    ('Classify', {'labels': ['a', 'b'], 'feild': 'history'},
     "Classify: option 'feild' is unknown (did you mean 'field'?)"),
    ('Classify', {'labels': ['a', 1], 'field': 'history'},
     "Classify: option 'labels' must be all strings or all integers"),
    ('Classify', {'labels': ['a', 'b'], 'field': 'histori'},
     "Classify: option 'field' names field(s) histori that the input does not have"),
    ('Classify', {'labels': ['a', 'b'], 'field': 'history', 'max_new_tokens': 0},
     "Classify: option 'max_new_tokens' must be at least 1"),
    ('Extract', {'schema': {'type': 'string'}, 'field': 'history'},
     "Extract: option 'schema' must describe an object with properties"),
    ('Extract', {'schema_file': 'nope.json', 'field': 'history'},
     "Extract: option 'schema_file': cannot read 'nope.json'"),
    ('SemanticFilter', {'field': 'history'},
     "SemanticFilter: option 'condition' is required"),
    ('SemanticFilter', {'condition': 'x', 'field': 'history', 'template': 'y'},
     "SemanticFilter: give exactly one of 'field' or 'template' or 'template_file'"),
    ('SemanticFilter', {'condition': 'x', 'field': 'history',
                        'model_handler': {'type': 'HuggingFace', 'config': {'modle': 'm'}}},
     "SemanticFilter: option 'model_handler.config.modle' is unknown"),
])
def test_bad_config_fails_at_build_naming_operator_and_option(
    tmp_path, operator, config, message):
  import apache_beam as beam
  from apache_beam.yaml import main as yaml_main
  config = {'model_handler': hf('/nonexistent-model-dir'), **config}
  path, _ = write_pipeline(tmp_path, operator, config)
  with open(path) as f:
    text = f.read()
  with pytest.raises(Exception) as info:
    _, constructor = yaml_main.build_pipeline_components_from_yaml(
        text, ['--runner=FnApiRunner'])
    constructor(beam.Pipeline(runner='FnApiRunner'))
  assert message in str(info.value)
