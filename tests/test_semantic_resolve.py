"""Resolve on the OpenAI-compatible fake server (the real `openai` client),
whose answers follow a known rule: two records are the same company when
their names agree once case, punctuation, `&`/`and` and legal suffixes are
set aside, and their cities agree. The blocking embeddings are character
trigrams (fake embedding server), so near names are near vectors."""
import json
import random
import re

import pytest

from beam_llm import Resolve
from beam_llm.testing.fake_embedding_server import FakeEmbeddingServer, trigram_vector
from tests.beam_helpers import run_transform
from tests.test_semantic_operators import openai

_SUFFIXES = {'inc', 'incorporated', 'llc', 'ltd', 'limited', 'co', 'company',
             'corp', 'corporation'}
_WORDS = ('blue harbor north star green river iron oak silver maple golden '
          'pine red stone bright lake swift cedar urban summit').split()
_TRADES = ('bakery books logistics dental plumbing media foods labs tools '
           'motors design travel').split()
_CITIES = ['Austin', 'Boston', 'Denver', 'Seattle', 'Miami']


def normalized(name):
  name = name.lower().replace('&', ' and ')
  words = re.sub(r'[^a-z0-9 ]', ' ', name).split()
  return ' '.join(w for w in words if w not in _SUFFIXES)


def same_company(prompt):
  names = re.findall(r'- name: (.*)\n', prompt)
  cities = re.findall(r'- city: (.*)\n', prompt)
  same = normalized(names[0]) == normalized(names[1]) and cities[0] == cities[1]
  return json.dumps({'holds': same})


def variant(name, rng):
  """A spelling of `name` that normalizes the same."""
  words = name.split()
  if rng.random() < 0.3 and 'and' in words:
    words = ['&' if w == 'and' else w for w in words]
  text = ' '.join(words)
  text = rng.choice([text, text.upper(), text.lower(), text.title()])
  if rng.random() < 0.5:
    text += rng.choice([' Inc.', ', LLC', ' Ltd', ' Co.', ' Corporation'])
  return text


def companies(n_rows=500, seed=11):
  """Rows and the true clusters (sets of record ids)."""
  rng = random.Random(seed)
  names = set()
  while len(names) < 150:
    first, second = rng.sample(_WORDS, 2)
    trade = rng.choice(_TRADES)
    names.add(f'{first} {second} {trade}' if rng.random() < 0.8 else
              f'{first} and {second} {trade}')
  rows, clusters, names = [], [], sorted(names)
  while len(rows) < n_rows:
    name = names[len(clusters)]
    city = rng.choice(_CITIES)
    size = min(rng.choice([1, 2, 3, 4, 5, 6]), n_rows - len(rows))
    ids = []
    for _ in range(size):
      ids.append(len(rows))
      rows.append({'record_id': len(rows), 'name': variant(name, rng), 'city': city})
    clusters.append(frozenset(ids))
  order = list(range(n_rows))
  rng.shuffle(order)  # Members of a cluster are not neighbours in the input.
  return [rows[i] for i in order], clusters


def embeddings_config(server):
  return {'type': 'OpenAICompatible',
          'config': {'model': 'e', 'base_url': server.url + '/v1'}}


def clusters_of(out_rows):
  found = {}
  for r in out_rows:
    found.setdefault(r.entity_id, set()).add(r.record_id)
  return {frozenset(ids) for ids in found.values()}, found


def test_500_rows_resolve_exactly_with_under_5_percent_of_the_pairs(llm_server):
  server = llm_server(reply=same_company)
  embeddings = FakeEmbeddingServer(dim=256, vector=trigram_vector).start()
  rows, truth = companies(500)
  try:
    out, _, metrics = run_transform(
        Resolve(record_id='record_id', fields=['name', 'city'],
                embedding_model_handler=embeddings_config(embeddings),
                text='name', block_top_k=8, model_handler=openai(server),
                max_batch_size=64),
        rows, metrics=True)
  finally:
    embeddings.stop()
  found, by_entity = clusters_of(out['good'])
  assert len(out['good']) == 500  # Every row, once.
  assert found == set(truth)
  # An entity's id is its smallest record id.
  assert all(entity == min(ids) for entity, ids in by_entity.items())
  naive = 500 * 499 // 2  # 124,750
  calls = len(server.log)
  assert metrics['candidate_pairs'] == calls
  assert calls <= 0.05 * naive, (calls, naive)
  print(f'Resolve 500 rows: {calls} model calls, naive {naive} '
        f'({100 * calls / naive:.2f} %)')


