"""`batch_api: true` on the Gemini backend with `vertexai: true`: GenerateText
through Vertex AI batch prediction jobs, on the real `google-genai`
(vertexai) and `google-cloud-storage` clients against the fakes of
beam_llm/testing/fake_vertex_batch_api.py and fake_gcs.py (request files
staged under batch_staging_uri, jobs, output directories). The same rows
and error rows as synchronous mode; 5xx and unrun lines in follow-up jobs,
then synchronously; 4xx lines as error rows; an outage fails the run; a
rerun resumes; batch_staging_uri checked at build time."""
import glob
import json

import pytest

from beam_llm import GenerateText
from beam_llm._config import ConfigError
from beam_llm.handlers.base import Generation
from beam_llm.remote import RemoteUnavailable
from beam_llm.testing.fake_batch_api import BatchFaults
from tests.beam_helpers import run_transform

SCHEMA = {'type': 'object', 'properties': {'n': {'type': 'integer'}},
          'required': ['n']}
STAGING = 'gs://staging-bucket/beam-llm/batches'


def config_for(server, **more) -> dict:
  return {'model': 'gemini-test', 'vertexai': True, 'project': 'proj',
          'location': 'us-central1', 'base_url': server.url,
          'batch_api': True, 'batch_staging_uri': STAGING,
          'batch_poll_secs': 0.05, 'initial_backoff_secs': 0.01, **more}


def run(server, prompts, config=None, **options):
  """GenerateText (Gemini on Vertex AI) over `prompts` on the FnApiRunner:
  (rows, error rows, metrics by name)."""
  out, _, metrics = run_transform(
      GenerateText(model_handler={'type': 'Gemini',
                                  'config': config_for(server, **(config or {}))},
                   error_handling={'output': 'failed'}, **options),
      [{'prompt': x} for x in prompts], metrics=True)
  return ([r._asdict() for r in out['good']],
          [r._asdict() for r in out['failed']], metrics)


def jobs(server):
  return server.vertex_batch_api.job_list()


def synchronous(server):
  return [r for r in server.log if r.path.endswith(':generateContent')]


def test_result_lines_are_judged_as_synchronous_answers_are():
  from beam_llm.batch_api import vertex_batches
  from beam_llm.handlers.gemini import GeminiHandler
  handler = GeminiHandler(model='g', vertexai=True, project='p', generation={},
                          batching={})
  ok = {'candidates': [{'content': {'role': 'model', 'parts': [
      {'text': 'thinking...', 'thought': True}, {'text': ' hi '}]},
      'finishReason': 'STOP'}],
        'usageMetadata': {'promptTokenCount': 3, 'candidatesTokenCount': 1}}

  def line(key, **result):
    request = json.loads(vertex_batches.encode(key * 64, 'm', {'contents': []}))
    return {**request, **result}
  text = '\n'.join(json.dumps(l) for l in [
      line('a', response=ok, status=''),
      line('b', status='Internal error: {"error": {"code": 500, "message": '
           '"Internal error encountered.", "status": "INTERNAL"}}'),
      line('c', status={'code': 3, 'message': 'bad field'}),
      line('d', status='RESOURCE_EXHAUSTED: quota'),
      line('e', response={'promptFeedback': {'blockReason': 'SAFETY'}},
           status=''),
      line('f', status='something unreadable'),
      line('g', status='400 Bad Request'),
      # Batch prediction's generic errors_N.jsonl form.
      {'instance': line('h'), 'error': {'code': 14, 'message': 'unavailable'}},
      {'request': {'contents': []}, 'response': ok, 'status': ''},  # No id.
  ]) + '\nnot json\n'
  v = vertex_batches.read_results([text], handler.read_rest_answer)
  v = {k[0]: verdict for k, verdict in v.items()}
  assert v['a'].value == Generation('hi', 3, 1) and not v['a'].retry
  assert v['b'].retry and v['b'].failure.error_type == 'server_error'
  assert not v['c'].retry and v['c'].failure.error_type == 'client_error'
  assert 'bad field' in v['c'].failure.msg
  assert v['d'].retry and v['d'].failure.error_type == 'rate_limited'
  assert v['e'].retry and 'SAFETY' in v['e'].failure.msg
  assert v['f'].retry and v['f'].failure.status == 500
  assert not v['g'].retry and v['g'].failure.status == 400
  assert v['h'].retry and v['h'].failure.status == 503
  assert set(v) == set('abcdefgh')  # A line missing here counts as unrun.


