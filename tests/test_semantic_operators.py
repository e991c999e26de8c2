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
from tests.conftest import CHATS, ROOT, read_json_lines, run_yaml

LABELS = {-1: 'unhappy customer', 0: 'neutral', 1: 'happy customer'}
PROVIDERS = {'type': 'python', 'config': {}, 'transforms': {
    n: f'beam_llm.{n}' for n in ('Classify', 'Extract', 'SemanticFilter', 'SummarizePerKey',
                                  'FormatErrors')}}


def write_pipeline(tmp_path, branches, few=3):
  """Chats -> each operator -> its results file + readable errors file.

  `branches`: {name: (operator, config, input)}, input `Chats` (all sample
  chats) or `Few` (the first `few`, for long generations). Returns the
  pipeline file and {name: output prefix}.
  """
  (tmp_path / 'few.jsonl').write_text(''.join(open(CHATS).readlines()[:few]))
  transforms = [
      {'type': 'ReadFromJson', 'name': 'Chats', 'config': {'path': CHATS}},
      {'type': 'ReadFromJson', 'name': 'Few', 'config': {'path': str(tmp_path / 'few.jsonl')}},
  ]
  prefixes = {}
  for name, (operator, config, source) in branches.items():
    prefix = prefixes[name] = str(tmp_path / name)
    transforms += [
        {'type': operator, 'name': name, 'input': source,
         'config': {**config, 'error_handling': {'output': 'failed'}}},
        {'type': 'WriteToJson', 'name': f'Write{name}', 'input': name,
         'config': {'path': prefix}},
        {'type': 'FormatErrors', 'name': f'{name}Errors', 'input': f'{name}.failed',
         'config': {'fields': ['chat_id']}},
        {'type': 'WriteToJson', 'name': f'Write{name}Errors', 'input': f'{name}Errors',
         'config': {'path': prefix + '-errors'}},
    ]
  spec = {'pipeline': {'transforms': transforms}, 'providers': [PROVIDERS]}
  path = tmp_path / 'pipeline.yaml'
  path.write_text(yaml.safe_dump(spec, sort_keys=False))
  return str(path), prefixes


def run_operators(tmp_path, branches):
  """Runs the branches in one `apache_beam.yaml.main`; {name: (rows, errors)}."""
  path, prefixes = write_pipeline(tmp_path, branches)
  result = run_yaml(path)
  assert result.returncode == 0, result.stderr[-3000:]
  return {name: (read_json_lines(p), read_json_lines(p + '-errors'))
          for name, p in prefixes.items()}


def hf(model, **config):
  return {'type': 'HuggingFace', 'config': {'model': model, **config}}


def openai(server):
  return {'type': 'OpenAICompatible',
          'config': {'base_url': server.url + '/v1', 'model': 'm', 'max_retries': 2,
                     'initial_backoff_secs': 0.05, 'cache': False}}


def as_object(element):
  """An error file's `element`: FormatErrors writes the failed row as an object."""
  return json.loads(element) if isinstance(element, str) else element


def ids(rows):
  return sorted(r['chat_id'] for r in rows)


SCHEMA_FILE = f'{ROOT}/schemas/sentiment_summary.json'
TOPICS = ['delivery', 'food', 'payment', 'app']


# -- on a tiny random-weight model ---------------------------------------