def test_block_by_and_merge_fields(llm_server):
  server = llm_server(reply=same_company)
  rows = [{'record_id': 'a', 'name': 'Blue Oak Books', 'city': 'Austin', 'phone': None},
          {'record_id': 'b', 'name': 'BLUE OAK BOOKS, LLC', 'city': 'Austin', 'phone': '555'},
          {'record_id': 'c', 'name': 'blue oak books inc.', 'city': 'Austin', 'phone': '555'},
          {'record_id': 'd', 'name': 'Blue Oak Books', 'city': 'Boston', 'phone': '777'},
          {'record_id': 'e', 'name': 'Red Lake Foods', 'city': 'Austin', 'phone': '123'}]
  out, types, metrics = run_transform(
      Resolve(record_id='record_id', fields=['name', 'city'], block_by='city',
              merge_fields=['name', 'phone'], model_handler=openai(server)),
      rows, metrics=True)
  assert sorted((r.entity_id, r.records, r.name, r.phone) for r in out['good']) == [
      ('a', ['a', 'b', 'c'], 'Blue Oak Books', '555'),  # Ties: the earliest record.
      ('d', ['d'], 'Blue Oak Books', '777'),
      ('e', ['e'], 'Red Lake Foods', '123')]
  # Austin: 4 rows -> 6 pairs; Boston: 1 row -> none.
  assert metrics['candidate_pairs'] == 6 == len(server.log)


def test_an_undecided_pair_is_an_error_row_and_counts_as_different(llm_server):
  def reply(prompt):
    return 'perhaps' if 'LLC' in prompt else same_company(prompt)

  server = llm_server(reply=reply)
  rows = [{'record_id': 1, 'name': 'Blue Oak Books', 'city': 'Austin'},
          {'record_id': 2, 'name': 'BLUE OAK BOOKS, LLC', 'city': 'Austin'},
          {'record_id': 3, 'name': 'blue oak books inc.', 'city': 'Austin'}]
  out, _ = run_transform(
      Resolve(record_id='record_id', max_model_calls=3, fields=['name', 'city'],
              model_handler=openai(server), error_handling={'output': 'failed'}),
      rows)
  assert sorted((r.record_id, r.entity_id) for r in out['good']) == [
      (1, 1), (2, 2), (3, 1)]
  assert sorted((e.element.first_record_id, e.element.second_record_id)
                for e in out['failed']) == [(1, 2), (2, 3)]
  assert all(e.msg.startswith('Resolve') for e in out['failed'])


def test_without_blocking_the_cap_is_required_and_enforced(llm_server):
  server = llm_server(reply=same_company)
  with pytest.raises(ValueError, match="'max_model_calls' is required without blocking"):
    Resolve(record_id='record_id', model_handler=openai(server))
  rows, _ = companies(10)
  with pytest.raises(Exception, match='45 candidate pairs, more than max_model_calls'):
    run_transform(Resolve(record_id='record_id', max_model_calls=44,
                          model_handler=openai(server)), rows)
  assert server.log == []


def test_windowed_input_is_refused_at_build(llm_server):
  import apache_beam as beam
  server = llm_server(reply=same_company)
  rows, _ = companies(4)
  with pytest.raises(ValueError, match="Resolve: option 'input' is windowed"):
    run_transform(beam.WindowInto(beam.window.FixedWindows(60))
                  | Resolve(record_id='record_id', block_by='city',
                            model_handler=openai(server)), rows)


def test_a_row_that_cannot_be_embedded_is_its_own_entity_and_an_error_row(
    llm_server):
  """Embedding blocking: a row with an empty text matches nothing (it is an
  entity of its own) and, as an undecided pair does, becomes an error row,
  instead of failing the run."""
  server = llm_server(reply=same_company)
  embeddings = FakeEmbeddingServer(dim=256, vector=trigram_vector).start()
  rows = [{'record_id': 1, 'name': 'Blue Oak Books', 'city': 'Austin'},
          {'record_id': 2, 'name': 'blue oak books inc.', 'city': 'Austin'},
          {'record_id': 3, 'name': '', 'city': 'Austin'}]
  try:
    out, _ = run_transform(
        Resolve(record_id='record_id', fields=['name', 'city'], text='name',
                embedding_model_handler=embeddings_config(embeddings),
                block_top_k=2, model_handler=openai(server),
                error_handling={'output': 'failed'}), rows)
  finally:
    embeddings.stop()
  assert sorted((r.record_id, r.entity_id) for r in out['good']) == [
      (1, 1), (2, 1), (3, 3)]
  [error] = out['failed']
  assert error.element.record_id == 3 and error.error_type == 'bad_text'
  assert error.msg.startswith('Resolve (bad_text): the text is empty')