def test_the_same_rows_as_synchronous_mode_and_the_same_requests(llm_server):
  server = llm_server()
  prompts = [f'prompt {i}' for i in range(20)] + ['prompt 3', '']
  options = dict(usage_fields=True, response_schema=SCHEMA, max_new_tokens=64)
  sync, sync_bad, _ = run(server, prompts, {
      'batch_api': False, 'batch_staging_uri': None}, **options)
  assert server.vertex_batch_api.lines == 0
  sent_sync = {r.prompt: r.body for r in synchronous(server)}
  assert len(sent_sync) == 20
  good, bad, metrics = run(server, prompts, **options)
  assert len(synchronous(server)) == 20, 'nothing sent synchronously'
  key = lambda r: r['prompt']
  assert sorted(good, key=key) == sorted(sync, key=key) and len(good) == 21
  assert good[0]['input_tokens'] == 2 and good[0]['output_tokens'] == 3
  assert [(e['error_type'], e['msg']) for e in bad] == [
      (e['error_type'], e['msg']) for e in sync_bad] and len(bad) == 1
  # One job on one staged file; each line's request is what the synchronous
  # call sent for that prompt, plus the labels naming its row.
  [job] = jobs(server)
  assert job['total'] == 20 and job['state'] == 'JOB_STATE_SUCCEEDED'
  assert job['input'].startswith(STAGING + '/')
  assert job['input'].endswith('/requests.jsonl')
  lines = server.vertex_batch_api.sent_lines()
  ids = set()
  for line in lines:
    request = dict(line['request'])
    labels = request.pop('labels')
    ids.add(labels['beam_llm_id_0'] + labels['beam_llm_id_1'])
    assert request == sent_sync[request['contents'][0]['parts'][0]['text']]
  assert lines[0]['request']['generationConfig']['responseJsonSchema'] == SCHEMA
  assert len(ids) == 20 and all(len(i) == 64 for i in ids)
  assert metrics['batch_lines'] == 20 and metrics['batches'] == 1
  assert metrics['rows'] == 22 and metrics['failed_rows'] == 1
  assert metrics['input_tokens'] == 40


def test_a_line_refused_as_invalid_is_an_error_row_not_retried(llm_server):
  server = llm_server(batch_faults=BatchFaults(invalid_for='refuse me'))
  good, bad, _ = run(server, ['fine 1', 'refuse me', 'fine 2'])
  assert sorted(r['prompt'] for r in good) == ['fine 1', 'fine 2']
  [error] = bad
  assert error['element'].prompt == 'refuse me'
  assert error['error_type'] == 'client_error'
  assert 'HTTP 400' in error['msg'] and 'invalid argument' in error['msg']
  assert server.vertex_batch_api.lines == 3 and not synchronous(server)


def test_failed_lines_go_in_follow_ups_then_synchronously(llm_server):
  # Half the lines fail with INTERNAL, in every job: after batch_rounds
  # jobs the rest are sent synchronously (which succeed).
  server = llm_server(batch_faults=BatchFaults(line_server_error=0.5))
  prompts = [f'p{i}' for i in range(40)]
  good, bad, metrics = run(server, prompts, {'batch_rounds': 2})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  sizes = [j['total'] for j in jobs(server)]
  assert len(sizes) == 2 and sizes[0] == 40 and 10 < sizes[1] < 30
  resent = [r.prompt for r in synchronous(server)]
  assert 0 < len(resent) < sizes[1] and len(set(resent)) == len(resent)
  assert metrics['batch_rows_sent_synchronously'] == len(resent)
  assert metrics['batch_lines'] == sum(sizes)


