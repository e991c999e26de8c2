"""The remote-call policy (beam_llm/remote.py), seen from a local server:
what is retried and what is not, Retry-After, throttling, concurrency.

Everything goes through a real backend and its real client library (the
OpenAI one here; tests/test_remote_backends.py covers the others) talking
HTTP to beam_llm.testing.fake_llm_server on 127.0.0.1.
"""
import email.utils
import threading
import time

import pytest

from beam_llm import remote
from beam_llm.remote import budgets as remote_budgets
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
from beam_llm.testing.fake_llm_server import Faults

FAST = dict(max_concurrency=8, timeout_secs=2.0, initial_backoff_secs=0.01,
            max_backoff_secs=0.05, max_retries=2)


def handler(server, **config):
  generation = config.pop('generation', {'max_new_tokens': 8})
  return OpenAICompatibleHandler(
      model='m', base_url=server.url + '/v1', generation=generation,
      batching={}, **{**FAST, **config})


def run(h, prompts, loaded=None):
  loaded = loaded or h.load_model()
  return [r.inference for r in h.run_inference(prompts, loaded)]


def test_retry_after_is_read_as_seconds_or_http_date():
  assert remote.parse_retry_after('3') == 3.0
  assert remote.parse_retry_after(' 1.5 ') == 1.5
  assert remote.parse_retry_after('-2') == 0.0
  in_10s = email.utils.formatdate(time.time() + 10, usegmt=True)
  assert 8.5 <= remote.parse_retry_after(in_10s) <= 10.0
  past = email.utils.formatdate(time.time() - 60, usegmt=True)
  assert remote.parse_retry_after(past) == 0.0
  assert remote.parse_retry_after('soon') is None
  assert remote.parse_retry_after(None) is None
  assert remote.retry_after_from_headers({'retry-after-ms': '250'}) == 0.25
  assert remote.retry_after_from_headers({'retry-after': '2'}) == 2.0


# attempts: 3 retried (max_retries=2), 1 not. Outages fail the bundle; the
# others are the row's own problem.
@pytest.mark.parametrize('fault, error_type, attempts', [
    ('429', 'rate_limited', 3),
    ('500', 'server_error', 3),
    ('503', 'server_error', 3),
    ('408', 'timeout', 3),
    ('timeout', 'timeout', 3),
    ('drop', 'connection_error', 3),
    ('malformed', 'bad_response', 3),  # A body cut off: transient.
    ('empty', 'bad_response', 3),  # `{}`, no choices: transient too.
    ('500:validation', 'client_error', 1),  # A refusal, whatever its status.
    ('422', 'client_error', 1),
    ('400', 'client_error', 1),
    ('404', 'client_error', 1),
])
def test_each_fault_is_retried_or_not_and_ends_as_its_error_type(
    llm_server, fault, error_type, attempts):
  server = llm_server(faults=Faults(script=[fault] * 3, slow_secs=1.0))
  h = handler(server, timeout_secs=0.3)
  if error_type not in remote.OUTAGE_TYPES:  # An error row.
    [response] = run(h, ['hello'])
    assert isinstance(response, GenerationFailure)
    assert response.error_type == error_type
    if attempts > 1:
      assert 'gave up after 3 attempts: max_retries=2' in response.msg
  else:  # The service never answered: an outage fails the bundle.
    with pytest.raises(remote.RemoteUnavailable, match=(
        'kept failing until the retries ran out.*gave up after 3 attempts: '
        'max_retries=2')):
      run(h, ['hello'])
  assert len(server.log) == attempts  # max_retries=2: 1 + 2 attempts at most.


@pytest.mark.parametrize('fault, error_type', [
    ('500', 'server_error'), ('drop', 'connection_error'),
    ('timeout', 'timeout')])
def test_a_row_that_keeps_failing_while_others_are_answered_is_an_error_row(
    llm_server, fault, error_type):
  """A prompt that crashes or stalls the server is that row's problem."""
  server = llm_server(faults=Faults(script=[fault] * 3, script_for='poison',
                                    slow_secs=1.0), latency_secs=0.05)
  responses = run(handler(server, timeout_secs=0.3),
                  ['poison'] + [f'row {i}' for i in range(20)])
  assert responses[0].error_type == error_type
  assert all(isinstance(r, Generation) for r in responses[1:])