def test_operators_on_random_weights_give_typed_rows_or_errors_none_lost(
    tiny_causal_lm, tmp_path, chats):
  few = chats[:3]
  # The sentiment schema with a short summary: the random model fills a
  # string to its maxLength, and 512 characters per row only cost time.
  with open(SCHEMA_FILE) as f:
    short = json.load(f)
  short['properties']['summary']['maxLength'] = 24
  short_schema_file = tmp_path / 'short_schema.json'
  short_schema_file.write_text(json.dumps(short))
  out = run_operators(tmp_path, {
      'Sentiment': ('Classify', {
          'field': 'history', 'labels': LABELS, 'output': 'sentiment',
          'instruction': "The customer's tone.", 'prompt_output': 'prompt',
          'model_handler': hf(tiny_causal_lm), 'max_new_tokens': 24}, 'Chats'),
      'Topics': ('Classify', {
          'field': 'history', 'labels': TOPICS, 'multi_label': True, 'output': 'topics',
          'model_handler': hf(tiny_causal_lm), 'max_new_tokens': 60}, 'Chats'),
      'Unhappy': ('SemanticFilter', {
          'field': 'history', 'condition': 'The customer is unhappy.',
          'reason_output': 'why', 'model_handler': hf(tiny_causal_lm),
          'max_new_tokens': 1000}, 'Few'),
      'Extracted': ('Extract', {
          'field': 'history', 'schema_file': str(short_schema_file),
          'instruction': "Judge the customer's tone and summarize the chat.",
          'model_handler': hf(tiny_causal_lm), 'max_new_tokens': 700}, 'Few'),
      'CutOff': ('Extract', {
          'template': '{% raw %}Chat {{ chat_id }}: {{ history }}{% endraw %}',
          'schema_file': SCHEMA_FILE, 'chat': False,
          'model_handler': hf(tiny_causal_lm), 'max_new_tokens': 10}, 'Few'),
  })
  # Constrained decoding: gibberish weights, yet every answer is a label.
  rows, errors = out['Sentiment']
  assert errors == [] and ids(rows) == ids(chats)
  for row in rows:
    assert set(row) == {'chat_id', 'user_id', 'day', 'history', 'sentiment', 'prompt'}
    assert row['sentiment'] in (-1, 0, 1) and isinstance(row['sentiment'], int)
    user = row['prompt'][1]['content']
    assert '- -1: unhappy customer' in user and row['history'] in user

  rows, errors = out['Topics']
  assert ids(rows + errors) == ids(chats)  # None lost, none twice.
  assert rows, 'constrained decoding gave no typed row at all'
  for row in rows:
    assert row['topics'] == [t for t in TOPICS if t in row['topics']]  # Ordered, unique.
  for error in errors:
    assert error['error_type'] == 'truncated' and 'the model answered' in error['msg']

  rows, errors = out['Unhappy']
  assert errors == [] and set(ids(rows)) <= set(ids(few))
  for row in rows:
    assert isinstance(row['why'], str) and len(row['why']) <= 200

  rows, errors = out['Extracted']
  assert errors == [] and ids(rows) == ids(few)
  for row in rows:
    assert set(row) == {'chat_id', 'user_id', 'day', 'history', 'sentiment', 'summary'}
    assert row['sentiment'] in (-1, 0, 1) and 1 <= len(row['summary']) <= 24

  rows, errors = out['CutOff']
  assert rows == [] and ids(errors) == ids(few)
  for error in errors:
    assert error['error_type'] == 'truncated'
    assert error['msg'].startswith('Extract (truncated): the JSON was cut off')
    assert re.search(r'the model answered: \'\{"sentiment": ?', error['msg'])
    element = as_object(error['element'])
    assert set(element) == {'chat_id', 'user_id', 'day', 'history'}  # The input row, as it came.


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
    assert set(row._asdict()) == {'chat_id', 'user_id', 'day', 'history'}


# -- on the OpenAI-compatible fake server ---------------------------------


def _text(prompt):
  found = re.search(r'<text>\n(.*?)\n</text>', prompt, re.S)
  return found.group(1) if found else prompt


UNHAPPY = ('annoyed', 'late', 'refund', 'rude', 'upset', 'give up', 'déçu')


def _unhappy(text):
  return any(w in text.lower() for w in UNHAPPY)


def keyword_reply(prompt):
  """A model that answers each operator's question from keywords; for
  chats about pineapple it has no JSON to give."""
  text = _text(prompt)
  if '"label"' in prompt and 'PLAIN' in prompt:  # Answers without JSON.
    if 'pineapple' in text:
      return 'I cannot tell.'
    return ' "Unhappy." ' if _unhappy(text) else 'neutral'
  if '"label"' in prompt:
    return json.dumps({'label': -1 if _unhappy(text) else 0})
  if '"holds"' in prompt:
    return json.dumps({'holds': _unhappy(text)})
  return json.dumps({'sentiment': -1 if _unhappy(text) else 0, 'summary': text[:40]})


