"""Reaching a Vertex AI endpoint: looked up once at load (GetEndpoint, with
a bounded retry), its kind checked against the options (shared, dedicated,
Private Service Connect, Private Service Access), and its client's transport
widened to max_concurrency with no retries of its own (beam_llm.remote owns
them).

`EndpointConnection` is a mixin of VertexAIHandler: it reads the handler's
endpoint options (`_endpoint`, `_project`, `_location`, `_private`,
`_dedicated`, `_psc_address`, `_ca_cert`, `_api_endpoint`), its `policy`,
`owner` and `_timeouts`, and sets `_own_address`.
"""
import re
import threading

from beam_llm import _config
from beam_llm import remote

_OWNER = 'GenerateText'
# Longest the load-time endpoint lookup keeps retrying a service that does
# not answer (also bounded by deadline_secs).
_LOOKUP_SECS = 60.0
# What google-cloud-aiplatform accepts as a PSC address (endpoint_override).
_PSC_ADDRESS = re.compile(r'[a-zA-Z0-9-.]+')
# aiplatform.init sets process-wide defaults; connect one handler at a time.
_INIT_LOCK = threading.Lock()


def check_endpoint_kind(private, dedicated, psc_address, ca_cert) -> None:
  """At build time: at most one kind of endpoint, and a PSC address and
  ca_cert that make sense."""
  chosen = [k for k, v in (('private', private),
                           ('dedicated_endpoint', dedicated),
                           ('psc_address', psc_address)) if v]
  if len(chosen) > 1:
    _config.fail(
        _OWNER, f'model_handler.config.{chosen[1]}',
        f'cannot be used with {chosen[0]}: an endpoint is either shared, '
        'dedicated, Private Service Connect (psc_address) or Private '
        'Service Access (private)')
  if psc_address is not None and not _PSC_ADDRESS.fullmatch(str(psc_address)):
    _config.fail(
        _OWNER, 'model_handler.config.psc_address',
        f'{psc_address!r} is not an IP address or DNS name (give the PSC '
        'endpoint\'s address alone, e.g. 10.128.0.5: no scheme, port or '
        'path; requests go to it over HTTPS)')
  if ca_cert and not (dedicated or psc_address):
    _config.fail(
        _OWNER, 'model_handler.config.ca_cert',
        'is for endpoints reached over their own HTTPS address: set '
        'dedicated_endpoint or psc_address too')