def test_a_row_still_rate_limited_when_retries_run_out_fails_the_run(llm_server):
  """429s are the service's state, never a row's: even with other rows
  answered, a row given up on for 429s is an outage, not an error row."""
  server = llm_server(faults=Faults(script=['429'] * 3, script_for='unlucky'),
                      latency_secs=0.05)
  with pytest.raises(remote.RemoteUnavailable, match='429'):
    run(handler(server), ['unlucky'] + [f'row {i}' for i in range(20)])


def test_retryable_faults_then_an_answer(llm_server):
  server = llm_server(faults=Faults(
      script=['429', '503', 'drop', 'timeout', '500'], slow_secs=1.0))
  h = handler(server, timeout_secs=0.3, max_retries=5)
  [response] = run(h, ['hello'])
  assert response == Generation('echo: hello', 1, 2)
  assert len(server.log) == 6
  assert h.stats['retries'] == 5 and h.stats['responses_429'] == 1


@pytest.mark.parametrize('retry_after', [1, 'date:2'], ids=['seconds', 'http-date'])
def test_no_request_arrives_while_a_retry_after_is_in_force(llm_server, retry_after):
  # Two 429s with Retry-After while 8 requests are in flight at a time.
  # Without the gate, the other rows would go on arriving for ~0.6 s.
  script = ['429'] + ['ok'] * 12 + ['429']
  server = llm_server(faults=Faults(script=script, retry_after=retry_after),
                      latency_secs=0.05)
  responses = run(handler(server, max_retries=5, deadline_secs=30), [
      f'row {i}' for i in range(96)])
  assert all(isinstance(r, Generation) for r in responses)
  assert len(server.retry_after_windows) == 2
  # Requests already on the wire when the 429 left may still land just
  # after it (on a loaded 2-core machine, a little later); nothing may
  # arrive later inside the window.
  tolerance = 0.2
  for sent, until in server.retry_after_windows:
    early = [r.arrived - sent for r in server.log
             if sent + tolerance < r.arrived < until]
    assert early == [], f'requests {early}s after a Retry-After of {until - sent:.2f}s'


def test_a_retry_after_past_the_deadline_fails_at_once(llm_server):
  server = llm_server(faults=Faults(script=['429'], retry_after=30))
  start = time.monotonic()
  with pytest.raises(remote.RemoteUnavailable,
                     match='429.*the next retry would pass deadline_secs=2'):
    run(handler(server, deadline_secs=2), ['hello'])
  assert time.monotonic() - start < 1.5
  assert len(server.log) == 1


def test_many_requests_in_flight_but_never_more_than_max_concurrency(llm_server):
  server = llm_server(latency_secs=0.05)
  start = time.monotonic()
  responses = run(handler(server, max_concurrency=8), [f'p{i}' for i in range(64)])
  elapsed = time.monotonic() - start
  assert [r.text for r in responses] == [f'echo: p{i}' for i in range(64)]
  assert server.max_in_flight == 8
  assert elapsed < 64 * 0.05 / 2  # Sequential would take 3.2 s.


def test_throttler_follows_the_sre_formula():
  throttler = remote_budgets.Throttler(60, 2.0, __import__('random').Random(0))
  for _ in range(100):
    throttler.record(accepted=True)
  assert not any(throttler.should_delay() for _ in range(100))
  for _ in range(300):  # Now the service refuses everything.
    throttler.record(accepted=False)
  delayed = sum(throttler.should_delay() for _ in range(100))
  # P = (400 - 2 * 100) / 401 at first, rising as delayed requests count.
  assert delayed > 40


def test_throttling_ends_when_the_refusals_leave_the_window():
  throttler = remote_budgets.Throttler(0.2, 2.0, __import__('random').Random(0))
  for _ in range(50):
    throttler.record(accepted=False)
  assert sum(throttler.should_delay() for _ in range(20)) > 10
  time.sleep(0.25)
  assert not any(throttler.should_delay() for _ in range(20))


