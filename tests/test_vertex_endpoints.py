"""VertexAI on dedicated and Private Service Connect endpoints: the real
google-cloud-aiplatform client looks the endpoint up on the (plain HTTP)
fake API and predicts over HTTPS at the endpoint's own address, checking a
certificate made here; retries and error rows as on the shared endpoint."""
import random

import pytest

from beam_llm._config import ConfigError
from beam_llm.handlers.base import GenerationFailure
from beam_llm.remote import RemoteUnavailable
from beam_llm.handlers.vertex_ai import VertexAIHandler
from beam_llm.testing.fake_llm_server import Faults
from tests.tls_certs import make_certificates

FAST = dict(max_concurrency=4, timeout_secs=2.0, initial_backoff_secs=0.01,
            max_backoff_secs=0.05, max_retries=4)
# A PSC address has no port (the client takes a host only), so the fake's
# HTTPS listener for PSC takes port 443 on a loopback address of its own.
PSC_IP = f'127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}'


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
  return make_certificates(tmp_path_factory.mktemp('tls'), ['127.0.0.1', PSC_IP])


@pytest.fixture
def tls_server(llm_server, certs):
  """`tls_server(psc=False, **kwargs)`: a fake with an HTTPS listener."""
  def start(psc=False, **kwargs):
    where = {'tls_host': PSC_IP, 'tls_port': 443} if psc else {}
    try:
      return llm_server(tls=(certs['cert'], certs['key']), **where, **kwargs)
    except OSError as exn:  # Port 443 needs root or CAP_NET_BIND_SERVICE.
      pytest.skip(f'cannot listen on {PSC_IP}:443 for the PSC endpoint: {exn}')
  return start


def vertex(server, **config):
  return VertexAIHandler(
      project='proj', location='europe-west4', api_endpoint=server.url,
      generation={'max_new_tokens': 8}, batching={},
      **{'endpoint': '1234', **FAST, **config})


def kind_config(kind, certs):
  return {'shared': {},
          'dedicated': {'endpoint': '2468', 'dedicated_endpoint': True,
                        'ca_cert': certs['ca']},
          'psc': {'endpoint': '1357', 'psc_address': PSC_IP,
                  'ca_cert': certs['ca']}}[kind]


def generate(handler, prompts):
  return [r.inference for r in handler.run_inference(prompts, handler.load_model())]


@pytest.mark.parametrize('kind', ['shared', 'dedicated', 'psc'])
def test_every_endpoint_kind_retries_the_same_faults_and_keeps_retry_after(
    tls_server, certs, kind):
  server = tls_server(psc=kind == 'psc', faults=Faults(
      retry_after=0.3, script=['429', '503', 'malformed', 'drop']))
  h = vertex(server, **kind_config(kind, certs))
  [answer] = generate(h, ['Hi'])
  assert answer.text == 'echo: Hi'
  posts = [r for r in server.log if r.body]
  assert [r.fault for r in posts] == ['429', '503', 'malformed', 'drop', 'ok']
  assert all(r.tls == (kind != 'shared') for r in posts)
  assert posts[0].path == (
      f'/v1/projects/proj/locations/europe-west4/endpoints/{h._endpoint}:predict')
  assert posts[1].arrived - posts[0].arrived >= 0.3  # Retry-After honoured.
  # A refusal is not retried (an error row); a 429 that never ends is an
  # outage: given up, it fails the run.
  server.faults.retry_after = None
  server.faults.script = ['400'] + ['429'] * 5
  [refused] = generate(h, ['bad'])
  assert isinstance(refused, GenerationFailure) and refused.error_type == 'client_error'
  with pytest.raises(RemoteUnavailable, match='429.*max_retries=4'):
    generate(h, ['busy'])
  assert len([r for r in server.log if r.body]) == 5 + 1 + 5


def test_dedicated_endpoint_trusts_requests_ca_bundle_and_times_out(
    tls_server, certs, monkeypatch):
  server = tls_server(faults=Faults(slow_secs=1.0, script=['timeout']))
  monkeypatch.setenv('REQUESTS_CA_BUNDLE', certs['ca'])
  # Without dedicated_endpoint, a dedicated endpoint is still called at its
  # own DNS name (the shared API does not serve it), as the client does.
  h = vertex(server, endpoint='2468', timeout_secs=0.3)
  [answer] = generate(h, ['Hi'])
  assert answer.text == 'echo: Hi'
  assert [(r.fault, r.tls) for r in server.log if r.body] == [
      ('timeout', True), ('ok', True)]


def test_an_untrusted_certificate_stops_the_pipeline(tls_server):
  server = tls_server()
  h = vertex(server, endpoint='2468', dedicated_endpoint=True)
  # Every row of the batch fails alike: the pipeline stops, naming the fix.
  with pytest.raises(RemoteUnavailable, match='certificate .* not trusted.*ca_cert'):
    generate(h, ['Hi', 'Ho'])
  assert not [r for r in server.log if r.body]  # Nothing reached it.


@pytest.mark.parametrize('config, message', [
    ({'private': True, 'psc_address': '10.0.0.5'},
     "'model_handler.config.psc_address' cannot be used with private"),
    ({'dedicated_endpoint': True, 'psc_address': '10.0.0.5'},
     'psc_address.* cannot be used with dedicated_endpoint'),
    ({'psc_address': '10.0.0.5:443'}, 'no scheme, port or path'),
    ({'psc_address': 'https://psc.example'}, 'not an IP address or DNS name'),
    ({'ca_cert': '/ca.pem'}, 'ca_cert.*set dedicated_endpoint or psc_address'),
])
def test_endpoint_kind_options_are_checked_at_build_time(config, message):
  with pytest.raises(ConfigError, match=message):
    VertexAIHandler(endpoint='1', generation={}, batching={}, **config)


@pytest.mark.parametrize('config, message', [
    ({'endpoint': '1234', 'dedicated_endpoint': True}, 'is not a dedicated endpoint'),
    ({'endpoint': '5678', 'psc_address': '10.0.0.5'},
     'is not a Private Service Connect endpoint'),
    ({'endpoint': '1357', 'private': True}, 'set psc_address'),
    ({'endpoint': '1234', 'psc_address': '10.0.0.5'},
     'psc_address needs a private endpoint'),
])
def test_the_endpoint_kind_is_checked_at_load(llm_server, config, message):
  with pytest.raises(RemoteUnavailable, match=message):
    vertex(llm_server(), **config).load_model()
