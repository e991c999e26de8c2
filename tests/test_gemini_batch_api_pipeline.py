"""pipelines/chat_sentiment_remote.yaml on the Gemini backend with
`batch_api: true`, through `python -m apache_beam.yaml.main`, on both of
Gemini's batch services: the Gemini API's Batch Mode (fake Gemini Batch
API, the real `google-genai` client) and Vertex AI batch prediction
(`vertexai: true`: fake batch prediction jobs and fake Cloud Storage, the
real `google-genai` and `google-cloud-storage` clients). Every chat once
and typed through lines failing with 5xx, a refused line and an expiring
batch; and a run killed once its batches exist, then resumed from its
cache_dir."""
import collections
import dataclasses
import os
import signal
import subprocess
import sys
import time
from typing import Callable

import pytest

from beam_llm.testing.fake_batch_api import BatchFaults
from beam_llm.testing.fake_llm_server import sentiment_reply
from tests.conftest import ROOT
from tests.conftest import run_yaml
from tests.conftest import yaml_main_args
from tests.test_batch_api_pipeline import chat_ids
from tests.test_batch_api_pipeline import write_chats

PIPELINE = 'pipelines/chat_sentiment_remote.yaml'
N_CHATS = 200
STAGING = 'gs://pipeline-staging/beam-llm'
KEY = 'AIza-secret-pipeline-key'


@dataclasses.dataclass
class Service:
  """One of Gemini's batch services, as the pipeline and the fake see it."""
  name: str
  config: Callable  # server -> the `gemini` variable
  batch: dict  # Extra `batch` options.
  env: dict
  api: Callable  # server -> its fake batch API
  batches: Callable  # api -> its batches, oldest first
  files: Callable  # server -> the batch files it holds
  expired: str
  succeeded: str


GEMINI_API = Service(
    'Gemini API',
    lambda server: {'model': 'gemini-2.5-flash', 'base_url': server.url,
                    'api_version': 'v1beta'},
    {}, {'GEMINI_API_KEY': KEY}, lambda server: server.gemini_batch_api,
    lambda api: api.batch_list(), lambda server: list(
        server.gemini_batch_api.files), 'BATCH_STATE_EXPIRED',
    'BATCH_STATE_SUCCEEDED')
VERTEX_AI = Service(
    'Vertex AI',
    lambda server: {'model': 'gemini-2.5-flash', 'base_url': server.url,
                    'vertexai': True, 'project': 'proj',
                    'location': 'us-central1'},
    {'batch_staging_uri': STAGING}, {}, lambda server: server.vertex_batch_api,
    lambda api: api.job_list(), lambda server: list(server.gcs.objects),
    'JOB_STATE_EXPIRED', 'JOB_STATE_SUCCEEDED')
SERVICES = pytest.mark.parametrize('service', [GEMINI_API, VERTEX_AI],
                                   ids=['gemini-api', 'vertex-ai'])


def variables(service, server, tmp_path, **batch):
  return {'input': str(tmp_path / 'chats.jsonl'),
          'output': str(tmp_path / 'out' / 'result'),
          'gemini': service.config(server),
          'cache_dir': str(tmp_path / 'cache'),
          'batch': {'batch_api': True, 'batch_max_requests': 100,
                    'batch_poll_secs': 0.2, **service.batch, **batch}}


def sync_requests(server):
  return sum(r.path.endswith(':generateContent') for r in server.log)


@SERVICES
def test_chats_through_failing_expiring_batches(llm_server, tmp_path, service):
  # 5 % of lines fail with INTERNAL, the first batch expires half done, and
  # one chat's line is refused as invalid (an error row, never resent).
  write_chats(tmp_path / 'chats.jsonl', N_CHATS)
  server = llm_server(reply=sentiment_reply, batch_faults=BatchFaults(
      line_server_error=0.05, expire_first_half=True, in_progress_secs=0.3,
      invalid_for='(ticket 7)'))
  run = run_yaml(PIPELINE, jinja_variables=variables(service, server, tmp_path),
                 env=service.env)
  assert run.returncode == 0, run.stderr[-3000:]
  assert KEY not in run.stderr + run.stdout
  rows, errors, seen = chat_ids(tmp_path)
  assert set(seen) == {10_000 + i for i in range(N_CHATS)}
  assert set(seen.values()) == {1}, 'every chat exactly once'
  assert all(isinstance(r['sentiment'], int) for r in rows)
  [refused] = errors
  assert refused['chat_id'] == 10_007 and refused['error_type'] == 'client_error'
  api = service.api(server)
  batches = service.batches(api)
  states = collections.Counter(b['state'] for b in batches)
  print(f'\n{N_CHATS} chats on {service.name}: {len(rows)} typed, '
        f'{len(errors)} errors, {api.lines} batch lines '
        f'({api.lines / N_CHATS:.3f} x rows) in {len(batches)} batches '
        f'{dict(states)}, {sync_requests(server)} synchronous requests')
  assert len(rows) == N_CHATS - 1
  if service is VERTEX_AI:  # Each job's file was staged on Cloud Storage.
    assert all(b['input'].startswith(STAGING + '/') for b in batches)
    assert server.gcs.uploads == len(batches)
  # The expired batch's 50 unrun lines and the 5xx lines went in follow-ups.
  assert states[service.expired] == 1
  assert N_CHATS + 50 < api.lines <= 1.4 * N_CHATS
  assert sync_requests(server) <= 0.01 * N_CHATS
  # Every answer and the refusal are in cache_dir: no batch file is left.
  assert not service.files(server)


@SERVICES
def test_a_killed_run_is_resumed_not_resubmitted(llm_server, tmp_path, service):
  write_chats(tmp_path / 'chats.jsonl', N_CHATS)
  server = llm_server(reply=sentiment_reply, batch_faults=BatchFaults(
      line_server_error=0.02, in_progress_secs=6.0))
  argv = yaml_main_args(PIPELINE, (), variables(service, server, tmp_path))
  first = subprocess.Popen(
      [sys.executable, '-m', 'apache_beam.yaml.main', *argv], cwd=ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      start_new_session=True, env={**os.environ, **service.env})
  api = service.api(server)
  try:
    deadline = time.monotonic() + 180
    while api.lines < N_CHATS:
      assert first.poll() is None, 'the first run ended before it was killed'
      assert time.monotonic() < deadline, 'no batches within 180 s'
      time.sleep(0.1)
  finally:
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
  assert len(service.batches(api)) == 2
  assert all(b['state'] != service.succeeded for b in service.batches(api))

  run = run_yaml(PIPELINE, jinja_variables=variables(service, server, tmp_path),
                 env=service.env)
  assert run.returncode == 0, run.stderr[-3000:]
  rows, errors, seen = chat_ids(tmp_path)
  assert set(seen) == {10_000 + i for i in range(N_CHATS)}
  assert set(seen.values()) == {1}, 'every chat exactly once'
  print(f'\nkilled after {N_CHATS} lines in 2 batches; resumed: {api.lines} '
        f'batch lines over both runs, {len(rows)} rows, {len(errors)} errors, '
        f'{sync_requests(server)} synchronous requests')
  # The rerun waited for the killed run's 2 batches and submitted only
  # follow-ups for their failed lines.
  follow_ups = service.batches(api)[2:]
  assert sum(b['total'] for b in follow_ups) == api.lines - N_CHATS
  assert api.lines <= 1.05 * N_CHATS
  assert len(rows) >= 0.99 * N_CHATS and not errors
  assert not service.files(server)  # The rerun deleted the killed run's too.
