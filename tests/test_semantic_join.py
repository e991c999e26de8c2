"""SemanticJoin on the OpenAI-compatible fake server (the real `openai`
client): blocking decides which pairs the model sees; only pairs that hold
come out; a join without blocking stops at max_model_calls."""
import json
import re
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from beam_llm import SemanticJoin
from beam_llm.testing.fake_embedding_server import FakeEmbeddingServer
from tests.beam_helpers import _SINKS, _metrics, _record
from tests.test_semantic_operators import openai

CHATS = [{'chat_id': 1, 'category': 'food', 'text': 'my pizza was cold'},
         {'chat_id': 2, 'category': 'food', 'text': 'the fries were great'},
         {'chat_id': 3, 'category': 'app', 'text': 'the app crashes'}]
PRODUCTS = [{'sku': 'P1', 'category': 'food', 'name': 'pizza'},
            {'sku': 'F1', 'category': 'food', 'name': 'fries'},
            {'sku': 'A1', 'category': 'app', 'name': 'mobile app'},
            {'sku': 'X1', 'category': None, 'name': 'gift card'}]


def about_product(prompt):
  """The fake model: the chat mentions the product's name."""
  text = re.search(r'- text: (.*)\n', prompt).group(1)
  name = re.search(r'- name: (.*)\n', prompt).group(1)
  return json.dumps({'holds': name.split()[-1] in text})


def run_join(join):
  key = str(uuid.uuid4())
  p = beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner']))
  left = p | 'L' >> beam.Create([beam.Row(**c) for c in CHATS])
  right = p | 'R' >> beam.Create([beam.Row(**x) for x in PRODUCTS])
  out = {'left': left, 'right': right} | join
  out = out if isinstance(out, dict) else {'good': out}
  _ = out['good'] | beam.Map(lambda r: _record(key, r._asdict()))
  result = p.run()
  result.wait_until_finish()
  return _SINKS.pop(key, []), _metrics(result)


def test_block_by_a_key_asks_only_about_pairs_that_share_it(llm_server):
  server = llm_server(reply=about_product)
  rows, metrics = run_join(SemanticJoin(
      condition='The chat is about this product.',
      left_fields=['text'], right_fields=['name'],
      block_by={'left': 'category', 'right': 'category'},
      model_handler=openai(server)))
  assert sorted((r['left_chat_id'], r['right_sku']) for r in rows) == [
      (1, 'P1'), (2, 'F1'), (3, 'A1')]
  # 2 food chats x 2 food products + 1 app x 1 app; none with the gift card.
  assert metrics['candidate_pairs'] == 5 == len(server.log)
  assert set(rows[0]) == {'left_chat_id', 'left_category', 'left_text',
                          'right_sku', 'right_category', 'right_name'}


def test_embedding_blocking_keeps_the_nearest_right_rows(llm_server):
  server = llm_server(reply=about_product)
  embeddings = FakeEmbeddingServer().start()
  try:
    rows, metrics = run_join(SemanticJoin(
        condition='The chat is about this product.',
        embedding_model_handler={'type': 'OpenAICompatible', 'config': {
            'model': 'e', 'base_url': embeddings.url + '/v1'}},
        left_text='text', right_text='name', block_top_k=2,
        model_handler=openai(server)))
  finally:
    embeddings.stop()
  assert metrics['candidate_pairs'] == 3 * 2 == len(server.log)
  asked = {(re.search(r'- text: (.*)\n', r.prompt).group(1),
            re.search(r'- name: (.*)\n', r.prompt).group(1)) for r in server.log}
  assert len(asked) == 6
  assert all(about_product(f'- text: {t}\n- name: {n}\n') == '{"holds": true}'
             for t, n in {(r['left_text'], r['right_name']) for r in rows})


