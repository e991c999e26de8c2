"""`batch_api: true`: GenerateText through the OpenAI Batch API, on the real
`openai` client against the fake Batch API (beam_llm/testing/fake_batch_api.py).
The same rows and error rows as synchronous mode; 5xx and unrun lines in
follow-up batches, then synchronously; 4xx lines as error rows; an outage
fails the run; other backends refuse the option at build time."""
import glob
import json
import os
import time

import apache_beam as beam
import pytest

from beam_llm import GenerateText
from beam_llm import remote
from beam_llm._config import ConfigError
from beam_llm.batch_api import lines
from beam_llm.batch_api import openai_batches
from beam_llm.handlers.base import Generation
from beam_llm.testing.fake_batch_api import BatchFaults
from tests.beam_helpers import run_transform

SCHEMA = {'type': 'object', 'properties': {'n': {'type': 'integer'}},
          'required': ['n']}


def run(base_url, prompts, config=None, **options):
  """GenerateText over `prompts` on the FnApiRunner: (rows, error rows,
  metrics by name)."""
  config = {'base_url': base_url, 'model': 'm', 'batch_api': True,
            'batch_poll_secs': 0.05, 'initial_backoff_secs': 0.01,
            **(config or {})}
  out, _, metrics = run_transform(
      GenerateText(model_handler={'type': 'OpenAICompatible', 'config': config},
                   error_handling={'output': 'failed'}, **options),
      [{'prompt': x} for x in prompts], metrics=True)
  return ([r._asdict() for r in out['good']],
          [r._asdict() for r in out['failed']], metrics)


def test_files_respect_both_limits():
  encoded = [(f'c{i}', b'x' * 10) for i in range(7)] + [('huge', b'x' * 99)]
  files, too_big = lines.into_files(encoded, max_requests=3, max_bytes=25)
  assert [[c for c, _ in f] for f in files] == [
      ['c0', 'c1'], ['c2', 'c3'], ['c4', 'c5'], ['c6']]
  assert too_big == ['huge']
  files, _ = lines.into_files(encoded[:7], max_requests=3, max_bytes=1000)
  assert [len(f) for f in files] == [3, 3, 1]


def test_result_lines_are_judged_as_synchronous_answers_are():
  ok = {'choices': [{'message': {'content': 'hi'}}],
        'usage': {'prompt_tokens': 3, 'completion_tokens': 1}}
  text = '\n'.join(json.dumps(l) for l in [
      {'custom_id': 'a', 'response': {'status_code': 200, 'body': ok}},
      {'custom_id': 'b', 'response': {'status_code': 500, 'body': {
          'error': {'message': 'oops'}}}},
      {'custom_id': 'c', 'response': {'status_code': 400, 'body': {
          'error': {'message': 'bad field'}}}},
      {'custom_id': 'd', 'response': None,
       'error': {'code': 'batch_expired', 'message': 'not run'}},
      {'custom_id': 'e', 'response': {'status_code': 200, 'body': {}}},
      {'custom_id': 'f', 'response': {'status_code': 429, 'body': {}}},
  ]) + '\nnot json\n'

  def parse(body):
    if not body.get('choices'):
      raise remote.BadResponse('the answer has no choices')
    return Generation(body['choices'][0]['message']['content'],
                      body['usage']['prompt_tokens'],
                      body['usage']['completion_tokens'])
  v = openai_batches.read_results([text], parse)
  assert v['a'].value == Generation('hi', 3, 1) and not v['a'].retry
  assert v['b'].retry and v['b'].failure.error_type == 'server_error'
  assert not v['c'].retry and v['c'].failure.error_type == 'client_error'
  assert 'bad field' in v['c'].failure.msg
  assert v['d'].retry and 'batch_expired' in v['d'].failure.msg
  assert v['e'].retry and v['e'].failure.error_type == 'bad_response'
  assert v['f'].retry and v['f'].failure.error_type == 'rate_limited'
  assert set(v) == set('abcdef')


def test_the_same_rows_as_synchronous_mode_with_usage_and_lineage(llm_server):
  server = llm_server()
  prompts = [f'prompt {i}' for i in range(20)] + ['prompt 3', '']
  options = dict(usage_fields=True, lineage=True)
  sync, sync_bad, _ = run(server.url + '/v1', prompts,
                          {'batch_api': False}, **options)
  assert server.batch_api.lines == 0
  sync_requests = len(server.log)
  good, bad, metrics = run(server.url + '/v1', prompts, **options)
  assert len(server.log) == sync_requests, 'nothing sent synchronously'
  key = lambda r: r['prompt']
  strip = lambda rows: sorted(
      ({k: v for k, v in r.items() if k != 'lineage'} for r in rows), key=key)
  assert strip(good) == strip(sync) and len(good) == 21
  assert good[0]['input_tokens'] == 2 and good[0]['output_tokens'] == 3
  assert {r['lineage'].backend for r in good} == {'OpenAICompatible'}
  # The empty prompt: the same error row, never sent.
  assert [(e['error_type'], e['msg']) for e in bad] == [
      (e['error_type'], e['msg']) for e in sync_bad] and len(bad) == 1
  # One line per distinct request, in one batch.
  assert server.batch_api.lines == 20 and len(server.batch_api.batches) == 1
  assert metrics['batch_lines'] == 20 and metrics['batches'] == 1
  assert metrics['rows'] == 22 and metrics['failed_rows'] == 1
  assert metrics['input_tokens'] == 40


