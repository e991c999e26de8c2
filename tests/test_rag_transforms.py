"""ChunkText, WriteToVectorStore and SearchVectorStore in-process, on real
stores: chunk ids, metadata filters, hits in a RenderPrompt loop, bad rows
and build-time errors."""
import json
import os

import apache_beam as beam
import pytest

import beam_llm
from beam_llm._config import ConfigError
from beam_llm.stores import StoreUnavailable
from tests.beam_helpers import run_transform
from tests.conftest import ROOT

KB = os.path.join(ROOT, 'pipelines', 'data', 'kb.jsonl')


def _kb_rows(encoder):
  with open(KB) as f:
    docs = [json.loads(line) for line in f]
  vectors = encoder.encode([d['text'] for d in docs], normalize_embeddings=True)
  return [dict(d, chunk_id=d['id'] + '#0', embedding=[float(x) for x in v])
          for d, v in zip(docs, vectors)]


def test_chunks_overlap_and_keep_stable_ids():
  text = ' '.join(f'word{i}' for i in range(200))
  rows = [{'id': 'd1', 'text': text, 'lang': 'en'}]
  chunk = lambda: beam_llm.ChunkText(chunk_size=120, chunk_overlap=30)
  out, _ = run_transform(chunk(), rows)
  chunks = sorted(out['good'], key=lambda r: r.chunk_index)
  assert [c.chunk_id for c in chunks] == [f'd1#{i}' for i in range(len(chunks))]
  assert len(chunks) > 5 and all(len(c.text) <= 120 for c in chunks)
  assert all(c.lang == 'en' and c.id == 'd1' for c in chunks)
  for a, b in zip(chunks, chunks[1:]):  # Neighbours share their boundary words.
    assert a.text.split()[-1] in b.text.split()[:8]
  assert ' '.join(chunks[0].text.split()[:3]) == 'word0 word1 word2'
  again, _ = run_transform(chunk(), rows)
  assert sorted((r.chunk_id, r.text) for r in again['good']) == sorted(
      (r.chunk_id, r.text) for r in chunks)


def test_renamed_options_keep_working_one_release_with_a_warning(
    caplog, monkeypatch):
  """ChunkText's `id` is now `doc_id` (the naming rule: inputs by role)."""
  rows = [{'key': 'd7', 'text': 'one two three'}]
  with pytest.warns(DeprecationWarning, match="'id' is now called 'doc_id'"):
    old = beam_llm.ChunkText(id='key')
  out, _ = run_transform(old, rows)
  new, _ = run_transform(beam_llm.ChunkText(doc_id='key'), rows)
  assert [r.chunk_id for r in out['good']] == [
      r.chunk_id for r in new['good']] == ['d7#0']
  assert "option 'id' is now called 'doc_id'" in caplog.text
  monkeypatch.setenv('BEAM_LLM_CHECK_REACHABLE', '0')  # No store to reach.
  with pytest.warns(DeprecationWarning, match="'sources' is now called 'sources_output'"):
    beam_llm.SearchVectorStore(store='postgresql://h/db', sources='src')


def test_chunk_options_are_checked_at_build():
  with pytest.raises(ConfigError, match="ChunkText: option 'chunk_overlap' must be"):
    beam_llm.ChunkText(chunk_size=100, chunk_overlap=100)
  with pytest.raises(ConfigError, match="EmbedText: option 'model_handler.config.modle' is unknown .did you mean 'model'"):
    beam_llm.EmbedText(model_handler={'type': 'SentenceTransformers', 'config': {'modle': 'm'}})
  with pytest.raises(ConfigError, match="names an unknown embedding backend 'HuggingFace'"):
    beam_llm.EmbedText(model_handler={'type': 'HuggingFace', 'config': {'model': 'm'}})


def test_filtered_search_and_hits_in_a_prompt_loop(store, encoder):
  uri, collection = store
  rows = _kb_rows(encoder)
  written, _ = run_transform(beam_llm.WriteToVectorStore(
      store=uri, collection=collection, metadata=['category']), rows)
  assert len(written['good']) == 30

  question = 'Can I rent a bike?'
  query = [float(x) for x in encoder.encode(question, normalize_embeddings=True)]

  class SearchThenPrompt(beam.PTransform):
    def __init__(self, **search):
      self._search = search

    def expand(self, pcoll):
      found = pcoll | beam_llm.SearchVectorStore(
          store=uri, collection=collection, **self._search)
      return found | beam_llm.RenderPrompt(
          template='{% for doc in context %}[{{ doc.doc_id }} {{ "%.2f" % doc.score }}] '
                   '{{ doc.text }}\n{% endfor %}Q: {{ question }}')

  out, _ = run_transform(
      SearchThenPrompt(top_k=5, filter={'category': 'rental'}),
      [{'id': 'q', 'question': question, 'embedding': query}])
  [row] = out['good']
  assert sorted(row.sources) == ['f09', 'f10', 'f11']  # Only 3 rental facts.
  assert all(json.loads(h.metadata) == {'category': 'rental'} for h in row.context)
  assert [h.score for h in row.context] == sorted(
      (h.score for h in row.context), reverse=True)
  lines = row.prompt.splitlines()
  assert lines[0].startswith(f'[{row.context[0].doc_id} ')
  assert lines[0].endswith(row.context[0].text) and lines[-1] == f'Q: {question}'

  out, _ = run_transform(
      beam_llm.SearchVectorStore(store=uri, collection=collection,
                                 filter={'doc_id': 'f24'}),
      [{'id': 'q', 'embedding': query}])
  assert out['good'][0].sources == ['f24']


def test_rows_a_store_cannot_take_are_error_rows(tmp_path, encoder):
  rows = _kb_rows(encoder)[:2]
  rows.append(dict(rows[0], chunk_id='short', embedding=[0.5, 0.5]))  # Wrong size.
  rows.append(dict(rows[0], chunk_id='none', embedding=[]))
  out, _ = run_transform(beam_llm.WriteToVectorStore(
      store=str(tmp_path / 'kb.db'), error_handling={'output': 'failed'}), rows)
  assert sorted(r.chunk_id for r in out['good']) == ['f01#0', 'f02#0']
  failed = {e.element.chunk_id: e for e in out['failed']}
  assert {k: e.error_type for k, e in failed.items()} == {
      'short': 'bad_record', 'none': 'bad_record'}
  assert '2 dimensions but collection' in failed['short'].msg


def test_store_problems_fail_at_build_naming_transform_and_store(tmp_path):
  with pytest.raises(ConfigError, match="WriteToVectorStore: option 'store' has an unknown scheme 'redis'"):
    beam_llm.WriteToVectorStore(store='redis://localhost:6379')
  with pytest.raises(ConfigError, match="option 'collection' must be a name"):
    beam_llm.WriteToVectorStore(store=str(tmp_path / 'kb.db'), collection='my kb')
  with pytest.raises(StoreUnavailable) as exn:
    beam_llm.WriteToVectorStore(store='postgresql://me:s3cret@127.0.0.1:9/kb')
  assert "WriteToVectorStore: store PostgreSQL 'postgresql://me:***@127.0.0.1:9/kb'" in str(exn.value)
  assert 's3cret' not in str(exn.value)
  with pytest.raises(StoreUnavailable, match='SearchVectorStore: store Milvus Lite .* no such file'):
    beam_llm.SearchVectorStore(store=str(tmp_path / 'missing.db'))
  with pytest.raises(ConfigError, match="option 'filter' has a value for 'tags'"):
    beam_llm.SearchVectorStore(store=str(tmp_path / 'kb.db'), filter={'tags': ['a']})