def test_operators_on_a_server_through_yaml(llm_server, tmp_path, chats):
  # On Extract's requests: one 429 (retried), and one 400 (not retried:
  # that row is an error).
  server = llm_server(reply=keyword_reply, faults=Faults(
      script=['429', 'ok', '400'], script_for='"summary"', retry_after=0.1))
  out = run_operators(tmp_path, {
      'Sentiment': ('Classify', {
          'field': 'history', 'labels': LABELS, 'output': 'sentiment',
          'model_handler': openai(server), 'max_batch_size': 1}, 'Chats'),
      'Plain': ('Classify', {
          'field': 'history', 'labels': ['unhappy', 'neutral', 'happy'],
          'instruction': 'PLAIN', 'model_handler': openai(server)}, 'Chats'),
      'Unhappy': ('SemanticFilter', {
          'field': 'history', 'condition': 'The customer is unhappy.',
          'model_handler': openai(server)}, 'Chats'),
      'Extracted': ('Extract', {
          'field': 'history', 'schema_file': SCHEMA_FILE,
          'model_handler': openai(server), 'temperature': 0.5}, 'Chats'),
  })
  total = sum(len(rows) + len(errors) for rows, errors in out.values())
  assert total == 3 * len(chats) + len(out['Unhappy'][0])

  assert [r.fault for r in server.log if r.fault in ('429', '400')] == ['429', '400']
  [failed] = [e for _, errors in out.values() for e in errors if e['error_type'] == 'client_error']
  assert failed['msg'].startswith('Extract: GenerateText (client_error)')
  assert set(as_object(failed['element'])) == {'chat_id', 'user_id', 'day', 'history'}

  rows, errors = out['Sentiment']
  assert ids(rows + errors) == ids(chats)
  for row in rows:
    assert row['sentiment'] == (-1 if _unhappy(row['history']) else 0)
  bodies = [r.body for r in server.log if r.status == 200 and '"label"' in r.prompt]
  schema = bodies[0]['response_format']['json_schema']['schema']
  assert schema['properties']['label'] in (
      {'type': 'integer', 'enum': [-1, 0, 1]},
      {'type': 'string', 'enum': ['unhappy', 'neutral', 'happy']})

  # Answers without JSON: a bare label is accepted; anything else is an
  # error row carrying the raw answer.
  rows, errors = out['Plain']
  assert {r['label'] for r in rows} <= {'unhappy', 'neutral'}
  [error] = errors
  assert error['chat_id'] == 4116 and error['error_type'] == 'invalid_json'
  assert "the model answered: 'I cannot tell.'" in error['msg']

  rows, errors = out['Unhappy']
  unhappy = {c['chat_id'] for c in chats if _unhappy(c['history'])}
  assert set(ids(rows)) <= unhappy and 0 < len(unhappy) < len(chats)
  assert errors == [] and set(ids(rows)) == unhappy

  rows, errors = out['Extracted']
  assert ids(rows + errors) == ids(chats) and len(errors) == 1
  assert {r['sentiment'] for r in rows} == {-1, 0}
  extract_bodies = [r.body for r in server.log if '"sentiment"' in json.dumps(r.body)]
  assert extract_bodies[0]['temperature'] == 0.5
  assert extract_bodies[0]['response_format']['json_schema']['schema']['required'] == [
      'sentiment', 'summary']


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
  path, _ = write_pipeline(tmp_path, {'Op': (operator, config, 'Chats')})
  with open(path) as f:
    text = f.read()
  with pytest.raises(Exception) as info:
    _, constructor = yaml_main.build_pipeline_components_from_yaml(
        text, ['--runner=FnApiRunner'])
    constructor(beam.Pipeline(runner='FnApiRunner'))
  assert message in str(info.value)


def test_labels_and_instructions_are_data_never_template_code(llm_server):
  from beam_llm import Classify
  server = llm_server(reply=lambda prompt: '{"label": "{% raw %}"}')
  out, _ = run_transform(
      Classify(field='text', labels=['{% raw %}', '{{ x }}'],
               instruction='Mind {{ secrets }} and {# this #}.',
               model_handler=openai(server), prompt_output='prompt'),
      [{'text': 'say {{ y }}'}])
  [row] = out['good']
  assert row.label == '{% raw %}'
  user = server.log[0].body['messages'][1]['content']
  assert user.startswith('Mind {{ secrets }} and {# this #}.')
  assert '- "{% raw %}"\n- "{{ x }}"' in user and '<text>\nsay {{ y }}\n</text>' in user


@pytest.mark.parametrize('name,config', [
    ('Classify', {'labels': ['good', 'bad']}),
    ('SemanticFilter', {'condition': 'Unhappy.'}),
])
def test_a_model_inside_an_operator_names_the_operator_at_run_time(
    llm_server, monkeypatch, name, config):
  """Messages from the model an operator runs (here: its API key is not
  set where it loads) name the transform the user wrote, not GenerateText."""
  import beam_llm
  monkeypatch.delenv('BEAM_LLM_TEST_UNSET_KEY', raising=False)
  handler = openai(llm_server())
  handler['config']['api_key_env'] = 'BEAM_LLM_TEST_UNSET_KEY'
  with pytest.raises(Exception) as raised:
    run_transform(getattr(beam_llm, name)(
        field='text', model_handler=handler, **config),
        [{'chat_id': 1, 'text': 'the pizza was cold'}])
  message = str(raised.value)
  assert re.search(rf"{name} \[OpenAICompatible m at [^]]+\]: the environment "
                   r"variable 'BEAM_LLM_TEST_UNSET_KEY'", message), message
  assert 'GenerateText' not in message, message
