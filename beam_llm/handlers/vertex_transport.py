"""HTTP sessions for Vertex AI endpoints served at their own address.

A dedicated endpoint (its own DNS name) and a Private Service Connect
endpoint (an address inside the VPC) are called by google-cloud-aiplatform
with a `google.auth` AuthorizedSession (requests) over HTTPS, not with the
API client the shared endpoint uses. The client makes that session itself
with requests' defaults (one small pool, no timeout for PSC, certificate
checks off for PSC) and reports an HTTP error as a ValueError holding only
the status and the body. `session_for` gives it ours instead:

- a pool as wide as max_concurrency, no retries of its own (the remote
  policy owns them) and our timeout on every attempt;
- certificates checked, against `ca_cert` when given (else the system's, or
  REQUESTS_CA_BUNDLE's);
- an HTTP error raised as `EndpointHTTPError` with its headers, so a 429's
  Retry-After is honoured as it is on the shared endpoint.
"""
import threading
from typing import Optional

import requests
import requests.adapters


class EndpointHTTPError(Exception):
  """An HTTP error answer of a dedicated or PSC endpoint."""

  def __init__(self, status: int, headers, text: str):
    super().__init__(f'{status} from the endpoint: {text[:500]}')
    self.status = status
    self.headers = headers


class _Adapter(requests.adapters.HTTPAdapter):
  """Every attempt with the policy's timeout and the configured CA."""

  def __init__(self, timeouts: threading.local, ca_cert: Optional[str],
               default_timeout: float, **kwargs):
    super().__init__(**kwargs)
    self._timeouts = timeouts
    self._ca_cert = ca_cert
    self._default_timeout = default_timeout

  def send(self, request, **kwargs):
    # The client passes no timeout (PSC) or google.auth's 120 s default.
    kwargs['timeout'] = getattr(self._timeouts, 'secs', self._default_timeout)
    if self._ca_cert:
      # Here, not as session.verify, which REQUESTS_CA_BUNDLE would override.
      kwargs['verify'] = self._ca_cert
    elif kwargs.get('verify') is False:
      # The client turns checks off on some PSC paths; never here.
      kwargs['verify'] = True
    return super().send(request, **kwargs)


def _raise_for_error(response, *args, **kwargs):
  # 401 is left to AuthorizedSession, which refreshes the token and retries.
  if response.status_code >= 400 and response.status_code != 401:
    raise EndpointHTTPError(response.status_code, response.headers,
                            response.text)


def session_for(credentials, pool_size: int, timeouts: threading.local,
                ca_cert: Optional[str], default_timeout: float):
  """An AuthorizedSession for the endpoint's own address (see above)."""
  from google.auth.transport import requests as google_auth_requests
  from google.cloud.aiplatform import constants
  # What the client does before it makes its session: the default scopes.
  if hasattr(credentials, '_scopes'):
    credentials._scopes = constants.base.DEFAULT_AUTHED_SCOPES  # pylint: disable=protected-access
  session = google_auth_requests.AuthorizedSession(credentials)
  adapter = _Adapter(timeouts, ca_cert, default_timeout,
                     pool_maxsize=pool_size, max_retries=0)
  session.mount('https://', adapter)
  session.mount('http://', adapter)
  session.hooks['response'].append(_raise_for_error)
  return session


def is_certificate_error(exn: BaseException) -> bool:
  """A TLS certificate the client does not trust: configuration, not load."""
  return (isinstance(exn, requests.exceptions.SSLError)
          and 'CERTIFICATE_VERIFY_FAILED' in str(exn))
