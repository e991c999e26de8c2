"""`batch_api: true`: the scenarios every Batch API goes through, written
once and run on each provider (tests/batch_providers.py: OpenAI, the Gemini
API, Vertex AI, each through its real client against its fake): 4xx lines
as error rows; 5xx and unrun lines in follow-up batches, then
synchronously; a file over the service's cap sent again; a rerun paying
for nothing, waiting for open batches, finding a batch its crashed run
never kept; an outage failing the run. What differs per provider (line
formats, requests, limits) is in tests/test_{,gemini_,vertex_}batch_api.py."""
import glob
import json
import os
import time
import urllib.parse

import pytest

from beam_llm import GenerateText
from beam_llm.batch_api import store
from beam_llm.remote import RemoteUnavailable
from beam_llm.testing.fake_batch_api import BatchFaults
from tests.batch_providers import run
from tests.batch_providers import run_killed_at_first_look
from tests.batch_providers import synchronous


def kept_records(tmp_path) -> list:
  return glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))


def test_a_line_refused_as_invalid_is_an_error_row_not_retried(
    batch_provider, llm_server):
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(invalid_for='refuse me'))
  good, bad, _ = run(p, server, ['fine 1', 'refuse me', 'fine 2'])
  assert sorted(r['prompt'] for r in good) == ['fine 1', 'fine 2']
  [error] = bad
  assert error['element'].prompt == 'refuse me'
  assert error['error_type'] == 'client_error'
  assert 'HTTP 400' in error['msg'] and p.refused in error['msg']
  assert p.fake(server).lines == 3 and not synchronous(server)  # Sent once.


def test_failed_lines_go_in_follow_ups_then_synchronously(
    batch_provider, llm_server):
  # Half the lines fail with a 500 (INTERNAL), in every batch: after
  # batch_rounds batches the rest are sent synchronously (which succeed).
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(line_server_error=0.5))
  prompts = [f'p{i}' for i in range(40)]
  good, bad, metrics = run(p, server, prompts, {'batch_rounds': 2})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  sizes = [total for _, total, _ in p.batches(server)]
  assert len(sizes) == 2 and sizes[0] == 40 and 10 < sizes[1] < 30
  resent = [r.prompt for r in synchronous(server)]
  assert 0 < len(resent) < sizes[1] and len(set(resent)) == len(resent)
  assert metrics['batch_rows_sent_synchronously'] == len(resent)
  assert metrics['batch_lines'] == sum(sizes)


@pytest.mark.parametrize('fault', ['expired', 'cancelled'])
def test_lines_an_ended_batch_left_undone_go_in_a_follow_up(
    batch_provider, llm_server, fault):
  # Expired half done: the 5 lines without a result go in a follow-up.
  # Cancelled: OpenAI's fake leaves half done too; the Gemini API's and
  # Vertex AI's leave no results at all, so all 10 go.
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(
      expire_first_half=fault == 'expired',
      cancel_first_half=fault == 'cancelled'))
  prompts = [f'p{i}' for i in range(10)]
  good, bad, metrics = run(p, server, prompts)
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  follow_up = 5 if fault == 'expired' or p.name == 'openai' else 10
  assert p.batches(server) == [(fault, 10, 10 - follow_up),
                               ('completed', follow_up, follow_up)]
  assert metrics['batch_lines_failed'] == follow_up and not synchronous(server)


def test_a_file_over_the_line_cap_fails_and_its_rows_are_sent_again(
    batch_provider, llm_server):
  # The service takes at most 4 lines per file: files of 4 pass; a file
  # of 5 fails validation, its rows go in a follow-up, then synchronously.
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(max_lines_per_file=4))
  good, bad, _ = run(p, server, [f'p{i}' for i in range(8)],
                     {'batch_max_requests': 4})
  assert len(good) == 8 and not bad and not synchronous(server)
  assert [total for _, total, _ in p.batches(server)] == [4, 4]
  good, bad, _ = run(p, server, [f'q{i}' for i in range(5)], {'batch_rounds': 2})
  assert len(good) == 5 and not bad
  assert [status for status, _, _ in p.batches(server)][2:] == ['failed'] * 2
  assert len(synchronous(server)) == 5


def test_a_rerun_with_cache_dir_pays_for_nothing(
    batch_provider, llm_server, tmp_path):
  p = batch_provider
  server = llm_server()
  prompts = [f'p{i}' for i in range(10)]
  config = {'cache_dir': str(tmp_path)}
  first, _, _ = run(p, server, prompts, config)
  again, _, metrics = run(p, server, prompts, config)
  assert sorted(r['response'] for r in again) == sorted(
      r['response'] for r in first)
  assert p.fake(server).lines == 10 and not synchronous(server)
  assert metrics['cache_hits'] == 10
  [record] = kept_records(tmp_path)
  with open(record) as f:
    kept = json.load(f)
  assert kept['status'] == 'completed' and len(kept['custom_ids']) == 10
  assert kept['result_files']
  # Named by the batch id, quoted (a Gemini API id is `batches/ID`).
  assert os.path.basename(record) == urllib.parse.quote(
      kept['batch_id'], safe='') + '.json'
  if p.name == 'gemini':
    assert kept['batch_id'].startswith('batches/')
  for path in glob.glob(str(tmp_path / '**' / '*.json'), recursive=True):
    with open(path) as f:
      assert p.secret not in f.read()