def test_structured_output_goes_in_the_lines_as_json_schema(llm_server):
  server = llm_server(reply=lambda prompt: '{"n": 1}')
  good, bad, _ = run(server.url + '/v1', ['a', 'b'], response_schema=SCHEMA)
  assert [r['response'] for r in good] == ['{"n": 1}'] * 2 and not bad
  for line in server.batch_api.sent_lines():
    assert line['url'] == '/v1/chat/completions'
    assert line['body']['response_format'] == {
        'type': 'json_schema',
        'json_schema': {'name': 'response', 'schema': SCHEMA}}


def test_a_line_refused_as_invalid_is_an_error_row_not_retried(llm_server):
  server = llm_server(batch_faults=BatchFaults(invalid_for='refuse me'))
  good, bad, _ = run(server.url + '/v1', ['fine 1', 'refuse me', 'fine 2'])
  assert sorted(r['prompt'] for r in good) == ['fine 1', 'fine 2']
  [error] = bad
  assert error['element'].prompt == 'refuse me'
  assert error['error_type'] == 'client_error'
  assert 'HTTP 400' in error['msg'] and 'the prompt is refused' in error['msg']
  assert server.batch_api.lines == 3 and not server.log  # Sent once.


def test_failed_lines_go_in_follow_ups_then_synchronously(llm_server):
  # Half the lines fail with a 500, in every batch: after batch_rounds
  # batches the rest are sent as synchronous requests (which succeed).
  server = llm_server(batch_faults=BatchFaults(line_server_error=0.5))
  prompts = [f'p{i}' for i in range(40)]
  good, bad, metrics = run(server.url + '/v1', prompts,
                           {'batch_rounds': 2})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  sizes = [b['request_counts']['total'] for b in server.batch_api.batch_list()]
  assert len(sizes) == 2 and sizes[0] == 40 and 10 < sizes[1] < 30
  synchronous = [r.prompt for r in server.log]
  assert 0 < len(synchronous) < sizes[1]
  assert metrics['batch_rows_sent_synchronously'] == len(synchronous)
  assert metrics['batch_lines'] == sum(sizes)


@pytest.mark.parametrize('faults, status', [
    (BatchFaults(expire_first_half=True), 'expired'),
    (BatchFaults(cancel_first_half=True), 'cancelled'),
])
def test_lines_an_expired_or_cancelled_batch_left_undone_go_in_a_follow_up(
    llm_server, faults, status):
  server = llm_server(batch_faults=faults)
  prompts = [f'p{i}' for i in range(10)]
  good, bad, metrics = run(server.url + '/v1', prompts)
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  batches = server.batch_api.batch_list()
  assert [(b['status'], b['request_counts']['completed']) for b in batches
          ] == [(status, 5), ('completed', 5)]
  assert metrics['batch_lines_failed'] == 5 and not server.log


def test_files_are_cut_at_batch_max_bytes_and_a_failed_file_is_retried(
    llm_server):
  # The server takes at most 4 lines per file: a file of 5 fails validation
  # (status failed), its rows go in a follow-up, then synchronously.
  server = llm_server(batch_faults=BatchFaults(max_lines_per_file=4))
  prompts = [f'prompt number {i}' for i in range(8)]
  size = len(openai_batches.encode('x' * 64, '/v1/chat/completions', {
      'model': 'm', 'messages': [{'role': 'user', 'content': prompts[0]}],
      'max_tokens': 256, 'temperature': 0.0}))
  good, bad, _ = run(server.url + '/v1', prompts,
                     {'batch_max_bytes': 4 * size + 4})
  assert len(good) == 8 and not bad
  assert [b['request_counts']['total'] for b in server.batch_api.batch_list()
          ] == [4, 4] and not server.log
  good, bad, _ = run(server.url + '/v1', [f'q{i}' for i in range(5)],
                     {'batch_rounds': 2})
  assert len(good) == 5 and not bad
  statuses = [b['status'] for b in server.batch_api.batch_list()][2:]
  assert statuses == ['failed', 'failed'] and len(server.log) == 5


