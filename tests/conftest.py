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


def run_yaml(pipeline_file, *args, jinja_variables=None, env=None, timeout=600):
  """Runs `python -m apache_beam.yaml.main` from the project root, as users do."""
  cmd = [
      sys.executable, '-m', 'apache_beam.yaml.main',
      f'--yaml_pipeline_file={pipeline_file}', '--runner=FnApiRunner', *args
  ]
  if jinja_variables:
    cmd.append('--jinja_variables=' + json.dumps(jinja_variables))
  return subprocess.run(
      cmd,
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=timeout,
      env={**os.environ, **(env or {})})


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
