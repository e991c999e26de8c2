"""pipelines/chat_sentiment_remote.yaml on the Gemini backend with
`vertexai: true` and `batch_api: true`, through `python -m
apache_beam.yaml.main`, against the fake Vertex AI batch prediction jobs
and fake Cloud Storage with the real `google-genai` and
`google-cloud-storage` clients: every chat once and typed through lines
failing with 5xx, a refused line, an expiring job; and a run killed once its
jobs exist, then resumed from its cache_dir."""
import collections
import os
import signal
import subprocess
import sys
import time

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


def variables(server, tmp_path, **batch):
  return {'input': str(tmp_path / 'chats.jsonl'),
          'output': str(tmp_path / 'out' / 'result'),
          'gemini': {'model': 'gemini-2.5-flash', 'base_url': server.url,
                     'vertexai': True, 'project': 'proj',
                     'location': 'us-central1'},
          'cache_dir': str(tmp_path / 'cache'),
          'batch': {'batch_api': True, 'batch_staging_uri': STAGING,
                    'batch_max_requests': 100, 'batch_poll_secs': 0.2, **batch}}


def sync_requests(server):
  return sum(r.path.endswith(':generateContent') for r in server.log)


def test_chats_through_failing_expiring_vertex_batch_jobs(llm_server, tmp_path):
  # 5 % of lines fail with INTERNAL, the first job expires half done, and
  # one chat's line is refused as invalid (an error row, never resent).
  write_chats(tmp_path / 'chats.jsonl', N_CHATS)
  server = llm_server(reply=sentiment_reply, batch_faults=BatchFaults(
      line_server_error=0.05, expire_first_half=True, in_progress_secs=0.3,
      invalid_for='(ticket 7)'))
  run = run_yaml(PIPELINE, jinja_variables=variables(server, tmp_path))
  assert run.returncode == 0, run.stderr[-3000:]
  rows, errors, seen = chat_ids(tmp_path)
  assert set(seen) == {10_000 + i for i in range(N_CHATS)}
  assert set(seen.values()) == {1}, 'every chat exactly once'
  assert all(isinstance(r['sentiment'], int) for r in rows)
  [refused] = errors
  assert refused['chat_id'] == 10_007 and refused['error_type'] == 'client_error'
  api = server.vertex_batch_api
  jobs = api.job_list()
  states = collections.Counter(j['state'] for j in jobs)
  print(f'\n{N_CHATS} chats on Vertex AI: {len(rows)} typed, {len(errors)} '
        f'errors, {api.lines} batch lines ({api.lines / N_CHATS:.3f} x rows) '
        f'in {len(jobs)} jobs {dict(states)}, {server.gcs.uploads} staged '
        f'files, {sync_requests(server)} synchronous requests')
  assert len(rows) == N_CHATS - 1
  assert all(j['input'].startswith(STAGING + '/') for j in jobs)
  assert server.gcs.uploads == len(jobs)
  # The expired job's 50 unrun lines and the 5xx lines went in follow-ups.
  assert states['JOB_STATE_EXPIRED'] == 1
  assert N_CHATS + 50 < api.lines <= 1.4 * N_CHATS
  assert sync_requests(server) <= 0.01 * N_CHATS


def test_a_killed_vertex_run_is_resumed_not_resubmitted(llm_server, tmp_path):
  write_chats(tmp_path / 'chats.jsonl', N_CHATS)
  server = llm_server(reply=sentiment_reply, batch_faults=BatchFaults(
      line_server_error=0.02, in_progress_secs=6.0))
  argv = yaml_main_args(PIPELINE, (), variables(server, tmp_path))
  first = subprocess.Popen(
      [sys.executable, '-m', 'apache_beam.yaml.main', *argv], cwd=ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      start_new_session=True)
  api = server.vertex_batch_api
  try:
    deadline = time.monotonic() + 180
    while api.lines < N_CHATS:
      assert first.poll() is None, 'the first run ended before it was killed'
      assert time.monotonic() < deadline, 'no jobs within 180 s'
      time.sleep(0.1)
  finally:
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
  assert len(api.jobs) == 2
  assert all(j['state'] != 'JOB_STATE_SUCCEEDED' for j in api.job_list())

  run = run_yaml(PIPELINE, jinja_variables=variables(server, tmp_path))
  assert run.returncode == 0, run.stderr[-3000:]
  rows, errors, seen = chat_ids(tmp_path)
  assert set(seen) == {10_000 + i for i in range(N_CHATS)}
  assert set(seen.values()) == {1}, 'every chat exactly once'
  print(f'\nkilled after {N_CHATS} lines in 2 jobs; resumed: {api.lines} '
        f'batch lines over both runs, {len(rows)} rows, {len(errors)} errors, '
        f'{sync_requests(server)} synchronous requests')
  # The rerun waited for the killed run's 2 jobs and submitted only
  # follow-ups for their failed lines.
  follow_ups = api.job_list()[2:]
  assert sum(j['total'] for j in follow_ups) == api.lines - N_CHATS
  assert api.lines <= 1.05 * N_CHATS
  assert len(rows) >= 0.99 * N_CHATS and not errors
