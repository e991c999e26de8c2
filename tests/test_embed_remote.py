"""EmbedText's remote backends with their real clients against a local
embedding service: batched requests, retries on 429/5xx under the shared
remote-call policy, one rejected text failing only its own row."""
import pytest

import beam_llm
from beam_llm.testing.fake_embedding_server import FakeEmbeddingServer, fake_vector
from tests.beam_helpers import run_transform


@pytest.fixture
def embedding_server():
  servers = []

  def start(**kwargs):
    servers.append(FakeEmbeddingServer(**kwargs).start())
    return servers[-1]

  yield start
  for s in servers:
    s.stop()


def _config(kind, server):
  if kind == 'OpenAICompatible':
    return {'model': 'emb', 'base_url': server.url + '/v1', 'api_key_env': 'FAKE_EMB_KEY'}
  return {'model': 'text-embedding-005', 'project': 'p', 'location': 'us-central1',
          'api_endpoint': server.url, 'task_type': 'RETRIEVAL_QUERY'}


@pytest.mark.parametrize('kind', ['OpenAICompatible', 'VertexAI'])
def test_remote_embeddings_batch_retry_and_isolate_bad_texts(
    kind, embedding_server, monkeypatch):
  monkeypatch.setenv('FAKE_EMB_KEY', 'sk-emb-5678')
  server = embedding_server(script=['429', '503'], retry_after=0.05)
  texts = [f'text number {i}' for i in range(10)] + ['please REJECT me', '']
  config = dict(_config(kind, server), texts_per_request=4, initial_backoff_secs=0.05)
  out, types = run_transform(
      beam_llm.EmbedText(
          model_handler={'type': kind, 'config': config},
          min_batch_size=12, max_batch_size=12,
          error_handling={'output': 'failed'}),
      [{'id': i, 'text': t} for i, t in enumerate(texts)])
  good = {r.id: r.embedding for r in out['good']}
  assert sorted(good) == list(range(10))
  for i in range(10):
    assert good[i] == pytest.approx(fake_vector(texts[i]))
  failed = {e.element.id: e for e in out['failed']}
  assert {k: e.error_type for k, e in failed.items()} == {
      10: 'client_error', 11: 'bad_text'}
  assert 'sk-emb-5678' not in failed[10].msg
  sizes = [n for _, n, _, fault in server.log if fault is None]
  # 11 non-empty texts in requests of at most 4; the rejected request of 3
  # is resent text by text.
  assert max(sizes) == 4 and sum(sizes) == 10
  assert [f for *_, f in server.log[:2]] == ['429', '503']
  if kind == 'OpenAICompatible':
    assert {a for _, _, a, _ in server.log} == {'Bearer sk-emb-5678'}


def test_identical_texts_are_embedded_once_and_kept_across_runs(
    embedding_server, tmp_path):
  server = embedding_server()
  texts = ['same text', 'other text', 'same text', 'same text']
  config = dict(_config('OpenAICompatible', server), cache_dir=str(tmp_path))
  config.pop('api_key_env')

  def run():
    out, _ = run_transform(
        beam_llm.EmbedText(model_handler={'type': 'OpenAICompatible',
                                          'config': config},
                           min_batch_size=4, max_batch_size=4),
        [{'id': i, 'text': t} for i, t in enumerate(texts)])
    return {r.id: r.embedding for r in out['good']}

  first = run()
  assert sorted(first) == [0, 1, 2, 3]
  assert first[0] == first[2] == first[3] == pytest.approx(fake_vector('same text'))
  assert sum(n for _, n, _, _ in server.log) == 2  # Each distinct text once.
  assert run() == first  # A new run (new process state): read from cache_dir.
  assert sum(n for _, n, _, _ in server.log) == 2
  config['cache'] = False
  run()
  assert sum(n for _, n, _, _ in server.log) == 6
