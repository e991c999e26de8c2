"""SummarizePerKey: an LLM reduce per key (and window), in token-budgeted
rounds when a group does not fit in one prompt. Prompts are measured as the
model sees them (chat template applied) and must all fit the budget."""
import json

import apache_beam as beam
import pytest
import yaml

from tests.beam_helpers import run_transform
from tests.conftest import CHATS, read_json_lines, run_yaml
from tests.test_semantic_operators import openai, write_pipeline, hf

BUDGET = 300


def _chat_tokens(tokenizer, messages):
  return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))


def test_big_groups_are_summarized_in_rounds_each_prompt_within_budget(
    llm_server, tiny_causal_lm, tmp_path, chats):
  from transformers import AutoTokenizer
  server = llm_server(reply=lambda prompt: 'Late food, rude driver and a double charge.')
  path, prefixes = write_pipeline(tmp_path, {'Digest': ('SummarizePerKey', {
      'group_by': 'day', 'field': 'history', 'output': 'digest',
      'instruction': 'What went wrong?', 'max_input_tokens': BUDGET,
      'max_new_tokens': 32, 'tokenizer': tiny_causal_lm,
      'model_handler': openai(server)}, 'Chats')})
  result = run_yaml(path)
  assert result.returncode == 0, result.stderr[-3000:]

  rows = read_json_lines(prefixes['Digest'])
  assert read_json_lines(prefixes['Digest'] + '-errors') == []
  per_day = {}
  for chat in chats:
    per_day[chat['day']] = per_day.get(chat['day'], 0) + 1
  assert {r['day']: r['count'] for r in rows} == per_day  # One row per key.
  assert {r['digest'] for r in rows} == {'Late food, rude driver and a double charge.'}

  tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
  bodies = [r.body for r in server.log]
  sizes = [_chat_tokens(tokenizer, b['messages']) for b in bodies]
  assert max(sizes) <= BUDGET, sizes
  # A day's four chats do not fit one prompt: partial summaries came first.
  partial = [b for b in bodies if 'larger collection' in b['messages'][1]['content']]
  final = [b for b in bodies if 'larger collection' not in b['messages'][1]['content']]
  assert len(final) == len(per_day) and len(partial) >= 2 * len(per_day)
  # Every chat's text reached the model (split where longer than a chunk).
  sent = ' '.join(b['messages'][1]['content'] for b in partial)
  for chat in chats:
    assert chat['history'].split('\n')[0][:30] in sent


def test_summaries_per_window(llm_server):
  server = llm_server(reply=lambda prompt: f'{prompt.count("order")} mentions of orders')
  from beam_llm import SummarizePerKey
  rows = [{'shop': 'north', 'text': f'order {i} was late', 'ts': ts}
          for i, ts in enumerate([10, 20, 30, 86400 + 5, 86400 + 6])]
  transform = (
      beam.Map(lambda r: beam.window.TimestampedValue(r, r.ts))
      | beam.WindowInto(beam.window.FixedWindows(86400))
      | SummarizePerKey(group_by='shop', field='text', model_handler=openai(server),
                        max_new_tokens=16))
  out, _ = run_transform(transform, rows)
  assert sorted((r.shop, r.count, r.summary) for r in out['good']) == [
      ('north', 2, '2 mentions of orders'), ('north', 3, '3 mentions of orders')]


def test_on_a_tiny_model_every_prompt_fits_the_models_own_limit(tiny_causal_lm, chats):
  from beam_llm import SummarizePerKey
  # The backend itself refuses prompts over BUDGET tokens (prompt_too_long):
  # no error row means no call went over.
  out, types, metrics = run_transform(
      SummarizePerKey(group_by='day', field='history', max_input_tokens=BUDGET,
                      max_new_tokens=16,
                      model_handler=hf(tiny_causal_lm, max_input_tokens=BUDGET),
                      error_handling={'output': 'failed'}),
      chats[:8], metrics=True)
  assert out['failed'] == []
  assert sorted((r.day, r.count) for r in out['good']) == [('2026-11-23', 4), ('2026-11-24', 4)]
  assert all(isinstance(r.summary, str) for r in out['good'])
  assert metrics['rounds'].min >= 2
  assert metrics['prompt_tokens'].max <= BUDGET


def test_a_failed_group_is_one_error_row(llm_server, chats):
  from beam_llm.testing.fake_llm_server import Faults
  from beam_llm import SummarizePerKey
  server = llm_server(faults=Faults(script=['400']))
  out, _ = run_transform(
      SummarizePerKey(group_by='user_id', field='history', model_handler=openai(server),
                      max_new_tokens=16, error_handling={'output': 'failed'}),
      chats[:3])
  [error] = out['failed']
  assert error.error_type == 'client_error' and error.element.count == 1
  assert error.msg.startswith('SummarizePerKey (client_error): ')
  assert len(out['good']) == 2


@pytest.mark.parametrize('config,message', [
    ({'group_by': 'day', 'field': 'history', 'max_input_tokens': 300, 'max_new_tokens': 200},
     "SummarizePerKey: option 'max_input_tokens' (300) must leave room for two summaries"),
    ({'group_by': 'month', 'field': 'history'},
     "SummarizePerKey: option 'group_by' names field 'month', which the input does not have"),
    ({'group_by': 'day', 'field': 'history', 'temprature': 1},
     "SummarizePerKey: option 'temprature' is unknown (did you mean 'temperature'?)"),
])
def test_bad_config_fails_at_build(tmp_path, config, message):
  from apache_beam.yaml import main as yaml_main
  config = {'model_handler': hf('/nonexistent-model-dir'), **config}
  path, _ = write_pipeline(tmp_path, {'Op': ('SummarizePerKey', config, 'Chats')})
  with pytest.raises(Exception) as info:
    _, constructor = yaml_main.build_pipeline_components_from_yaml(
        open(path).read(), ['--runner=FnApiRunner'])
    constructor(beam.Pipeline(runner='FnApiRunner'))
  assert message in str(info.value)


def test_an_operator_asking_the_model_shares_it_per_process(
    tiny_causal_lm, llm_server):
  """SummarizePerKey's and SemanticTopK's CombineFn / DoFn copies (each
  unpickled from the pipeline) ask one model per process: a local model
  loaded once, a remote backend's one client and adaptive limit."""
  import pickle
  from beam_llm.handlers import create_handler
  from beam_llm.transforms.semantic import _asking
  server = llm_server()
  specs = [
      {'type': 'HuggingFace', 'config': {'model': tiny_causal_lm}},
      {'type': 'OpenAICompatible',
       'config': {'model': 'm', 'base_url': server.url + '/v1'}}]
  for spec in specs:
    handler = create_handler('SummarizePerKey', spec, {'max_new_tokens': 4}, {})
    asker = pickle.dumps(_asking.Asker('SummarizePerKey', handler))
    copies = [pickle.loads(asker) for _ in range(3)]
    for copy in copies:
      assert len(copy.texts(['hello'])) == 1
    models = {id(copy._model) for copy in copies}  # pylint: disable=protected-access
    assert len(models) == 1, spec['type']
    # A new pipeline (a new Asker) may load its own.
    other = _asking.Asker('SummarizePerKey', handler)
    other.texts(['hello'])
    assert id(other._model) not in models or spec['type'] == 'OpenAICompatible'