@pytest.mark.parametrize('faults, state, follow_up', [
    # Expired half done: the 5 lines without a result go in a follow-up.
    (BatchFaults(expire_first_half=True), 'JOB_STATE_EXPIRED', 5),
    # Cancelled, no output at all: all 10.
    (BatchFaults(cancel_first_half=True), 'JOB_STATE_CANCELLED', 10),
])
def test_lines_an_ended_job_left_without_results_go_in_a_follow_up(
    llm_server, faults, state, follow_up):
  server = llm_server(batch_faults=faults)
  prompts = [f'p{i}' for i in range(10)]
  good, bad, metrics = run(server, prompts)
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert [(j['state'], j['total']) for j in jobs(server)] == [
      (state, 10), ('JOB_STATE_SUCCEEDED', follow_up)]
  assert metrics['batch_lines_failed'] == follow_up and not synchronous(server)


def test_a_file_over_the_line_cap_fails_and_its_rows_are_sent_again(llm_server):
  server = llm_server(batch_faults=BatchFaults(max_lines_per_file=4))
  good, bad, _ = run(server, [f'q{i}' for i in range(5)], {'batch_rounds': 2})
  assert len(good) == 5 and not bad
  assert [j['state'] for j in jobs(server)] == ['JOB_STATE_FAILED'] * 2
  assert len(synchronous(server)) == 5


def test_a_job_or_output_the_service_no_longer_has(llm_server):
  # A job deleted (404) is `gone`: its rows are submitted again; an output
  # directory with nothing in it reads as no lines (all unrun).
  from beam_llm.batch_api.vertex_batches import VertexBatchClient
  from beam_llm.handlers.gemini import GeminiHandler
  server = llm_server()
  handler = GeminiHandler(**config_for(server), generation={}, batching={})
  client = VertexBatchClient(handler, handler.load_model())
  name = 'projects/proj/locations/us-central1/batchPredictionJobs/999'
  assert client.retrieve(name) == {'id': name, 'status': 'gone'}
  assert client.content(STAGING + '/no-such-job/output') == ''
  assert client.find('no-such-tag', since=0) is None


def test_a_rerun_waits_for_the_open_job_instead_of_submitting(
    llm_server, tmp_path, monkeypatch):
  # A run killed right after submitting (its job kept, still open) and a
  # rerun in a new process: the rerun waits for that job and reads it,
  # submitting nothing; then a third run pays for nothing (cache_dir).
  from beam_llm.batch_api import store
  from beam_llm.batch_api.vertex_batches import VertexBatchClient
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=1.0))
  prompts = [f'p{i}' for i in range(10)]
  retrieve = VertexBatchClient.retrieve

  def killed(self, batch_id):
    raise KeyboardInterrupt('killed')
  monkeypatch.setattr(VertexBatchClient, 'retrieve', killed)
  with pytest.raises(BaseException, match='killed'):
    run(server, prompts, {'cache_dir': str(tmp_path)})
  monkeypatch.setattr(VertexBatchClient, 'retrieve', retrieve)
  monkeypatch.setattr(store, '_STORES', {})  # A new worker process.
  [kept] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  with open(kept) as f:
    assert json.load(f)['status'] == 'queued'
  assert server.vertex_batch_api.retrieves == 0
  good, bad, _ = run(server, prompts, {'cache_dir': str(tmp_path)})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert server.vertex_batch_api.lines == 10 and not synchronous(server)
  assert server.vertex_batch_api.retrieves >= 1
  again, _, metrics = run(server, prompts, {'cache_dir': str(tmp_path)})
  assert sorted(r['response'] for r in again) == sorted(
      r['response'] for r in good) and metrics['cache_hits'] == 10
  assert server.vertex_batch_api.lines == 10 and server.gcs.uploads == 1


