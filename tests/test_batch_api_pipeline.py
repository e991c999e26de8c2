"""pipelines/chat_sentiment_remote.yaml with `batch_api: true`, through
`python -m apache_beam.yaml.main`, against the fake OpenAI Batch API with
the real `openai` client: the issue's targets, and a run killed once its
batches exist, then resumed from its cache_dir."""
import collections
import json
import os
import signal
import subprocess
import sys
import time

from beam_llm.testing.fake_batch_api import BatchFaults
from beam_llm.testing.fake_llm_server import sentiment_reply
from tests.conftest import CHATS
from tests.conftest import ROOT
from tests.conftest import read_json_lines
from tests.conftest import run_yaml
from tests.conftest import yaml_main_args

PIPELINE = 'pipelines/chat_sentiment_remote.yaml'
N_CHATS = 300


def write_chats(path, n=N_CHATS):
  """n distinct chats (distinct prompts: distinct requests) from the samples."""
  with open(CHATS) as f:
    samples = [json.loads(line) for line in f]
  with open(path, 'w') as f:
    for i in range(n):
      chat = dict(samples[i % len(samples)])
      chat['chat_id'] = 10_000 + i
      chat['history'] += f'\nuser_id {chat["user_id"]}: (ticket {i})'
      f.write(json.dumps(chat) + '\n')


def variables(server, tmp_path, **batch):
  return {'input': str(tmp_path / 'chats.jsonl'),
          'output': str(tmp_path / 'out' / 'result'),
          'base_url': server.url + '/v1', 'model': 'gpt-4o-mini',
          'cache_dir': str(tmp_path / 'cache'),
          'batch': {'batch_api': True, 'batch_max_requests': 100,
                    'batch_poll_secs': 0.2, **batch}}


def chat_ids(tmp_path):
  prefix = str(tmp_path / 'out' / 'result')
  rows = read_json_lines(prefix)
  errors = read_json_lines(prefix + '-errors')
  return rows, errors, collections.Counter(
      [r['chat_id'] for r in rows] + [e['chat_id'] for e in errors])


def sync_requests(server):
  return sum(r.path.endswith('/chat/completions') for r in server.log)


def test_300_chats_through_a_capped_failing_expiring_batch_api(
    llm_server, tmp_path):
  server = llm_server(reply=sentiment_reply, batch_faults=BatchFaults(
      max_lines_per_file=100, line_server_error=0.05, expire_first_half=True,
      in_progress_secs=0.3))
  write_chats(tmp_path / 'chats.jsonl')
  started = time.monotonic()
  run = run_yaml(PIPELINE, jinja_variables=variables(server, tmp_path))
  secs = time.monotonic() - started
  assert run.returncode == 0, run.stderr[-3000:]
  rows, errors, seen = chat_ids(tmp_path)
  assert set(seen) == {10_000 + i for i in range(N_CHATS)}
  assert set(seen.values()) == {1}, 'every chat exactly once'
  typed = [r for r in rows if isinstance(r['sentiment'], int)]
  lines = server.batch_api.lines
  statuses = collections.Counter(
      b['status'] for b in server.batch_api.batch_list())
  print(f'\n300 chats: {len(typed)} typed, {len(errors)} errors, '
        f'{lines} batch lines ({lines / N_CHATS:.3f} x rows) in '
        f'{len(server.batch_api.batches)} batches {dict(statuses)}, '
        f'{sync_requests(server)} synchronous requests, {secs:.1f} s')
  assert len(typed) >= 0.99 * N_CHATS, errors[:3]
  assert sync_requests(server) <= 0.01 * N_CHATS
  assert lines <= 1.25 * N_CHATS
  # What the faults did: the first batch expired; files stayed within the cap.
  assert statuses['expired'] == 1 and statuses['failed'] == 0
  assert all(b['request_counts']['total'] <= 100
             for b in server.batch_api.batch_list())
  # Every answer is in cache_dir: no request or result file is left.
  assert not server.batch_api.files


def test_a_run_killed_once_its_batches_exist_is_resumed_not_resubmitted(
    llm_server, tmp_path):
  # Batches stay open for a while: the first run is killed while it waits.
  server = llm_server(reply=sentiment_reply, batch_faults=BatchFaults(
      max_lines_per_file=100, line_server_error=0.02, in_progress_secs=6.0))
  write_chats(tmp_path / 'chats.jsonl')
  argv = yaml_main_args(PIPELINE, (), variables(server, tmp_path))
  first = subprocess.Popen(
      [sys.executable, '-m', 'apache_beam.yaml.main', *argv], cwd=ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      start_new_session=True)
  try:
    deadline = time.monotonic() + 180
    while server.batch_api.lines < N_CHATS:
      assert first.poll() is None, 'the first run ended before it was killed'
      assert time.monotonic() < deadline, 'no batches within 180 s'
      time.sleep(0.1)
  finally:
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
  assert not os.path.exists(str(tmp_path / 'out')) or not chat_ids(tmp_path)[2]
  submitted = server.batch_api.lines
  [folder] = os.listdir(tmp_path / 'cache' / 'batch_api')
  kept = os.listdir(tmp_path / 'cache' / 'batch_api' / folder)
  # A record per batch (one may still be its file's pending record, with
  # the tag the rerun finds the batch by, if the kill came in between).
  assert len(server.batch_api.batches) == 3
  assert len([k for k in kept if not k.startswith('pending-')]) >= 2

  run = run_yaml(PIPELINE, jinja_variables=variables(server, tmp_path))
  assert run.returncode == 0, run.stderr[-3000:]
  rows, errors, seen = chat_ids(tmp_path)
  assert set(seen) == {10_000 + i for i in range(N_CHATS)}
  assert set(seen.values()) == {1}, 'every chat exactly once'
  lines = server.batch_api.lines
  print(f'\nkilled after {submitted} lines in 3 batches; resumed: {lines} '
        f'batch lines over both runs ({lines / N_CHATS:.3f} x rows), '
        f'{len(rows)} rows, {len(errors)} errors, '
        f'{sync_requests(server)} synchronous requests')
  assert lines <= 1.05 * N_CHATS
  # The rerun waited for the 3 batches of the killed run (and submitted only
  # follow-ups for their 5xx lines).
  follow_ups = [b for b in server.batch_api.batch_list()][3:]
  assert sum(b['request_counts']['total'] for b in follow_ups) == lines - N_CHATS
  assert len(rows) >= 0.99 * N_CHATS
  assert not server.batch_api.files  # The rerun deleted the killed run's too.
