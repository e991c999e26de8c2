from typing import Optional

import pytest
from apache_beam.typehints import row_type

from beam_llm import RenderPrompt
from beam_llm._config import ConfigError
from tests.beam_helpers import run_transform

ROWS = [
    {'chat_id': 1, 'history': 'user_id 1: hello'},
    {'chat_id': 2, 'history': 'user_id 2: reply with {{ secrets }} {% if 1 %}x{% endif %}'},
]


def test_renders_each_row_and_keeps_input_fields():
  out, types = run_transform(
      RenderPrompt(template='Chat {{ chat_id }}:\n{{ history }}'), ROWS)
  by_id = {r.chat_id: r for r in out['good']}
  assert by_id[1].prompt == 'Chat 1:\nuser_id 1: hello'
  assert by_id[1].history == 'user_id 1: hello'
  assert dict(types['good']._fields)['prompt'] is str


def test_row_data_is_never_evaluated_as_a_template():
  out, _ = run_transform(RenderPrompt(template='[{{ history }}]'), ROWS)
  by_id = {r.chat_id: r for r in out['good']}
  assert by_id[2].prompt == (
      '[user_id 2: reply with {{ secrets }} {% if 1 %}x{% endif %}]')


def test_chat_form_gives_role_content_messages(tmp_path):
  user = tmp_path / 'user.j2'
  user.write_text('Classify: {{ history }}')
  out, _ = run_transform(
      RenderPrompt(
          messages=[{'role': 'system', 'content': 'You answer in JSON.'},
                    {'role': 'user', 'content_file': str(user)}],
          output='chat'),
      ROWS[:1])
  [row] = out['good']
  assert [(m.role, m.content) for m in row.chat] == [
      ('system', 'You answer in JSON.'),
      ('user', 'Classify: user_id 1: hello')]


def test_template_file(tmp_path):
  path = tmp_path / 'prompt.j2'
  path.write_text('Summarize: {{ history }}')
  out, _ = run_transform(RenderPrompt(template_file=str(path)), ROWS[:1])
  assert out['good'][0].prompt == 'Summarize: user_id 1: hello'


def test_a_row_that_fails_to_render_goes_to_errors_and_the_others_come_out():
  # 2,500 good rows: the `rendered` counter, added up in the DoFn, reports
  # every 1,000 and at the end of the bundle; the summary reads its total.
  rows = [{'chat_id': i, 'history': f'user_id {i}: hi'} for i in range(2500)]
  rows.append({'chat_id': -1, 'history': None})
  out, _, metrics = run_transform(
      RenderPrompt(
          template='{{ history.upper() }}', error_handling={'output': 'bad'}),
      rows, metrics=True)
  assert sorted(r.chat_id for r in out['good']) == list(range(2500))
  assert (metrics['rendered'], metrics['failed']) == (2500, 1)
  [error] = out['bad']
  assert error.element.chat_id == -1
  assert error.error_type == 'render'
  assert error.msg.startswith('RenderPrompt:') and 'upper' in error.msg


def test_sandbox_blocks_python_internals():
  out, _ = run_transform(
      RenderPrompt(
          template="{{ history.__class__.__mro__[1].__subclasses__() }}",
          error_handling={'output': 'bad'}),
      ROWS[:1])
  assert out['good'] == []
  assert out['bad'][0].error_type == 'render'


def test_without_error_handling_a_bad_row_fails_the_pipeline():
  with pytest.raises(Exception, match='(?s)RenderPrompt.*error_handling'):
    run_transform(
        RenderPrompt(template='{{ history.upper() }}'),
        [{'chat_id': 3, 'history': None}],
        input_type=row_type.RowTypeConstraint.from_fields([
            ('chat_id', int), ('history', Optional[str])]))


@pytest.mark.parametrize('kwargs, message', [
    ({}, "give exactly one of 'template' or 'template_file' or 'messages'"),
    ({'template': 'a', 'template_file': 'b'}, 'got template, template_file'),
    ({'template': '{{ history'}, 'template syntax error at line 1'),
    ({'template_file': '/no/such/prompt.j2'}, "option 'template_file': cannot read"),
    ({'messages': [{'role': 'user'}]}, "exactly one of 'content' or 'content_file'"),
    ({'messages': [{'role': 'user', 'text': 'x'}]}, r"option 'messages\[0\].text' is unknown"),
    ({'template': 'x', 'output': 3}, "option 'output' must be a string"),
    ({'template': 'x', 'error_handling': {'outptu': 'x'}}, "option 'error_handling' must be a mapping like"),
])
def test_bad_config_names_the_transform_and_key(kwargs, message):
  with pytest.raises(ConfigError, match='RenderPrompt') as info:
    RenderPrompt(**kwargs)
  assert info.match(message)


def test_unknown_template_variable_fails_at_build_time():
  with pytest.raises(ConfigError, match=r"RenderPrompt: option 'template' uses variable\(s\) histroy"):
    run_transform(RenderPrompt(template='{{ histroy }}'), ROWS)


def test_constant_variables_from_the_yaml_fill_the_template():
  out, _ = run_transform(
      RenderPrompt(template='{{ business }} chat {{ chat_id }}',
                   variables={'business': 'The bakery'}), ROWS)
  assert sorted(r.prompt for r in out['good']) == [
      'The bakery chat 1', 'The bakery chat 2']


def test_a_constant_variable_may_not_shadow_an_input_field():
  with pytest.raises(ConfigError, match=r"RenderPrompt: option 'variables.history' is also a field"):
    run_transform(RenderPrompt(template='{{ history }}',
                               variables={'history': 'x'}), ROWS)
