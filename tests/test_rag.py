"""RAG: the ingest and answer pipelines on Milvus Lite, a Milvus server and
PostgreSQL + pgvector, all real and local; retrieval checked against an exact
(brute-force cosine) search over the same embeddings."""
import json
import os

import numpy as np
import pytest

from tests.conftest import ROOT, read_json_lines, run_yaml, run_yaml_in_one_process
from tests.test_pipelines import assert_bad_lines_are_error_rows, write_with_bad_lines

KB = os.path.join(ROOT, 'pipelines', 'data', 'kb.jsonl')
QUESTIONS = os.path.join(ROOT, 'pipelines', 'data', 'questions.jsonl')
OFFLINE = {'HF_HUB_OFFLINE': '1'}
# Input lines that are not documents / questions: each costs one error row
# (line, error_type, what the reason says), not the run.
BAD_DOC_LINES = [
    ('{"id": "f98", "text": "cut o', 'invalid_json', 'not valid JSON'),
    ('not json', 'invalid_json', 'not valid JSON'),
    ('{"id": "f99", "text": 42}', 'schema', "text: 42 is not of type 'string'"),
    ('{"text": "A document without an id."}', 'schema', "'id' is a required property"),
]
BAD_QUESTION_LINES = [
    ('{"id": "q98", "question": "When do yo', 'invalid_json', 'not valid JSON'),
    ('["q99", "a list, not an object"]', 'not_an_object', 'expected a JSON object, got array'),
    ('{"id": true, "question": "Typed wrong?"}', 'schema',
     "id: True is not of type 'string', 'integer'"),
]


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope='session')
def exact_top3(encoder):
  """question id -> the 3 KB ids an exact cosine search ranks first, and
  their similarities."""
  kb, questions = _lines(KB), _lines(QUESTIONS)
  docs = encoder.encode([d['text'] for d in kb], normalize_embeddings=True)
  queries = encoder.encode([q['question'] for q in questions], normalize_embeddings=True)
  sims = queries @ docs.T
  best = {}
  for q, row in zip(questions, sims):
    order = np.argsort(-row)[:3]
    best[q['id']] = ([kb[i]['id'] for i in order], [float(row[i]) for i in order])
  return best


def count_entries(uri, collection):
  """Counted with the store's own client, not beam-llm's code."""
  if uri.startswith('postgresql://'):
    import psycopg
    with psycopg.connect(uri) as conn:
      return conn.execute(f'SELECT count(*) FROM {collection}').fetchone()[0]
  from pymilvus import MilvusClient
  from beam_llm.stores.milvus import GRPC_OPTIONS
  # The store's channel options (no idle pings), and for a server a
  # connection of its own: pymilvus shares one per address in a process.
  server = {'dedicated': True, 'timeout': 30} if '://' in uri else {}
  client = MilvusClient(uri, grpc_options=GRPC_OPTIONS, **server)
  try:
    client.load_collection(collection)
    return client.query(collection, filter='', output_fields=['count(*)'])[0]['count(*)']
  finally:
    client.close()
    if '://' not in uri:  # Milvus Lite: free the file for the next process.
      from milvus_lite.server_manager import server_manager_instance
      server_manager_instance.release_server(uri)


def test_ingest_twice_then_answer_on_each_store(
    store, embedding_model, tiny_causal_lm, exact_top3, tmp_path):
  uri, collection = store
  common = {'store': uri, 'collection': collection, 'embedding_model': embedding_model}
  # The sample KB and questions, with lines that are neither among them.
  docs = write_with_bad_lines(tmp_path / 'kb.jsonl', _lines(KB), BAD_DOC_LINES)
  asked = write_with_bad_lines(
      tmp_path / 'questions.jsonl', _lines(QUESTIONS), BAD_QUESTION_LINES)
  prefix = str(tmp_path / 'answers')
  # Ingest twice (upsert by chunk id: no duplicates), then answer: three runs
  # of `apache_beam.yaml.main`, in one process (one Beam YAML start-up).
  ingests = [('pipelines/rag_ingest.yaml', [], {
      **common, 'input': docs, 'errors': str(tmp_path / f'{run}-errors'),
      'metadata': ['category']}) for run in ('first', 'again')]
  answer = ('pipelines/rag_answer.yaml', [], {
      **common, 'input': asked, 'model': tiny_causal_lm, 'output': prefix,
      'max_new_tokens': 4, 'use_chat_template': False})
  results = run_yaml_in_one_process([*ingests, answer], env=OFFLINE)
  for run, result in zip(('first', 'again'), results):
    assert result.returncode == 0, result.stderr[-3000:]
    errors = read_json_lines(str(tmp_path / f'{run}-errors'))
    assert assert_bad_lines_are_error_rows(errors, docs, BAD_DOC_LINES) == []
  assert count_entries(uri, collection) == 30  # One chunk per short fact.
  result = results[-1]
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_json_lines(prefix)
  questions = _lines(QUESTIONS)
  errors = read_json_lines(prefix + '-errors')
  assert assert_bad_lines_are_error_rows(errors, asked, BAD_QUESTION_LINES) == []
  assert sorted(r['id'] for r in rows) == sorted(q['id'] for q in questions)
  kb = {d['id']: d['text'] for d in _lines(KB)}
  for row in rows:
    ids, sims = exact_top3[row['id']]
    # The store's top-k is the exact top-k, in order, with the same scores.
    assert row['sources'] == ids, row['id']
    assert row['snippets'] == [kb[i] for i in ids]
    assert row['scores'] == pytest.approx(sims, abs=2e-3)
    assert isinstance(row['answer'], str)
  answers = {q['id']: q['answer_id'] for q in questions}
  hits = sum(answers[r['id']] in r['sources'] for r in rows)
  assert hits / len(rows) >= 0.95


