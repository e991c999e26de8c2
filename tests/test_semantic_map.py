"""SemanticMap: an instruction per row, on the OpenAI-compatible fake server
(the real `openai` client) and on a tiny random-weight model, where the
constraint makes every answer a string field."""
import json

from beam_llm import SemanticMap
from tests.beam_helpers import run_transform
from tests.test_semantic_operators import hf, openai


def test_each_row_gets_its_answer_and_nothing_is_lost(llm_server):
  def reply(prompt):
    text = prompt.split('<text>\n')[1].split('\n</text>')[0]
    if 'prose' in text:
      return f'In French: {text}'  # No structured output: taken as it is.
    if 'cut' in text:
      return '{"output": "half an ans'  # Cut off by max_tokens.
    if 'long' in text:
      return json.dumps({'output': 'x' * 50})
    return json.dumps({'output': text.upper()})

  server = llm_server(reply=reply)
  rows = [{'id': i, 'text': t} for i, t in enumerate(
      ['bonjour', 'some prose', 'cut here', 'too long', 'merci'])]
  out, types = run_transform(
      SemanticMap(instruction='Shout it. {{ not a template }}', field='text',
                  output='shouted', max_output_chars=30,
                  model_handler=openai(server), keep_fields=['id'],
                  error_handling={'output': 'failed'}),
      rows)
  good = {r.id: r.shouted for r in out["good"]}
  assert good == {0: 'BONJOUR', 1: 'In French: some prose', 4: 'MERCI'}
  assert {e.element.id: e.error_type for e in out['failed']} == {
      2: 'truncated', 3: 'too_long'}
  assert [n for n, _ in types['good']._fields] == ['id', 'shouted']
  user = server.log[0].body['messages'][1]['content']
  assert user.startswith('Shout it. {{ not a template }}')


def test_on_random_weights_every_row_is_a_string_or_an_error(tiny_causal_lm):
  rows = [{'id': i, 'text': f'the customer was unhappy about order {i}'}
          for i in range(6)]
  out, _ = run_transform(
      SemanticMap(instruction='Summarize in five words.', field='text',
                  model_handler=hf(tiny_causal_lm), max_new_tokens=40,
                  error_handling={'output': 'failed'}),
      rows)
  ids = sorted([r.id for r in out['good']] + [e.element.id for e in out['failed']])
  assert ids == list(range(6))
  assert all(isinstance(r.result, str) for r in out['good'])
  assert {e.error_type for e in out['failed']} <= {'truncated'}