def test_a_rerun_waits_for_the_open_batch_instead_of_submitting(
    batch_provider, llm_server, tmp_path, monkeypatch):
  # A run killed right after submitting (its batch kept, still open) and a
  # rerun in a new process: the rerun waits for that batch and reads it,
  # submitting nothing; then a third run pays for nothing (cache_dir).
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=1.0))
  prompts = [f'p{i}' for i in range(10)]
  config = {'cache_dir': str(tmp_path)}
  run_killed_at_first_look(p, server, prompts, config, monkeypatch)
  [kept] = kept_records(tmp_path)
  with open(kept) as f:
    assert json.load(f)['status'] == (
        'validating' if p.name == 'openai' else 'queued')
  assert p.fake(server).retrieves == 0
  good, bad, _ = run(p, server, prompts, config)
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert p.fake(server).lines == 10 and not synchronous(server)
  assert p.fake(server).retrieves >= 1
  again, _, metrics = run(p, server, prompts, config)
  assert sorted(r['response'] for r in again) == sorted(
      r['response'] for r in good) and metrics['cache_hits'] == 10
  assert p.fake(server).lines == 10
  if p.name == 'vertex':
    assert server.gcs.uploads == 1


def test_a_crash_between_creating_a_batch_and_keeping_it_is_resumed(
    batch_provider, llm_server, tmp_path, monkeypatch):
  # The file is kept as pending (with a tag) before its upload; the batch
  # carries the tag (OpenAI: in its metadata; Gemini, Vertex AI: as its
  # display name). A run that dies right after creating the batch leaves
  # only the pending record: the rerun finds the batch by its tag among
  # the provider's, instead of paying twice.
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=1.0))
  for n in range(3):  # Other batches on the account, newer and older.
    run(p, server, [f'other {n}'])
  prompts = [f'p{i}' for i in range(10)]
  save = store.BatchStore.save

  def crash_after_create(self, record):
    if record['status'] != store.PENDING:
      raise KeyboardInterrupt('killed')
    return save(self, record)
  monkeypatch.setattr(store.BatchStore, 'save', crash_after_create)
  with pytest.raises(BaseException, match='killed'):
    run(p, server, prompts, {'cache_dir': str(tmp_path)})
  monkeypatch.setattr(store.BatchStore, 'save', save)
  monkeypatch.setattr(store, '_STORES', {})  # A new worker process.
  [kept] = kept_records(tmp_path)
  assert os.path.basename(kept).startswith('pending-')
  run(p, server, ['other 4'])  # The newest batch is another's.
  assert p.fake(server).lines == 3 + 10 + 1
  good, bad, _ = run(p, server, prompts, {'cache_dir': str(tmp_path)})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert p.fake(server).lines == 3 + 10 + 1 and not synchronous(server)
  [kept] = kept_records(tmp_path)
  assert not os.path.basename(kept).startswith('pending-')


MISSING = {'openai': 'batch-999', 'gemini': 'batches/nope',
           'vertex': 'projects/proj/locations/us-central1/batchPredictionJobs/999'}


def test_a_batch_is_found_by_its_tag_across_pages_of_the_list(
    batch_provider, llm_server):
  p = batch_provider
  server = llm_server()
  handler = GenerateText(model_handler={
      'type': p.backend, 'config': p.config(server)})._handler
  client = p.client_class()(handler, handler.load_model())
  model, body = handler.batch_line(handler.build_request('hi'))
  line = client.encode('c', model, body)
  ids = [client.submit(line, model, f'tag-{n}')['id'] for n in range(130)]
  assert client.find('tag-0', since=0)['id'] == ids[0]  # On the 2nd page.
  assert client.find('tag-129', since=0)['id'] == ids[-1]
  assert client.find('no-such-tag', since=0) is None
  assert client.find('tag-0', since=time.time() + 60) is None  # Too old.
  assert client.retrieve(MISSING[p.name]) == {'id': MISSING[p.name],
                                              'status': 'gone'}


def test_an_outage_fails_the_run_never_error_rows(batch_provider, llm_server):
  p = batch_provider
  server = llm_server()
  server.stop()  # Nothing listens: uploads fail until retries run out.
  with pytest.raises(Exception, match='Batch API upload failed') as raised:
    run(p, server, ['a', 'b'], {'max_retries': 1})
  assert p.secret not in str(raised.value)
  assert 'RemoteUnavailable' in repr(raised.value) or isinstance(
      raised.value, RemoteUnavailable)
