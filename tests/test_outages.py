"""An outage is not bad data: a store or embedding service that goes away is
retried (with a reconnect) and, if it stays away past the retries, fails the
run. Never exit 0 with rows turned into error rows by a service that was
down. Real PostgreSQL + pgvector (stopped and started for real), a real
Milvus server, the real embedding clients against a local server."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import beam_llm
from beam_llm import remote
from beam_llm.stores import calls
from beam_llm.stores.base import BadRecord
from beam_llm.stores.base import Record
from beam_llm.stores.base import StoreUnavailable
from beam_llm.stores.pgvector import PgVectorStore
from beam_llm.testing.fake_embedding_server import FakeEmbeddingServer
from tests.beam_helpers import run_transform
from tests.conftest import ROOT, yaml_main_args

OFFLINE = {'HF_HUB_OFFLINE': '1'}
OUTAGE_SECS = 8


@pytest.fixture
def postgres():
  """A PostgreSQL server of this test's own (it gets stopped): (server, URI).

  Its data lives outside pytest's temporary directory: pytest sets that
  back to owner-only whenever another pytest session starts, and the
  server runs as another user, which must reach its data to stop it."""
  import pgserver
  where = tempfile.mkdtemp(prefix='beam_llm_pg_')
  server = pgserver.get_server(os.path.join(where, 'pg'), cleanup_mode='stop')
  yield server, server.get_uri()
  _pg_start(server)  # cleanup() expects a running server.
  server.cleanup()
  shutil.rmtree(where, ignore_errors=True)


def _pg_stop(server):
  from pgserver._commands import pg_ctl
  pg_ctl(['-w', '-m', 'fast', 'stop'], pgdata=server.pgdata,
         user=server.system_user, timeout=30)


def _pg_start(server):
  """Starts it again on the same socket (the URI the pipeline holds)."""
  from pgserver._commands import pg_ctl
  if (server.pgdata / 'postmaster.pid').exists():
    return  # Running.
  # pg_ctl's output goes to files inside pg_ctl(): never a pipe, which the
  # restarted postmaster would inherit and keep open.
  pg_ctl(['-w', '-o', '-h ""', '-o', f'-k {server._postmaster_info.socket_dir}',
          '-l', str(server.log), 'start'], pgdata=server.pgdata,
         user=server.system_user, timeout=30)


def _count(uri, table):
  import psycopg
  try:
    with psycopg.connect(uri, connect_timeout=2) as conn:
      return conn.execute(f'SELECT count(*) FROM {table}').fetchone()[0]
  except psycopg.Error:
    return None


def test_ingest_rides_out_a_database_stopped_for_8_seconds(
    postgres, embedding_model, tmp_path):
  """pipelines/rag_ingest.yaml over 3,000 documents; PostgreSQL stopped
  for 8 s once the first rows are in: every document ends in the store,
  no error rows, exit 0."""
  server, uri = postgres
  docs = tmp_path / 'docs.jsonl'
  n = 3000
  docs.write_text(''.join(
      json.dumps({'id': f'd{i}', 'text': f'Fact number {i}: the shop sells item {i}.'})
      + '\n' for i in range(n)))
  errors = tmp_path / 'errors'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'apache_beam.yaml.main', *yaml_main_args('pipelines/rag_ingest.yaml', jinja_variables={
          'input': str(docs), 'store': uri, 'embedding_model': embedding_model,
          'errors': str(errors), 'collection': 'kb'})],
      cwd=ROOT, env={**os.environ, **OFFLINE},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 300
    while (_count(uri, 'kb') or 0) == 0:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.1)
    _pg_stop(server)
    stopped_at = _count(uri, 'kb')
    time.sleep(OUTAGE_SECS)
    assert proc.poll() is None  # The pipeline waited for the store.
    _pg_start(server)
    _, stderr = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert stopped_at is None  # It really was down.
  assert proc.returncode == 0, stderr[-3000:]
  assert 'reconnected' in stderr
  assert _count(uri, 'kb') == n
  assert not list(tmp_path.glob('errors*')) or all(
      p.stat().st_size == 0 for p in tmp_path.glob('errors*'))


def test_a_store_down_past_the_retries_fails_instead_of_making_error_rows(
    postgres):
  server, uri = postgres
  store = PgVectorStore(uri, 'kb')
  caller = calls.StoreCaller(store, remote.RemotePolicy(
      max_retries=2, initial_backoff_secs=0.05))
  caller.call('connect', store.connect)
  caller.call('create', lambda: store.ensure_collection(3))
  record = Record(id='a', vector=[1.0, 0.0, 0.0], text='t', doc_id='d',
                  metadata={})
  caller.call('upsert', lambda: store.upsert([record]))
  _pg_stop(server)
  started = time.monotonic()
  with pytest.raises(StoreUnavailable, match='upsert failed 3 times'):
    caller.call('upsert', lambda: store.upsert([record]))
  assert time.monotonic() - started < 30
  _pg_start(server)
  # Back up: the next call reconnects by itself. A row the store refuses
  # is still that row's problem (BadRecord), not an outage.
  caller.call('upsert', lambda: store.upsert([record]))
  wrong = Record(id='b', vector=[1.0, 0.0], text='t', doc_id='d', metadata={})
  with pytest.raises(BadRecord):
    caller.call('upsert', lambda: store.upsert([wrong]))
  assert _count(uri, 'kb') == 1


def _embed(server, texts, **policy):
  config = {'model': 'emb', 'base_url': server.url + '/v1',
            'texts_per_request': 4, 'initial_backoff_secs': 0.05, **policy}
  return run_transform(
      beam_llm.EmbedText(
          model_handler={'type': 'OpenAICompatible', 'config': config},
          min_batch_size=len(texts), max_batch_size=len(texts),
          error_handling={'output': 'failed'}),
      [{'id': i, 'text': t} for i, t in enumerate(texts)])[0]


def test_an_embedding_service_that_stays_down_fails_the_run():
  texts = [f'text {i}' for i in range(8)]
  server = FakeEmbeddingServer(script=['503'] * 40).start()
  try:
    with pytest.raises(Exception, match='kept failing until the retries ran out'):
      _embed(server, texts, max_retries=2)
    # Fewer faults than the retries: everything is embedded.
    server.script[:] = ['503', '503']
    out = _embed(server, texts, max_retries=2)
    assert sorted(r.id for r in out['good']) == list(range(8))
    assert out['failed'] == []
  finally:
    server.stop()


def test_an_embedding_server_gone_for_8_seconds_is_waited_for():
  """The server process stops listening, then comes back on the same port:
  connection refused is retried (default backoff), every text embedded."""
  texts = [f'text {i}' for i in range(8)]
  server = FakeEmbeddingServer().start()
  port = server.port
  server.stop()

  def come_back():
    time.sleep(OUTAGE_SECS)
    back.append(FakeEmbeddingServer(port=port).start())

  back = []
  thread = threading.Thread(target=come_back)
  thread.start()
  try:
    out = _embed(server, texts, initial_backoff_secs=1.0)
  finally:
    thread.join()
    for s in back:
      s.stop()
  assert sorted(r.id for r in out['good']) == list(range(8))
  assert out['failed'] == []


def test_a_milvus_server_restarted_mid_write_is_waited_for(tmp_path):
  """A Milvus server killed and started again 8 s later on the same port
  and data: the writes in between wait for it, none is lost."""
  from beam_llm.stores.milvus import MilvusStore
  from tests.conftest import free_port, start_milvus_server, stop_process
  port = free_port()
  proc = start_milvus_server(tmp_path, port)
  store = MilvusStore(f'http://127.0.0.1:{port}', 'kb')
  caller = calls.StoreCaller(store)
  caller.call('connect', store.connect)
  caller.call('create', lambda: store.ensure_collection(3))
  restarted = []

  def restart():
    proc.kill()
    proc.wait()
    time.sleep(OUTAGE_SECS)
    restarted.append(start_milvus_server(tmp_path, port))

  try:
    for i in range(20):
      if i == 5:
        restarter = threading.Thread(target=restart)
        restarter.start()
        time.sleep(1)  # Down now.
      record = Record(id=f'r{i}', vector=[1.0, float(i), 0.0], text='t',
                      doc_id='d', metadata={})
      caller.call('upsert', lambda: store.upsert([record]))
    restarter.join()
    assert restarted  # The outage happened while writing.
    from pymilvus import MilvusClient
    count = MilvusClient(f'http://127.0.0.1:{port}').query(
        'kb', filter='', output_fields=['count(*)'])[0]['count(*)']
    assert count == 20
  finally:
    stop_process(proc)
    for p in restarted:
      stop_process(p)