def test_a_rerun_with_cache_dir_pays_for_nothing(llm_server, tmp_path):
  server = llm_server()
  prompts = [f'p{i}' for i in range(10)]
  config = {'cache_dir': str(tmp_path), 'api_key_env': 'BATCH_TEST_KEY'}
  os.environ['BATCH_TEST_KEY'] = 'sk-secret-batch-key'
  try:
    first, _, _ = run(server.url + '/v1', prompts, config)
    again, _, metrics = run(server.url + '/v1', prompts, config)
  finally:
    del os.environ['BATCH_TEST_KEY']
  assert sorted(r['response'] for r in again) == sorted(
      r['response'] for r in first)
  assert server.batch_api.lines == 10 and not server.log
  assert metrics['cache_hits'] == 10
  [record] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  with open(record) as f:
    kept = json.load(f)
  assert kept['status'] == 'completed' and len(kept['custom_ids']) == 10
  for path in glob.glob(str(tmp_path / '**' / '*.json'), recursive=True):
    with open(path) as f:
      assert 'sk-secret' not in f.read()


def test_a_crash_between_creating_a_batch_and_keeping_it_is_resumed(
    llm_server, tmp_path, monkeypatch):
  # The file is kept as pending (with a tag) before its upload; the batch
  # carries the tag in its metadata. A run that dies right after
  # batches.create leaves only the pending record: the rerun finds the
  # batch by its tag among the provider's, instead of paying twice.
  from beam_llm.batch_api import store
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=1.0))
  for n in range(3):  # Other batches on the account, newer and older.
    run(server.url + '/v1', [f'other {n}'])
  prompts = [f'p{i}' for i in range(10)]
  save = store.BatchStore.save

  def crash_after_create(self, record):
    if record['status'] != store.PENDING:
      raise KeyboardInterrupt('killed')
    save(self, record)
  monkeypatch.setattr(store.BatchStore, 'save', crash_after_create)
  with pytest.raises(BaseException, match='killed'):
    run(server.url + '/v1', prompts, {'cache_dir': str(tmp_path)})
  monkeypatch.setattr(store.BatchStore, 'save', save)
  monkeypatch.setattr(store, '_STORES', {})  # A new worker process.
  [kept] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  assert os.path.basename(kept).startswith('pending-')
  run(server.url + '/v1', ['other 4'])  # The newest batch is another's.
  assert server.batch_api.lines == 3 + 10 + 1
  good, bad, _ = run(server.url + '/v1', prompts, {'cache_dir': str(tmp_path)})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert server.batch_api.lines == 3 + 10 + 1 and not server.log
  [kept] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  assert not os.path.basename(kept).startswith('pending-')


def test_a_kept_batch_the_provider_no_longer_has_is_submitted_again(
    llm_server, tmp_path):
  # Batches and files are kept for a while only (OpenAI: 30 days): a rerun
  # that finds a record of a batch the service answers 404 for sends its
  # rows again instead of failing.
  server = llm_server()
  prompts = [f'p{i}' for i in range(10)]
  run(server.url + '/v1', prompts, {'cache_dir': str(tmp_path)})
  [record] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  with open(record) as f:
    kept = json.load(f)
  with open(record, 'w') as f:
    json.dump({**kept, 'status': 'in_progress'}, f)
  for answer in glob.glob(str(tmp_path / '??' / '*.json')):  # The cache.
    os.remove(answer)
  server.batch_api.batches.clear()
  server.batch_api.files.clear()
  good, bad, _ = run(server.url + '/v1', prompts, {'cache_dir': str(tmp_path)})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert server.batch_api.lines == 20 and not server.log


def test_sampling_without_a_seed_gives_identical_prompts_lines_of_their_own(
    llm_server):
  server = llm_server()
  good, _, _ = run(server.url + '/v1', ['same'] * 3 + ['other'],
                   temperature=0.8)
  assert len(good) == 4 and server.batch_api.lines == 4
  good, _, _ = run(server.url + '/v1', ['same'] * 3 + ['other'])
  assert len(good) == 4 and server.batch_api.lines == 4 + 2  # Greedy: cached.


def test_an_outage_fails_the_run_never_error_rows(llm_server):
  server = llm_server()
  url = server.url + '/v1'
  server.stop()  # Nothing listens: uploads fail until retries run out.
  with pytest.raises(Exception, match='Batch API upload failed'):
    run(url, ['a', 'b'], {'max_retries': 1})


@pytest.mark.parametrize('backend, config', [
    ('VertexAI', {'project': 'p', 'location': 'l', 'endpoint': '1'}),
    ('VLLM', {'model': 'm'}),  # Its server has no Batch API.
    ('HuggingFace', {'model': 'm'}),
])
def test_batch_api_on_another_backend_fails_at_build(backend, config):
  with pytest.raises(ConfigError, match=(
      r"option 'model_handler.config.batch_api' is not supported by the "
      rf"{backend} backend: batch_api is supported by the "
      r'OpenAICompatible and Gemini backends')):
    GenerateText(model_handler={'type': backend,
                                'config': {**config, 'batch_api': True}})


