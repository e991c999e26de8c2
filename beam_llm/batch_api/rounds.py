"""One look at a group of rows' batches: submit what needs a batch, poll
what is open, read what has ended (no Beam here; beam_llm/batch_api/transform.py
calls `step` from its DoFn).

A row (its request's `custom_id`) is settled by an answer (its batch's
output, or the response cache), or by a refusal (a 4xx line: an error row,
as in synchronous mode). A line that failed with a 5xx or was never run
(the batch expired, was cancelled or failed validation) goes into a
follow-up batch, up to `batch_rounds` batches and within
`batch_deadline_secs` of its first; past either it is sent as a
synchronous request (at full price, in seconds), as is a request too large
for any batch file.

Files (`batch_keep_files: false`, the default): a batch's request file is
never read again once the batch has ended (follow-ups encode their lines
anew), so it is deleted then, before the end is recorded (a crash in
between: the run that sees the end again deletes it again). Its result
files are read again by a rerun (or after this process drops answers it
holds) unless what they say is kept elsewhere, so they are deleted only
once every line read from them is in cache_dir: answers written to the
response cache, refused lines beside the batch records (store.py). A
batch read again after that finds its lines there instead. Its record
says `results_kept` before the deletes and `files_deleted` after, so a
run killed in between has them deleted by the next run's first look, even
if that run finds every row in the cache and never reads the batch. Without
cache_dir, or with the cache off, result files are kept. A delete that
fails is a warning: the file stays, nothing else changes.
"""
import asyncio
import collections
import dataclasses
import logging
import threading
import time
import uuid
from typing import Dict, Iterable, List, Mapping, Tuple

from beam_llm import remote
from beam_llm.batch_api import lines
from beam_llm.batch_api.store import FINAL
from beam_llm.batch_api.store import PENDING
from beam_llm.batch_api.store import store_for
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import GenerationFailure
from beam_llm.remote import RemoteUnavailable

_LOG = logging.getLogger('beam_llm.GenerateText')
# Answers of read batches kept per process; past this they are dropped and
# read again from the provider's files when needed.
_MAX_ANSWERS = 200_000