def test_without_blocking_the_cap_is_required_and_enforced(llm_server):
  server = llm_server(reply=about_product)
  with pytest.raises(ValueError, match="'max_model_calls' is required without blocking"):
    SemanticJoin(condition='x', model_handler=openai(server))
  with pytest.raises(Exception, match='12 candidate pairs, more than max_model_calls'):
    run_join(SemanticJoin(condition='The chat is about this product.',
                          max_model_calls=10, model_handler=openai(server)))
  assert server.log == []  # Stopped before asking anything.
  rows, metrics = run_join(SemanticJoin(
      condition='The chat is about this product.', max_model_calls=12,
      model_handler=openai(server)))
  assert metrics['candidate_pairs'] == 12
  assert sorted((r['left_chat_id'], r['right_sku']) for r in rows) == [
      (1, 'P1'), (2, 'F1'), (3, 'A1')]


def test_through_beam_yaml_with_two_named_inputs(llm_server, tmp_path):
  import yaml
  from tests.conftest import read_json_lines, run_yaml
  server = llm_server(reply=about_product)
  for name, rows in (('chats', CHATS), ('products', PRODUCTS[:3])):
    (tmp_path / f'{name}.jsonl').write_text(
        ''.join(json.dumps(r) + '\n' for r in rows))
  spec = {'pipeline': {'transforms': [
      {'type': 'ReadFromJson', 'name': 'Chats',
       'config': {'path': str(tmp_path / 'chats.jsonl')}},
      {'type': 'ReadFromJson', 'name': 'Products',
       'config': {'path': str(tmp_path / 'products.jsonl')}},
      {'type': 'SemanticJoin', 'input': {'left': 'Chats', 'right': 'Products'},
       'config': {'condition': 'The chat is about this product.',
                  'block_by': {'left': 'category', 'right': 'category'},
                  'left_fields': ['text'], 'right_fields': ['name'],
                  'model_handler': openai(server)}},
      {'type': 'WriteToJson', 'input': 'SemanticJoin',
       'config': {'path': str(tmp_path / 'joined')}},
  ]}, 'providers': [{'type': 'python', 'config': {}, 'transforms': {
      'SemanticJoin': 'beam_llm.SemanticJoin'}}]}
  path = tmp_path / 'join.yaml'
  path.write_text(yaml.safe_dump(spec, sort_keys=False))
  result = run_yaml(str(path))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_json_lines(str(tmp_path / 'joined'))
  assert sorted((r['left_chat_id'], r['right_sku']) for r in rows) == [
      (1, 'P1'), (2, 'F1'), (3, 'A1')]


def test_a_pair_the_model_cannot_decide_is_an_error_row_the_others_join(
    llm_server):
  def reply(prompt):
    if 'crashes' in prompt:
      return 'maybe?'  # Not a decision.
    return about_product(prompt)

  server = llm_server(reply=reply)
  key = str(uuid.uuid4())
  p = beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner']))
  left = p | 'L' >> beam.Create([beam.Row(**c) for c in CHATS])
  right = p | 'R' >> beam.Create([beam.Row(**x) for x in PRODUCTS])
  out = {'left': left, 'right': right} | SemanticJoin(
      condition='The chat is about this product.',
      block_by={'left': 'category', 'right': 'category'},
      model_handler=openai(server), error_handling={'output': 'failed'})
  for tag in ('good', 'failed'):
    _ = out[tag] | f'Keep{tag}' >> beam.Map(
        lambda r, t=tag: _record(key + t, r))
  p.run().wait_until_finish()
  good = _SINKS.pop(key + 'good', [])
  failed = _SINKS.pop(key + 'failed', [])
  assert sorted((r.left_chat_id, r.right_sku) for r in good) == [(1, 'P1'), (2, 'F1')]
  assert [(e.element.left_chat_id, e.element.right_sku) for e in failed] == [(3, 'A1')]
  assert failed[0].msg.startswith('SemanticJoin')