def test_batch_options_are_checked_at_build():
  with pytest.raises(ConfigError, match='batch_max_requests.*more than 0'):
    GenerateText(model_handler={'type': 'OpenAICompatible', 'config': {
        'base_url': 'http://x/v1', 'model': 'm', 'batch_api': True,
        'batch_max_requests': 0}})


def test_a_call_looks_once_and_checkpoints_while_its_batch_runs(llm_server):
  # The design for long waits: a call of the waiting DoFn never holds its
  # bundle until the batch ends; it looks once and defers the rest, with
  # the time of the next look.
  from apache_beam.runners.sdf_utils import RestrictionTrackerView
  from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
  from beam_llm.batch_api import awaiting
  from beam_llm.batch_api import transform
  from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=3600))
  handler = OpenAICompatibleHandler(
      model='m', base_url=server.url + '/v1', batch_api=True,
      batch_poll_secs=0.2, generation={'max_new_tokens': 8}, batching={})
  items = [keyed[1] for p in ('a', 'b', 'c') for keyed in
           transform._Requests(handler).process((beam.Row(prompt=p), p))]
  dofn = awaiting.AwaitBatches(handler)
  dofn.setup()

  def call(restriction):
    tracker = ThreadsafeRestrictionTracker(awaiting._Tracker(restriction))
    started = time.monotonic()
    out = list(dofn.process(items, tracker=RestrictionTrackerView(tracker)))
    return out, tracker.deferred_status(), time.monotonic() - started

  out, (residual, delay), secs = call(awaiting._Progress())
  assert not out and secs < 2 and residual.looks == 1
  assert 0 < delay.micros / 1e6 <= 0.2 and server.batch_api.lines == 3
  out, (residual, _), secs = call(residual)  # Still in progress.
  assert not out and secs < 2 and residual.looks == 2
  assert server.batch_api.lines == 3 and server.batch_api.retrieves == 1
  for batch in server.batch_api.batches.values():  # An hour later...
    batch['_created'] -= 3600
  out, deferred, _ = call(residual)
  assert sorted(row.prompt for row, _ in out) == ['a', 'b', 'c']
  assert deferred is None
  dofn.teardown()


def test_a_batch_is_found_by_its_tag_across_pages_of_the_list(llm_server):
  from beam_llm.batch_api.openai_batches import OpenAIBatchClient
  from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
  server = llm_server()
  handler = OpenAICompatibleHandler(
      model='m', base_url=server.url + '/v1', batch_api=True, generation={},
      batching={})
  client = OpenAIBatchClient(handler, handler.load_model())
  line = openai_batches.encode('c', '/v1/chat/completions', {'model': 'm', 'messages': []})
  ids = [client.submit(line, '/v1/chat/completions', f'tag-{n}')['id']
         for n in range(130)]
  assert client.find('tag-0', since=0)['id'] == ids[0]  # On the 2nd page.
  assert client.find('tag-129', since=0)['id'] == ids[-1]
  assert client.find('no-such-tag', since=0) is None
  assert client.find('tag-0', since=time.time() + 60) is None  # Too old.


def test_batch_api_where_answers_feed_the_next_call_fails_at_build():
  import beam_llm
  spec = {'type': 'OpenAICompatible', 'config': {
      'base_url': 'http://x/v1', 'model': 'm', 'batch_api': True}}
  for name, options in (
      ('SummarizePerKey', dict(group_by='day', field='history')),
      ('SemanticReduce', dict(field='history')),
      ('SemanticTopK', dict(field='history', criterion='angriest', k=2))):
    with pytest.raises(ConfigError, match=(
        rf"{name}: option 'model_handler.config.batch_api' is not supported "
        'here: this operator asks the model in rounds')):
      getattr(beam_llm, name)(model_handler=spec, **options)


def test_semantic_operators_run_through_the_batch_api(llm_server):
  from beam_llm import Classify
  server = llm_server(reply=lambda prompt: '{"label": "pizza"}')
  out, _ = run_transform(
      Classify(field='text', labels=['pizza', 'pasta'], model_handler={
          'type': 'OpenAICompatible', 'config': {
              'base_url': server.url + '/v1', 'model': 'm', 'batch_api': True,
              'batch_poll_secs': 0.05}}),
      [{'text': 'margherita'}, {'text': 'quattro formaggi'}])
  assert [r.label for r in out['good']] == ['pizza', 'pizza']
  assert server.batch_api.lines == 2 and not server.log