def test_a_crash_between_creating_a_job_and_keeping_it_is_resumed(
    llm_server, tmp_path, monkeypatch):
  # The file is kept as pending (with a tag) before its upload; the job
  # carries the tag as its display name: the rerun finds it by filter.
  from beam_llm.batch_api import store
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=1.0))
  for n in range(3):  # Other jobs in the project.
    run(server, [f'other {n}'])
  prompts = [f'p{i}' for i in range(10)]
  save = store.BatchStore.save

  def crash_after_create(self, record):
    if record['status'] != store.PENDING:
      raise KeyboardInterrupt('killed')
    save(self, record)
  monkeypatch.setattr(store.BatchStore, 'save', crash_after_create)
  with pytest.raises(BaseException, match='killed'):
    run(server, prompts, {'cache_dir': str(tmp_path)})
  monkeypatch.setattr(store.BatchStore, 'save', save)
  monkeypatch.setattr(store, '_STORES', {})  # A new worker process.
  run(server, ['other 4'])  # The newest job is another's.
  assert server.vertex_batch_api.lines == 3 + 10 + 1
  good, bad, _ = run(server, prompts, {'cache_dir': str(tmp_path)})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert server.vertex_batch_api.lines == 3 + 10 + 1 and not synchronous(server)


def test_an_outage_fails_the_run_never_error_rows(llm_server):
  server = llm_server()
  server.stop()  # Nothing listens: the staging upload fails.
  with pytest.raises(Exception, match='Batch API upload failed') as raised:
    run(server, ['a', 'b'], {'max_retries': 1})
  assert 'RemoteUnavailable' in repr(raised.value) or isinstance(
      raised.value, RemoteUnavailable)
  assert 'local-test-server' not in str(raised.value)  # The static token.


@pytest.mark.parametrize('config, message', [
    ({}, r"'model_handler.config.batch_staging_uri' is required with "
         r'vertexai: true and batch_api: true'),
    ({'batch_staging_uri': 'bucket/prefix'}, 'must be a gs://bucket/prefix'),
    ({'batch_staging_uri': 'gs://b/p', 'batch_api': False},
     'is used only with vertexai: true and batch_api: true'),
])
def test_batch_staging_uri_is_checked_at_build(config, message):
  with pytest.raises(ConfigError, match=message):
    GenerateText(model_handler={'type': 'Gemini', 'config': {
        'model': 'gemini-2.5-flash', 'vertexai': True, 'project': 'p',
        'batch_api': True, **config}})


def test_vertex_file_limits_are_its_own():
  # Through GenerateText's option checks, whose signature shows the Gemini
  # Developer API's defaults.
  vertex = GenerateText(model_handler={'type': 'Gemini', 'config': {
      'model': 'g', 'vertexai': True, 'project': 'p', 'batch_api': True,
      'batch_staging_uri': 'gs://b/p'}})._handler
  assert vertex.batch.batch_max_bytes == 1_000_000_000
  assert vertex.batch.batch_max_requests == 50_000


def test_results_without_the_labels_rows_are_matched_by_fail_loudly():
  # If Vertex AI ever stopped echoing the request's labels, no row could be
  # matched: rather than resubmit every row and pay the synchronous price
  # in the end, the run stops and says why.
  from beam_llm.batch_api import vertex_batches
  ok = {'candidates': [{'content': {'role': 'model', 'parts': [{'text': 'hi'}]},
                        'finishReason': 'STOP'}]}
  text = '\n'.join(json.dumps({'request': {'contents': []}, 'response': ok,
                               'status': ''}) for _ in range(3))
  with pytest.raises(RuntimeError, match='3 result lines carry no '
                     r'beam_llm_id_\* request labels'):
    vertex_batches.read_results([text], lambda body: body)
  assert vertex_batches.read_results([''], lambda body: body) == {}