def test_a_refusing_service_sees_less_traffic(llm_server):
  # Every request gets a 429 and no Retry-After. Without throttling, 8
  # threads retrying every ~10 ms would send ~1000 requests in 1.5 s.
  server = llm_server(faults=Faults(rate_limited=1.0))
  h = handler(server, max_retries=10_000, deadline_secs=1.5,
              initial_backoff_secs=0.01, max_backoff_secs=0.01)
  loaded = h.load_model()
  with pytest.raises(remote.RemoteUnavailable, match='429|throttled'):
    run(h, [f'p{i}' for i in range(8)], loaded)
  time.sleep(1.6)  # Every row's deadline has passed.
  assert len(server.log) < 200


def test_identical_requests_are_sent_once_per_worker(llm_server):
  server = llm_server()
  h = handler(server)
  loaded = h.load_model()
  first = run(h, ['a', 'a', 'b'], loaded)
  second = run(h, ['b', 'c', 'a'], loaded)
  assert [r.text for r in first + second] == [
      'echo: a', 'echo: a', 'echo: b', 'echo: b', 'echo: c', 'echo: a']
  assert sorted(r.prompt for r in server.log) == ['a', 'b', 'c']
  # Other parameters, another request.
  run(handler(server, generation={'temperature': 0.7}), ['a'])
  assert len(server.log) == 4
  # cache: false sends every row.
  run(handler(server, cache=False), ['z', 'z'])
  assert [r.prompt for r in server.log[4:]] == ['z', 'z']


def test_identical_requests_in_flight_on_two_threads_are_sent_once(llm_server):
  server = llm_server(latency_secs=0.3)
  h = handler(server)
  loaded = h.load_model()
  results = []
  threads = [threading.Thread(target=lambda: results.append(run(h, ['same'], loaded)))
             for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert [r[0].text for r in results] == ['echo: same'] * 4
  assert len(server.log) == 1


def test_a_rerun_with_cache_dir_pays_only_for_what_failed(llm_server, tmp_path):
  # The 400 goes to 'b' whatever order the requests arrive in.
  server = llm_server(faults=Faults(script=['400'], script_for='b'))
  prompts = ['a', 'b', 'c']
  first = run(handler(server, cache_dir=str(tmp_path), max_concurrency=1), prompts)
  assert [type(r).__name__ for r in first] == ['Generation', 'GenerationFailure', 'Generation']
  # A new handler and load, as after a crash: only 'b' is sent again.
  second = run(handler(server, cache_dir=str(tmp_path)), prompts)
  assert [r.text for r in second] == ['echo: a', 'echo: b', 'echo: c']
  sent = [r.prompt for r in server.log]
  assert sorted(sent[:3]) == ['a', 'b', 'c'] and sent[3:] == ['b']
  # A half-written cache file is a miss, not an error.
  for path in tmp_path.rglob('*.json'):
    path.write_text('{"text": "trunc')
  third = run(handler(server, cache_dir=str(tmp_path)), ['a'])
  assert third[0].text == 'echo: a' and len(server.log) == 5


def test_redactor_removes_keys_by_value_and_credentials_by_shape():
  from beam_llm.redaction import Redactor
  r = Redactor(['sk-live-123456789', 'EMPTY'])
  cases = {
      'Error code: 401 - bad key sk-live-123456789': 'sk-live-123456789',
      'authorization: Bearer abc.def-ghi': 'abc.def-ghi',
      "{'x-goog-api-key': 'AIzaSyQWERTY'}": 'AIzaSyQWERTY',
      'GET https://x.googleapis.com/v1/m?key=AIzaZZZ&alt=json': 'AIzaZZZ',
      'api_key=supersecret1 rejected': 'supersecret1',
      'token ya29.a0AfH6SMBx-abc was refused': 'ya29.a0AfH6SMBx-abc',
  }
  for text, secret in cases.items():
    redacted = r.redact(text)
    assert secret not in redacted and '[REDACTED]' in redacted, redacted
  # Short placeholders are not secrets; ordinary text is left alone.
  assert r.redact('model EMPTY answered 200 OK') == 'model EMPTY answered 200 OK'