class Batches:
  """The Batch API side of one backend in one worker process."""
  def __init__(self, handler, loaded):
    self._handler = handler
    self._loaded = loaded
    self.options = handler.batch
    self.client = handler.batch_provider(handler, loaded)
    self.store = store_for(handler.policy.cache_dir, handler.target())
    self._answers: Dict[str, object] = {}
    self._refused: Dict[str, GenerationFailure] = {}
    self._read = set()  # Batch ids whose results are in _answers.
    self._ended_here = set()  # Batch ids this process saw end.
    self._swept = set()  # Batch ids whose leftover files this process deleted.
    self._lock = threading.Lock()
    # For the DoFn's metrics: batches, batch_lines, cache_hits, ...
    self.counts = collections.Counter()
    self.usage = []  # Answers read from batches (their tokens were paid).

  def step(self, requests: Mapping[str, dict], first: bool
           ) -> Tuple[Dict[str, object], List[str], bool]:
    """(settled responses by custom_id, custom_ids to send synchronously,
    whether a batch holding the others is still open)."""
    with self._lock:
      if len(self._answers) > _MAX_ANSWERS:
        # Dropped between steps, never within one: a step settles its rows
        # from the answers it has just read.
        self._answers.clear()
        self._read.clear()
      settled = {}
      if first:
        self.store.refresh()
        self._sweep()
        settled.update(self._from_cache(requests))
      for record in self.store.records_with(
          [c for c in requests if c not in settled]):
        if record['status'] == PENDING:
          record = self._resolve(record)
          if record is None:
            continue
        if record['status'] not in FINAL:
          batch = self.client.retrieve(record['batch_id'])
          if batch['status'] not in FINAL:
            continue
          record = self._ended(record, batch)
          self._ended_here.add(record['batch_id'])
        if record['batch_id'] not in self._read:
          # Tokens count where a batch is seen to end: a rerun reading a
          # batch an earlier run finished does not count them again.
          self._read_results(record, paid=record['batch_id'] in self._ended_here)
      settled.update(self._known([c for c in requests if c not in settled]))
      submit, sync, waiting = self._plan(
          [c for c in requests if c not in settled])
      sync += self._submit({c: requests[c] for c in submit})
      return settled, sync, waiting or bool(submit)

  def take_counts(self) -> Tuple[Dict[str, int], list]:
    """The counts and the paid answers since the last call (the DoFn
    records them as Beam metrics, on its own thread)."""
    with self._lock:
      counts, self.counts = dict(self.counts), collections.Counter()
      usage, self.usage = self.usage, []
      counts['batch_api_requests'], self.client.requests = self.client.requests, 0
    return counts, usage

  def _from_cache(self, requests) -> dict:
    """Answers kept in cache_dir by an earlier run, batch or synchronous."""
    cache = self._loaded.cache
    if cache is None or not self._handler.policy.cache_dir:
      return {}
    ids = list(requests)
    kept = remote.run_blocking(_read_all(cache, ids))  # Together, not one by one.
    found = {c: v for c, v in zip(ids, map(_kept, kept)) if v is not None}
    self.counts['cache_hits'] += len(found)
    return found

  def _known(self, custom_ids: Iterable[str]) -> dict:
    out = {}
    for c in custom_ids:
      if c in self._answers:
        out[c] = self._answers[c]
      elif c in self._refused:
        out[c] = self._refused[c]
    return out

  def _plan(self, custom_ids: List[str]):
    """Which unsettled rows go in a new batch, which synchronously, and
    whether some wait on an open batch."""
    submit, sync, waiting = [], [], False
    now = time.time()
    for c in custom_ids:
      rounds = self.store.rounds(c)
      if any(r['status'] not in FINAL for r in rounds):
        waiting = True
      elif not rounds or (
          len(rounds) < self.options.batch_rounds and
          now - min(r['submitted_at'] for r in rounds)
          < self.options.batch_deadline_secs):
        submit.append(c)
      else:
        sync.append(c)
    return submit, sync, waiting

  def _submit(self, requests: Mapping[str, dict]) -> List[str]:
    """Submits batches for these rows, each kept before anything waits on
    it; returns the custom_ids no batch file can carry."""
    if not requests:
      return []
    by_url = collections.defaultdict(list)
    for custom_id, request in requests.items():
      url, body = self._handler.batch_line(request)
      by_url[url].append((custom_id, self.client.encode(custom_id, url, body)))
    too_big = []
    for url, encoded in by_url.items():
      files, big = lines.into_files(encoded, self.options.batch_max_requests,
                                    self.options.batch_max_bytes)
      too_big += big
      for file in files:
        tag = uuid.uuid4().hex
        pending = {'batch_id': f'{PENDING}-{tag}', 'tag': tag,
                   'endpoint': url, 'submitted_at': time.time(),
                   'status': PENDING, 'custom_ids': [c for c, _ in file]}
        self.store.save(pending)  # Before the upload: see _resolve.
        pending['input_file'] = self.client.upload(
            b''.join(d for _, d in file), url, tag)
        self.store.save(pending)  # The file to delete if no batch comes.
        batch = self.client.create(pending['input_file'], url, tag)
        self.store.save({**pending, 'batch_id': batch['id'],
                         'status': batch['status']})
        self.store.discard(pending)
        self.counts['batches'] += 1
        self.counts['batch_lines'] += len(file)
    return too_big

  def _resolve(self, pending: dict):
    """A file kept as about to be submitted by a run that stopped before
    keeping its batch: the batch found by its tag (to wait for), or None.
    Not found, it may still be on its way from another worker; once the
    longest a submission can take has passed, its rows are submitted again."""
    found = self.client.find(pending['tag'], since=pending['submitted_at'] - 300)
    if found is not None:
      # Looked at right away: its files come with its end.
      record = {**pending, 'batch_id': found['id'], 'status': 'in_progress',
                'input_file': pending.get('input_file') or found.get('input_file')}
      self.store.save(record)
      self.store.discard(pending)
      return record
    if time.time() - pending['submitted_at'] > (
        self._handler.policy.deadline_secs + 60):
      if pending.get('input_file'):  # Uploaded, never made a batch.
        self._delete(pending['input_file'])
      self.store.discard(pending)
    return None

  def _ended(self, record: dict, batch: dict) -> dict:
    input_file = record.get('input_file') or batch.get('input_file')
    if input_file:
      self._delete(input_file)  # Before the end is kept: see the module.
    record = {**record, 'status': batch['status'], 'input_file': input_file,
              'result_files': list(batch.get('result_files') or []),
              'errors': [self._loaded.redactor.redact(str(e))
                         for e in (batch.get('errors') or [])[:5]]}
    self.store.save(record)
    if batch['status'] != 'completed':
      done = batch.get('done')  # None: the provider does not say.
      _LOG.warning('%s: batch %s %s (%s%d lines)%s; '
                   'its lines without a result go in a follow-up batch',
                   self._handler.message_prefix(), record['batch_id'],
                   batch['status'], '' if done is None else f'{done} done of ',
                   len(record['custom_ids']),
                   f': {record["errors"][0]}' if record['errors'] else '')
    return record

  def _read_results(self, record: dict, paid: bool) -> None:
    """Reads an ended batch's result files into the answers; deletes them
    once all they say is kept in cache_dir (see the module)."""
    files = record.get('result_files') or []
    verdicts, refused, answers, gone = {}, {}, {}, False
    for file_id in files:
      text = self.client.content(file_id)
      gone = gone or not text
      verdicts.update(self.client.read_results([text], record['endpoint']))
    missing = [c for c in record['custom_ids'] if c not in verdicts]
    recovered = (self._recover(missing) if gone and missing and self._durable()
                 else set())
    for custom_id in record['custom_ids']:
      verdict = verdicts.get(custom_id)
      if custom_id in recovered:
        continue
      if verdict is None or verdict.retry:
        self.counts['batch_lines_failed'] += 1
      elif verdict.failure is not None:
        failure = verdict.failure
        refused[custom_id] = {'error_type': failure.error_type,
                              'msg': self._loaded.redactor.redact(
                                  f'{self._handler.backend}: {failure.msg}')}
        self._refused[custom_id] = GenerationFailure(
            refused[custom_id]['msg'], failure.error_type)
      else:
        self._answers[custom_id] = answers[custom_id] = verdict.value
        if paid:
          self.usage.append(verdict.value)
    cache = self._loaded.cache
    kept = remote.run_blocking(_write_all(cache, answers)) if cache else []
    self._read.add(record['batch_id'])
    self._ended_here.discard(record['batch_id'])  # Its tokens are counted.
    if (files and self._durable() and not self.options.batch_keep_files
        and all(kept) and self.store.keep_refused(refused)):
      self._delete_results({**record, 'results_kept': True})

  def _delete_results(self, record: dict) -> None:
    """Deletes the result files of a batch whose lines are all kept; the
    record says so before and after (see the module)."""
    self._swept.add(record['batch_id'])
    self.store.save(record)
    if all([self._delete(f) for f in record['result_files']]):
      self.store.save({**record, 'files_deleted': True})

  def _sweep(self) -> None:
    """Result files a killed run kept every line of but did not delete."""
    if self.options.batch_keep_files:
      return
    for record in self.store.records():
      if (record.get('results_kept') and not record.get('files_deleted')
          and record['batch_id'] not in self._swept):
        self._delete_results(record)

  def _durable(self) -> bool:
    """Whether answers read from batches are kept in cache_dir."""
    return bool(self._handler.policy.cache_dir) and self._loaded.cache is not None

  def _recover(self, custom_ids: List[str]) -> set:
    """Lines of a batch read before whose result files are gone (deleted
    once kept): their answers from the response cache, their refusals from
    the store; the custom_ids found."""
    kept = remote.run_blocking(_read_all(self._loaded.cache, custom_ids))
    answers = {c: v for c, v in zip(custom_ids, map(_kept, kept))
               if v is not None}
    self._answers.update(answers)
    others = [c for c in custom_ids if c not in answers]
    refusals = remote.run_blocking(_in_threads(self.store.refused, others))
    for custom_id, refused in zip(others, refusals):
      if refused is not None:
        self._refused[custom_id] = GenerationFailure(
            str(refused['msg']), str(refused.get('error_type')))
    return set(answers) | {c for c, r in zip(others, refusals) if r is not None}

  def _delete(self, file_id: str) -> bool:
    """Deletes a provider file unless batch_keep_files; a failure is a
    warning naming the file (ids only, never a key). Whether it is gone."""
    if self.options.batch_keep_files:
      return False
    try:
      self.client.delete(file_id)
    except RemoteUnavailable as exn:
      _LOG.warning('%s: could not delete Batch API file %s; it stays at the '
                   'provider until deleted there (%s)',
                   self._handler.message_prefix(), file_id,
                   self._loaded.redactor.redact(str(exn)))
      self.counts['batch_files_not_deleted'] += 1
      return False
    self.counts['batch_files_deleted'] += 1
    return True


async def _read_all(cache, keys: List[str]) -> list:
  return await asyncio.gather(*[cache.read(k) for k in keys])


async def _in_threads(fn, keys: List[str]) -> list:
  return await asyncio.gather(*[remote.in_thread(fn, k) for k in keys])


async def _write_all(cache, answers: Mapping[str, object]) -> list:
  """Whether each answer is now kept in cache_dir."""
  return await asyncio.gather(*[cache.write(c, dataclasses.asdict(v))
                                for c, v in answers.items()])


def _kept(value):
  """A response cache entry as a Generation; None if it is not one."""
  if not isinstance(value, dict) or not isinstance(value.get('text'), str):
    return None
  counts = [value.get('input_tokens'), value.get('output_tokens')]
  if not all(c is None or type(c) is int for c in counts):  # pylint: disable=unidiomatic-typecheck
    return None
  return Generation(value['text'], *counts)
