"""`batch_api: true` on the Gemini backend with `vertexai: true`: what is
Vertex AI batch prediction's own, on the real `google-genai` (vertexai) and
`google-cloud-storage` clients against the fakes of
beam_llm/testing/fake_vertex_batch_api.py and fake_gcs.py (request files
staged under batch_staging_uri, jobs, output directories): its result
lines judged as synchronous answers, its lines carrying the synchronous
request plus the labels naming the row, a job or output it no longer has,
batch_staging_uri checked at build time, its file limits. The scenarios
every provider shares (follow-ups, error rows, resume, crashes, outages,
file cleanup) run on it in tests/test_batch_api_scenarios.py and
test_batch_api_cleanup.py."""
import functools
import json

import pytest

from beam_llm import GenerateText
from beam_llm._config import ConfigError
from beam_llm.handlers.base import Generation
from tests import batch_providers
from tests.batch_providers import STAGING
from tests.batch_providers import synchronous

SCHEMA = {'type': 'object', 'properties': {'n': {'type': 'integer'}},
          'required': ['n']}
VERTEX = batch_providers.PROVIDERS['vertex']
run = functools.partial(batch_providers.run, VERTEX)


def jobs(server):
  return server.vertex_batch_api.job_list()


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
  sent_sync = batch_providers.same_rows_as_synchronous(
      VERTEX, server, {'batch_api': False, 'batch_staging_uri': None},
      usage_fields=True, response_schema=SCHEMA, max_new_tokens=64)
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


def test_a_request_file_over_8_mb_is_staged_by_resumable_upload(llm_server):
  # google-cloud-storage uploads an object over 8 MB as a resumable upload
  # (a session, then its bytes with a Content-Range), not one multipart
  # request: ~9.6 MB of prompts in one file take that path.
  server = llm_server()
  prompts = [f'ticket {i}: ' + 'the parcel never came. ' * 14_000
             for i in range(30)]
  good, bad, _ = run(server, prompts)
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert server.gcs.resumable_uploads == 1 and server.gcs.uploads == 1
  [job] = jobs(server)
  assert job['total'] == 30 and job['state'] == 'JOB_STATE_SUCCEEDED'
  assert len(synchronous(server)) == 0, 'nothing sent synchronously'


def test_a_job_or_output_the_service_no_longer_has(llm_server):
  # A job deleted (404) is `gone`: its rows are submitted again; an output
  # directory with nothing in it reads as no lines (all unrun).
  from beam_llm.batch_api.vertex_batches import VertexBatchClient
  from beam_llm.handlers.gemini import GeminiHandler
  server = llm_server()
  handler = GeminiHandler(**VERTEX.config(server), generation={},
                          batching={})
  client = VertexBatchClient(handler, handler.load_model())
  name = 'projects/proj/locations/us-central1/batchPredictionJobs/999'
  assert client.retrieve(name) == {'id': name, 'status': 'gone'}
  assert client.content(STAGING + '/no-such-job/output') == ''
  assert client.find('no-such-tag', since=0) is None


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
