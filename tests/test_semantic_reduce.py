"""SemanticReduce: a reduce whose answer is a JSON Schema's typed fields,
per key or for the whole input (per window). The fake model's rule folds:
it adds up the problems named in raw texts and in earlier partial answers,
so the final answer is exact however the group was cut into rounds."""
import json
import re

import apache_beam as beam

from beam_llm import SemanticReduce
from tests.beam_helpers import run_transform
from tests.test_semantic_operators import openai

SCHEMA = {'type': 'object', 'properties': {
    'late': {'type': 'integer'}, 'rude': {'type': 'integer'},
    'worst': {'type': 'object', 'properties': {'problem': {'type': 'string'}},
              'required': ['problem']}},
    'required': ['late', 'rude', 'worst']}


def tally(prompt):
  body = re.search(r'<texts>\n(.*)\n</texts>', prompt, re.S).group(1)
  late = rude = 0
  for text in body.split('\n\n'):
    if text.startswith('{'):
      partial = json.loads(text)
      late, rude = late + partial['late'], rude + partial['rude']
    else:
      late, rude = late + text.count('late'), rude + text.count('rude')
  worst = 'late' if late >= rude else 'rude'
  return json.dumps({'late': late, 'rude': rude, 'worst': {'problem': worst}})


def complaints(n):
  return [{'shop': 'north' if i % 3 else 'south', 'ts': i,
           'text': f'complaint {i}: ' + ('the food was late' if i % 4 else
                                          'the driver was rude and late')}
          for i in range(n)]


def truth(rows):
  late = sum(r['text'].count('late') for r in rows)
  rude = sum(r['text'].count('rude') for r in rows)
  return late, rude


def test_no_key_one_typed_answer_for_the_whole_input_in_rounds(llm_server):
  server = llm_server(reply=tally)
  rows = complaints(40)
  out, types, metrics = run_transform(
      SemanticReduce(field='text', instruction='Count the problems.', schema=SCHEMA,
                     max_input_tokens=400, max_new_tokens=40,
                     model_handler=openai(server)),
      rows, metrics=True)
  [answer] = out['good']
  assert (answer.late, answer.rude) == truth(rows)
  assert answer.worst.problem == 'late' and answer.count == 40
  assert dict(types['good']._fields)['late'] == int
  partial = [r for r in server.log if 'larger collection' in r.prompt]
  assert partial and len(server.log) == metrics['model_calls'] > len(partial)
  # Every prompt within the budget (3 characters per token, the estimate).
  assert max(len(r.prompt) for r in server.log) <= 3 * 400


def test_per_key_and_per_window_without_a_key(llm_server):
  server = llm_server(reply=tally)
  rows = complaints(12)
  out, _ = run_transform(
      SemanticReduce(field='text', group_by='shop', schema=SCHEMA,
                     model_handler=openai(server)), rows)
  got = {r.shop: (r.late, r.rude, r.count) for r in out['good']}
  for shop in ('north', 'south'):
    mine = [r for r in rows if r['shop'] == shop]
    assert got[shop] == (*truth(mine), len(mine))

  windowed = (beam.Map(lambda r: beam.window.TimestampedValue(r, r.ts))
              | beam.WindowInto(beam.window.FixedWindows(6))
              | SemanticReduce(field='text', schema=SCHEMA,
                               model_handler=openai(server)))
  out, _ = run_transform(windowed, rows)
  # Timestamps 0..11 in windows of 6: two answers, one per window.
  assert sorted((r.late, r.rude, r.count) for r in out['good']) == sorted(
      [(*truth(rows[:6]), 6), (*truth(rows[6:]), 6)])


def test_an_answer_outside_the_schema_fails_only_its_group(llm_server):
  def reply(prompt):
    return '{"late": "many"}' if 'south' in prompt else tally(prompt)

  server = llm_server(reply=reply)
  rows = [{**r, 'text': f'{r["shop"]}: {r["text"]}'} for r in complaints(9)]
  out, _ = run_transform(
      SemanticReduce(field='text', group_by='shop', schema=SCHEMA,
                     model_handler=openai(server),
                     error_handling={'output': 'failed'}), rows)
  assert [r.shop for r in out['good']] == ['north']
  [failed] = out['failed']
  assert (failed.element.shop, failed.element.count) == ('south', 3)
  assert failed.error_type == 'schema' and 'many' in failed.msg
  assert failed.msg.startswith('SemanticReduce (schema)')
