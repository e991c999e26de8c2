"""`reason_output` and `examples`, declared once for every operator: the
reason is asked for in the answer and lands in its field; examples are
checked against the answer schema at build and shown to the model."""
import json
import re

import pytest

import beam_llm
from beam_llm.transforms.semantic import _options
from tests.beam_helpers import run_transform
from tests.test_semantic_operators import openai

OPERATORS = ['Classify', 'Extract', 'SemanticFilter', 'SemanticMap', 'SemanticJoin',
             'SemanticTopK', 'SemanticReduce', 'SummarizePerKey', 'Resolve']


@pytest.mark.parametrize('name', OPERATORS)
def test_every_operator_declares_and_documents_the_shared_options(name):
  import inspect
  cls = getattr(beam_llm, name)
  params = inspect.signature(cls.__init__).parameters
  for option in _options.SHARED:
    assert option in params, (name, option)
    assert f'    {option}: ' in cls.__doc__, (name, option)


@pytest.mark.parametrize('name', OPERATORS)
def test_opted_in_options_come_from_their_one_declaration(name):
  """`field`, `template`, `keep_fields`, ... are declared once: the same
  type, default and text in every operator that takes them."""
  import inspect
  cls = getattr(beam_llm, name)
  params = inspect.signature(cls.__init__).parameters
  for option in getattr(cls, 'opt_in', ()):
    declared = _options.OPT_IN[option]
    assert params[option].default == declared.default, (name, option)
    assert ' '.join(declared.doc.split()) in ' '.join(cls.__doc__.split()), (
        name, option)


def test_an_operator_cannot_declare_a_shared_option_again():
  from beam_llm.transforms.semantic import _base

  class Twice(_base.SemanticOperator):
    """Args:
      chat: mine.
    """
    def __init__(self, chat: bool = False, **generate_options):
      super().__init__()

  with pytest.raises(TypeError, match=r"declares \['chat'\] itself"):
    _options.inherits_generate_options(Twice)


def reasoned(answer):
  """A fake model that gives `answer` (a dict) with a reason when asked."""
  def reply(prompt):
    body = dict(answer)
    if '"reason"' in prompt.split('Now the task.')[-1]:
      body = {'reason': f'saw {len(prompt)} chars', **body}
    return json.dumps(body)
  return reply


ROWS = [{'chat_id': 1, 'text': 'the pizza was cold'},
        {'chat_id': 2, 'text': 'great service'}]


@pytest.mark.parametrize('name,config,answer,field,value', [
    ('Classify', {'labels': ['good', 'bad']}, {'label': 'bad'}, 'label', 'bad'),
    ('SemanticMap', {'instruction': 'Translate.'}, {'output': 'x'}, 'result', 'x'),
    ('SemanticFilter', {'condition': 'Unhappy.'}, {'holds': True}, None, None),
    ('Extract', {'schema': {'type': 'object', 'properties': {
        'food': {'type': 'string'}}, 'required': ['food']}},
     {'food': 'pizza'}, 'food', 'pizza'),
])
def test_reason_output_on_row_operators(llm_server, name, config, answer, field, value):
  server = llm_server(reply=reasoned(answer))
  out, types = run_transform(
      getattr(beam_llm, name)(field='text', reason_output='why',
                              model_handler=openai(server), **config), ROWS)
  assert len(out['good']) == 2
  for row in out['good']:
    assert re.fullmatch(r'saw \d+ chars', row.why)
    if field:
      assert getattr(row, field) == value
  assert dict(types['good']._fields)['why'] == str
  assert all('"reason"' in r.prompt for r in server.log)