def test_200_by_200_with_embedding_blocking_finds_every_true_pair_in_under_5_percent(
    llm_server):
  """The target: every true pair, at most 5 % of the naive 200 x 200 calls.
  Each chat names one product (in its own words around it); the embeddings
  are character trigrams, so the chat lies near the product it names."""
  import random
  from beam_llm.testing.fake_embedding_server import trigram_vector
  rng = random.Random(5)
  words = ('walnut desk lamp steel kettle linen throw velvet chair oak shelf '
           'glass vase wool rug copper pan bamboo tray').split()
  names = set()
  while len(names) < 200:
    names.add(' '.join(rng.sample(words, 3)))
  names = sorted(names)
  openers = ['my order of the {} arrived broken',
             'where is the {} I ordered last week',
             'can I return the {} please', 'the {} is great, thanks']
  chats = [{'chat_id': i, 'text': rng.choice(openers).format(name)}
           for i, name in enumerate(rng.sample(names, 200))]
  products = [{'sku': f'S{i}', 'name': name} for i, name in enumerate(names)]

  def names_product(prompt):
    text = re.search(r'- text: (.*)\n', prompt).group(1)
    name = re.search(r'- name: (.*)\n', prompt).group(1)
    return json.dumps({'holds': f' {name} ' in f' {text} '})

  server = llm_server(reply=names_product)
  embeddings = FakeEmbeddingServer(dim=256, vector=trigram_vector).start()
  key = str(uuid.uuid4())
  p = beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner']))
  left = p | 'L' >> beam.Create([beam.Row(**c) for c in chats])
  right = p | 'R' >> beam.Create([beam.Row(**x) for x in products])
  out = {'left': left, 'right': right} | SemanticJoin(
      condition='The chat is about this product.',
      left_fields=['text'], right_fields=['name'],
      embedding_model_handler={'type': 'OpenAICompatible', 'config': {
          'model': 'e', 'base_url': embeddings.url + '/v1'}},
      left_text='text', right_text='name', block_top_k=5,
      model_handler=openai(server), max_batch_size=64)
  _ = out | beam.Map(lambda r: _record(key, (r.left_chat_id, r.right_sku)))
  try:
    result = p.run()
    result.wait_until_finish()
  finally:
    embeddings.stop()
  by_name = {x['name']: x['sku'] for x in products}
  truth = {(c['chat_id'], by_name[n]) for c in chats for n in names
           if f' {n} ' in f' {c["text"]} '}
  assert len(truth) == 200
  assert set(_SINKS.pop(key, [])) == truth
  calls = _metrics(result)['candidate_pairs']
  assert calls == len(server.log) <= 0.05 * 200 * 200, calls
  print(f'SemanticJoin 200 x 200: {calls} model calls, naive 40000 '
        f'({100 * calls / 40000:.2f} %)')


def _join_with_an_empty_text(llm_server, **options):
  server = llm_server(reply=about_product)
  embeddings = FakeEmbeddingServer().start()
  key = str(uuid.uuid4())
  p = beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner']))
  left = p | 'L' >> beam.Create(
      [beam.Row(**c) for c in CHATS] +
      [beam.Row(chat_id=4, category='food', text='')])
  right = p | 'R' >> beam.Create([beam.Row(**x) for x in PRODUCTS])
  out = {'left': left, 'right': right} | SemanticJoin(
      condition='The chat is about this product.',
      embedding_model_handler={'type': 'OpenAICompatible', 'config': {
          'model': 'e', 'base_url': embeddings.url + '/v1'}},
      left_text='text', right_text='name', block_top_k=len(PRODUCTS),
      model_handler=openai(server), **options)
  out = out if isinstance(out, dict) else {'good': out}
  for tag, pcoll in out.items():
    _ = pcoll | f'Keep{tag}' >> beam.Map(lambda r, t=tag: _record(key + t, r))
  try:
    p.run().wait_until_finish()
  finally:
    embeddings.stop()
  return {tag: _SINKS.pop(key + tag, []) for tag in out}


def test_a_row_that_cannot_be_embedded_is_an_error_row_the_others_join(
    llm_server):
  out = _join_with_an_empty_text(llm_server, error_handling={'output': 'failed'})
  assert sorted((r.left_chat_id, r.right_sku) for r in out['good']) == [
      (1, 'P1'), (2, 'F1'), (3, 'A1')]
  [error] = out['failed']
  assert error.element.chat_id == 4 and error.error_type == 'bad_text'
  assert error.msg.startswith('SemanticJoin (bad_text): the text is empty')


def test_without_error_handling_a_row_that_cannot_be_embedded_fails_the_run(
    llm_server):
  with pytest.raises(Exception, match=r'SemanticJoin \(bad_text\): the text '
                     r'is empty[\s\S]*set error_handling'):
    _join_with_an_empty_text(llm_server)