def test_bad_documents_and_questions_are_error_rows(
    embedding_model, tiny_causal_lm, tmp_path):
  docs = tmp_path / 'docs.jsonl'
  docs.write_text('\n'.join(json.dumps(d) for d in [
      {'id': 'ok', 'text': 'The shop opens at nine. ' * 40},  # Several chunks.
      {'id': None, 'text': 'A document without an id.'},  # Not a document:
      {'id': 'no_text', 'text': None},  # ReadJsonLines rejects these two.
      {'id': ' ', 'text': 'A blank id.'},
      {'id': 'empty', 'text': '   '},
  ]) + '\n')
  questions = tmp_path / 'questions.jsonl'
  questions.write_text('\n'.join(json.dumps(q) for q in [
      {'id': 'fine', 'question': 'When does the shop open?'},
      {'id': 'long', 'question': 'Tell me about opening hours. ' * 80},
      {'id': 'blank', 'question': ''},
  ]) + '\n')
  store = str(tmp_path / 'kb.db')
  common = {'store': store, 'embedding_model': embedding_model}
  result = run_yaml(
      'pipelines/rag_ingest.yaml', env=OFFLINE,
      jinja_variables={**common, 'input': str(docs), 'errors': str(tmp_path / 'ingest-errors'),
                       'chunk_size': 200, 'chunk_overlap': 40})
  assert result.returncode == 0, result.stderr[-3000:]
  errors = assert_bad_lines_are_error_rows(
      read_json_lines(str(tmp_path / 'ingest-errors')), str(docs), [
          ('{"id": null, "text": "A document without an id."}', 'schema',
           "id: None is not of type 'string', 'integer'"),
          ('{"id": "no_text", "text": null}', 'schema',
           "text: None is not of type 'string'")])
  assert sorted((e['id'], e['error_type'], e['msg']) for e in errors) == [
      (' ', 'bad_document', 'ChunkText: the document has no id'),
      ('empty', 'bad_document', 'ChunkText: the document text is empty')]
  assert count_entries(store, 'documents') == 6  # 960 characters, 200 a chunk.

  prefix = str(tmp_path / 'answers')
  result = run_yaml(
      'pipelines/rag_answer.yaml', env=OFFLINE,
      jinja_variables={**common, 'input': str(questions), 'model': tiny_causal_lm,
                       'output': prefix, 'max_new_tokens': 4, 'top_k': 2,
                       'use_chat_template': False})
  assert result.returncode == 0, result.stderr[-3000:]
  [answer] = read_json_lines(prefix)
  assert answer['id'] == 'fine' and answer['sources'] == ['ok']
  assert len(answer['snippets']) == 2
  errors = {e['id']: e for e in read_json_lines(prefix + '-errors')}
  assert {k: e['error_type'] for k, e in errors.items()} == {
      'long': 'text_too_long', 'blank': 'bad_text'}
  assert 'more than the 256 this embedding model takes' in errors['long']['msg']


def test_unreachable_store_fails_at_build_naming_transform_and_store(embedding_model):
  result = run_yaml(
      'pipelines/rag_ingest.yaml', env=OFFLINE,
      jinja_variables={'store': 'http://127.0.0.1:9', 'embedding_model': embedding_model},
      timeout=180)
  assert result.returncode != 0
  assert "WriteToVectorStore: store Milvus 'http://127.0.0.1:9'" in result.stderr
  assert 'cannot connect' in result.stderr
  assert 'Running pipeline' not in result.stdout + result.stderr