def test_examples_are_shown_before_the_task_and_checked_at_build(llm_server):
  server = llm_server(reply=reasoned({'label': 'bad'}))
  examples = [{'input': 'the soup was cold', 'output': 'bad'},
              {'input': 'lovely staff', 'output': 'good'}]
  out, _ = run_transform(
      beam_llm.Classify(field='text', labels=['good', 'bad'], examples=examples,
                        model_handler=openai(server)), ROWS)
  assert len(out['good']) == 2
  prompt = server.log[0].prompt
  assert prompt.index('the soup was cold') < prompt.index('<answer>{"label": "bad"}')
  row_text = next(r['text'] for r in ROWS if r['text'] in prompt)
  assert prompt.index('lovely staff') < prompt.index('Now the task.') < prompt.index(
      row_text)
  with pytest.raises(ValueError, match=r"'examples\[0\].output' does not fit the "
                     r"answer schema: label: 'meh' is not one of"):
    beam_llm.Classify(field='text', labels=['good', 'bad'],
                      examples=[{'input': 'x', 'output': 'meh'}],
                      model_handler=openai(server))
  with pytest.raises(ValueError, match=r"'examples\[0\]' needs a reason"):
    beam_llm.SemanticFilter(field='text', condition='c', reason_output='why',
                            examples=[{'input': 'x', 'output': True}],
                            model_handler=openai(server))
  with pytest.raises(ValueError, match=r"'examples\[0\]' must be \{input"):
    beam_llm.SemanticMap(field='text', instruction='i',
                         examples=[{'text': 'x', 'output': 'y'}],
                         model_handler=openai(server))


def test_reduce_reason_and_examples(llm_server):
  def reply(prompt):
    return json.dumps({'reason': 'two texts', 'summary': 'cold food'})

  server = llm_server(reply=reply)
  out, _ = run_transform(
      beam_llm.SemanticReduce(
          field='text', reason_output='why',
          examples=[{'input': ['late', 'very late'], 'output': 'lateness',
                     'reason': 'both late'}],
          model_handler=openai(server)), ROWS)
  assert [(r.summary, r.why, r.count) for r in out['good']] == [
      ('cold food', 'two texts', 2)]
  assert '<answer>{"reason": "both late", "summary": "lateness"}</answer>' in (
      server.log[0].prompt)


def test_topk_examples_are_comparisons(llm_server):
  server = llm_server(reply=lambda p: json.dumps({'better': 'first'}))
  with pytest.raises(ValueError, match=r"inputs must be \{first"):
    beam_llm.SemanticTopK(criterion='c', k=1, field='text',
                          examples=[{'input': 'x', 'output': 'first'}],
                          model_handler=openai(server))
  out, _ = run_transform(beam_llm.SemanticTopK(
      criterion='c', k=1, field='text',
      examples=[{'input': {'first': 'a', 'second': 'b'}, 'output': 'second'}],
      model_handler=openai(server)), ROWS)
  assert len(out['good']) == 1
  assert '<answer>{"better": "second"}</answer>' in server.log[0].prompt


def test_resolve_refuses_reason_output(llm_server):
  server = llm_server()
  with pytest.raises(ValueError, match="Resolve: option 'reason_output' is not supported"):
    beam_llm.Resolve(record_id='chat_id', block_by='text', reason_output='why',
                     model_handler=openai(server))


def any_answer(prompt):
  """Whatever the prompt asks for, in the form it asks."""
  if '"better"' in prompt:
    return json.dumps({'better': 'first'})
  if '"holds"' in prompt:
    return json.dumps({'holds': True})
  if '"label"' in prompt:
    return json.dumps({'label': 'bad'})
  return json.dumps({'summary': 'cold'}) if '"summary"' in prompt else 'cold'


@pytest.mark.parametrize('name,config', [
    ('Classify', {'field': 'text', 'labels': ['good', 'bad']}),
    ('SemanticTopK', {'field': 'text', 'criterion': 'c', 'k': 1}),
    ('SemanticReduce', {'field': 'text'}),
    ('Resolve', {'record_id': 'chat_id', 'max_model_calls': 1}),
])
def test_lineage_and_usage_on_operators(llm_server, name, config):
  server = llm_server(reply=any_answer)
  out, types, metrics = run_transform(
      getattr(beam_llm, name)(lineage=True, model_handler=openai(server), **config),
      ROWS, metrics=True)
  assert out['good']
  for row in out['good']:
    assert row.lineage.model == 'm' and row.lineage.backend == 'OpenAICompatible'
    assert row.lineage.run_id
  assert 'lineage' in dict(types['good']._fields)
  # Token usage: the backend's own metrics, whichever step called it.
  assert metrics.get('input_tokens', 0) > 0