class EndpointConnection:
  """`connect` for VertexAIHandler (see the module)."""

  def connect(self, redactor):
    from google.api_core import exceptions
    from google.api_core import retry
    from google.cloud import aiplatform
    self._timeouts = threading.local()
    credentials = None
    if self._api_endpoint and self._api_endpoint.startswith('http://'):
      from google.auth.credentials import AnonymousCredentials
      credentials = AnonymousCredentials()
    with _INIT_LOCK:
      aiplatform.init(
          project=self._project, location=self._location,
          api_endpoint=self._api_endpoint, api_transport='rest',
          credentials=credentials)
      cls = aiplatform.PrivateEndpoint if self._private else aiplatform.Endpoint
      where = (f'endpoint {self._endpoint!r} (project {self._project or "default"}'
               f', location {self._location})')
      try:
        # GetEndpoint now (Endpoint() is lazy), with a bounded retry: the
        # client's own default retries an unreachable service for 2 minutes.
        lookup = aiplatform.Endpoint(
            endpoint_name=self._endpoint, project=self._project,
            location=self._location, credentials=credentials)
        lookup.api_client.get_endpoint(
            name=self._resource_name(), timeout=self.policy.timeout_secs,
            retry=retry.Retry(
                initial=self.policy.initial_backoff_secs,
                maximum=self.policy.max_backoff_secs,
                timeout=min(self.policy.deadline_secs, _LOOKUP_SECS)))
        endpoint = cls(endpoint_name=self._endpoint, project=self._project,
                       location=self._location, credentials=credentials)
        deployed = endpoint.list_models()
      except exceptions.NotFound:
        raise remote.RemoteUnavailable(
            f'{self.owner} [VertexAI]: {where} does not exist (GetEndpoint '
            'answered 404 Not Found); check endpoint, project and location')
      except exceptions.GoogleAPICallError as exn:
        raise remote.RemoteUnavailable(
            f'{self.owner} [VertexAI]: cannot look up {where}: {exn}')
      except ValueError as exn:  # PrivateEndpoint on a public endpoint.
        key = 'psc_address' if self._psc_address else 'private: true'
        raise remote.RemoteUnavailable(
            f'{self.owner} [VertexAI]: {where}: {exn} ({key} needs a '
            'private endpoint)')
      except Exception as exn:  # pylint: disable=broad-except
        raise remote.RemoteUnavailable(
            f'{self.owner} [VertexAI]: cannot reach Vertex AI to look up {where}: '
            f'{type(exn).__name__}: {exn}')
    if not deployed:
      raise remote.RemoteUnavailable(
          f'{self.owner} [VertexAI]: {where} has no deployed model, so nothing '
          'can answer predictions; deploy a model to it first')
    self._check_kind(endpoint, where)
    self._tune_transport(endpoint)
    return endpoint

  def _check_kind(self, endpoint, where: str) -> None:
    """The endpoint is of the kind the options say; notes its address."""
    def fail(problem):
      raise remote.RemoteUnavailable(f'{self.owner} [VertexAI]: {where} {problem}')
    psc = bool(endpoint.private_service_connect_config)
    if self._psc_address and not psc:
      fail('is not a Private Service Connect endpoint, so psc_address cannot '
           'reach it (a Private Service Access endpoint takes private: true)')
    if self._private and not self._psc_address and not endpoint.network:
      fail('is a Private Service Connect endpoint: set psc_address to the '
           'address of its PSC endpoint in your VPC instead of private: true')
    dns = (not self._private) and endpoint.dedicated_endpoint_enabled
    if self._dedicated and not dns:
      fail('is not a dedicated endpoint (it has no DNS name of its own): '
           'leave dedicated_endpoint out to call it on the shared API host')
    if dns and not endpoint.dedicated_endpoint_dns:
      fail('is a dedicated endpoint without a DNS name yet; wait until it '
           'and its model are ready')
    self._own_address = dns or bool(self._psc_address)

  def _resource_name(self) -> str:
    if '/' in self._endpoint:
      return self._endpoint
    from google.cloud.aiplatform import initializer
    project = self._project or initializer.global_config.project
    return f'projects/{project}/locations/{self._location}/endpoints/{self._endpoint}'

  def _tune_transport(self, endpoint) -> None:
    """Connection pools as wide as max_concurrency; no client-side retries.

    These are private attributes of the client (there is no public knob);
    if they move, the client's defaults still work, only less well.
    """
    n = self.policy.max_concurrency
    if self._own_address:
      import google.auth.credentials
      from google.cloud.aiplatform import constants
      from beam_llm.handlers import vertex_transport
      credentials = google.auth.credentials.with_scopes_if_required(
          endpoint.credentials, constants.base.DEFAULT_AUTHED_SCOPES)
      session = vertex_transport.session_for(
          credentials, n, self._timeouts, self._ca_cert,
          self.policy.timeout_secs)
      # The attribute each class's predict reads (and would otherwise fill
      # with a session of its own on first use).
      if self._psc_address:
        endpoint._authorized_session = session  # pylint: disable=protected-access
      else:
        endpoint.authorized_session = session
      return
    if self._private:
      import urllib3
      # PrivateEndpoint.predict takes no timeout and retries 3 times by
      # default: give it ours, and no retries (beam_llm.remote owns them).
      endpoint._http_client = urllib3.PoolManager(
          cert_reqs='CERT_NONE', retries=False, maxsize=n,
          timeout=urllib3.Timeout(total=self.policy.timeout_secs))
      return
    try:
      import requests.adapters
      session = endpoint._prediction_client._transport._session  # pylint: disable=protected-access
      adapter = requests.adapters.HTTPAdapter(pool_maxsize=n, max_retries=0)
      session.mount('https://', adapter)
      session.mount('http://', adapter)
    except AttributeError:
      pass
