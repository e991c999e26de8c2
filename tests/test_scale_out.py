"""Scale-out, proven locally (issue 14): the bundled chat-sentiment pipeline
on Beam's PortableRunner with an external SDK worker pool (the worker
mechanism Flink and Spark use) and on two worker processes; every chat comes
out exactly once, in the results or the errors file."""
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import read_json_lines, run_yaml


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture
def worker_pool():
  port = _free_port()
  env = dict(os.environ)
  env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env['PATH']
  pool = subprocess.Popen(
      [sys.executable, '-m', 'apache_beam.runners.worker.worker_pool_main',
       f'--service_port={port}'], env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:
    try:
      socket.create_connection(('127.0.0.1', port), timeout=1).close()
      break
    except OSError:
      time.sleep(0.2)
  yield port
  pool.terminate()
  pool.wait(timeout=30)


def _every_chat_once(prefix, chats):
  seen = [r['chat_id'] for r in read_json_lines(prefix)] + [
      r['chat_id'] for r in read_json_lines(prefix + '-errors')]
  assert sorted(seen) == sorted(c['chat_id'] for c in chats)


@pytest.mark.parametrize('mode', ['portable_worker_pool', 'two_processes'])
def test_chat_sentiment_scales_out_with_every_chat_once(
    mode, request, tiny_causal_lm, tmp_path, chats):
  if mode == 'portable_worker_pool':
    port = request.getfixturevalue('worker_pool')
    args = ['--runner=PortableRunner', '--job_endpoint=embed',
            '--environment_type=EXTERNAL', f'--environment_config=localhost:{port}']
  else:
    args = ['--direct_running_mode=multi_processing', '--direct_num_workers=2']
  prefix = str(tmp_path / 'out')
  result = run_yaml('pipelines/chat_sentiment.yaml', *args, jinja_variables={
      'model': tiny_causal_lm, 'output': prefix, 'max_new_tokens': 96})
  assert result.returncode == 0, result.stderr[-3000:]
  _every_chat_once(prefix, chats)
