"""Batch files are deleted once nothing needs them (`batch_keep_files`,
beam_llm/batch_api/rounds.py), on each provider through its real client
against its fake: a request file once its batch has ended; result files
once every line read from them is kept in cache_dir, never sooner, so a
rerun (after a crash at any point) still gets every row exactly once
without paying again; a delete that fails only warns."""
import logging

import pytest

from beam_llm.batch_api import rounds
from beam_llm.batch_api import store
from beam_llm.testing.fake_batch_api import BatchFaults
from tests.batch_providers import run
from tests.batch_providers import run_killed_at_first_look
from tests.batch_providers import synchronous

PROMPTS = [f'p{i}' for i in range(8)] + ['refuse me']


def new_process(monkeypatch):
  monkeypatch.setattr(store, '_STORES', {})  # What a rerun starts with.


def check_rows(good, bad):
  """Every row exactly once: 8 answers and the refused one an error row."""
  assert sorted(r['prompt'] for r in good) == sorted(PROMPTS[:-1])
  assert [e['element'].prompt for e in bad] == ['refuse me']
  assert bad[0]['error_type'] == 'client_error'


def test_with_cache_dir_every_file_is_deleted_and_a_rerun_pays_nothing(
    batch_provider, llm_server, tmp_path, monkeypatch):
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(invalid_for='refuse me',
                                               expire_first_half=True))
  config = {'cache_dir': str(tmp_path)}
  good, bad, metrics = run(p, server, PROMPTS, config)
  check_rows(good, bad)
  assert p.files(server) == ([], []), 'no request or result file is left'
  deleted = p.storage(server).deleted
  assert len(deleted) == metrics['batch_files_deleted'] >= 3
  assert 'batch_files_not_deleted' not in metrics
  # The rerun finds the answers in the response cache and the refusal
  # beside the batch records: the same rows, nothing sent again.
  new_process(monkeypatch)
  lines = p.fake(server).lines
  again, again_bad, _ = run(p, server, PROMPTS, config)
  check_rows(again, again_bad)
  assert again_bad[0]['msg'] == bad[0]['msg'] and p.refused in bad[0]['msg']
  assert p.fake(server).lines == lines and not synchronous(server)


@pytest.mark.parametrize('cached', [False, True])
def test_without_cache_dir_or_cache_result_files_are_kept(
    batch_provider, llm_server, tmp_path, cached):
  # A rerun or a dropped answer would read them again: nothing else has
  # the answers (cache_dir with the cache off: sampling without a seed).
  # Request files are never read again: deleted.
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(invalid_for='refuse me'))
  config, options = ({'cache_dir': str(tmp_path)}, {'temperature': 0.8}
                     ) if cached else ({}, {})
  check_rows(*run(p, server, PROMPTS, config, **options)[:2])
  requests, results = p.files(server)
  assert not requests and results
  assert len(p.storage(server).deleted) == 1


def test_batch_keep_files_deletes_nothing(batch_provider, llm_server, tmp_path):
  p = batch_provider
  server = llm_server()
  run(p, server, PROMPTS[:4], {'cache_dir': str(tmp_path),
                               'batch_keep_files': True})
  requests, results = p.files(server)
  assert len(requests) == 1 and results
  assert not p.storage(server).deleted


@pytest.mark.parametrize('status', [500, 403])
def test_a_delete_that_fails_only_warns(batch_provider, llm_server, tmp_path,
                                        caplog, status):
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(invalid_for='refuse me'))
  p.storage(server).delete_error = status
  with caplog.at_level(logging.WARNING, logger='beam_llm'):
    good, bad, metrics = run(p, server, PROMPTS, {
        'cache_dir': str(tmp_path), 'max_retries': 1})
  check_rows(good, bad)
  requests, results = p.files(server)
  assert len(requests) == 1 and results
  warned = [r.getMessage() for r in caplog.records
            if 'could not delete Batch API file' in r.getMessage()]
  assert len(warned) == metrics['batch_files_not_deleted'] >= 2
  assert any(requests[0] in w for w in warned)
  assert not any(p.secret in w for w in warned)


@pytest.mark.parametrize('killed_at, prompts', [
    ('before_deleting', PROMPTS), ('while_deleting', PROMPTS),
    # Every row in the cache: the rerun never reads the batch, and deletes
    # its files because its record says all its lines were kept.
    ('before_deleting', PROMPTS[:-1])])
def test_a_run_killed_around_the_deletes_loses_nothing(
    batch_provider, llm_server, tmp_path, monkeypatch, killed_at, prompts):
  # Killed once the answers are in the response cache, before the result
  # files are deleted, or once one is: the rerun gets every row exactly
  # once (answers from the cache, the refusal from the file or the store),
  # pays for no line again and finishes the cleanup.
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(invalid_for='refuse me'))
  config = {'cache_dir': str(tmp_path)}
  delete = rounds.Batches._delete
  requests = []

  def killed(self, file_id):
    if file_id in p.files(server)[0] and not requests:
      requests.append(file_id)  # The request file goes at the batch's end.
    elif killed_at == 'before_deleting':
      raise KeyboardInterrupt('killed')
    else:
      delete(self, file_id)
      raise KeyboardInterrupt('killed')
    delete(self, file_id)
  monkeypatch.setattr(rounds.Batches, '_delete', killed)
  with pytest.raises(BaseException, match='killed'):
    run(p, server, prompts, config)
  monkeypatch.setattr(rounds.Batches, '_delete', delete)
  new_process(monkeypatch)
  if killed_at == 'before_deleting':
    assert p.files(server)[1]
  lines = p.fake(server).lines
  good, bad, metrics = run(p, server, prompts, config)
  if prompts == PROMPTS:
    check_rows(good, bad)
  else:
    assert sorted(r['prompt'] for r in good) == prompts and not bad
    assert metrics['cache_hits'] == len(prompts)
  assert p.fake(server).lines == lines == len(prompts)
  assert not synchronous(server) and p.files(server) == ([], [])


def test_a_run_killed_before_reading_an_ended_batch_cleans_up_on_rerun(
    batch_provider, llm_server, tmp_path, monkeypatch):
  # Killed after the batch was kept, before anything was read: the rerun
  # sees the batch end, deletes its request file, reads its results once.
  p = batch_provider
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=0.5))
  config = {'cache_dir': str(tmp_path)}
  run_killed_at_first_look(p, server, PROMPTS[:4], config, monkeypatch)
  assert len(p.files(server)[0]) == 1
  good, bad, _ = run(p, server, PROMPTS[:4], config)
  assert sorted(r['prompt'] for r in good) == PROMPTS[:4] and not bad
  assert p.fake(server).lines == 4 and p.files(server) == ([], [])
