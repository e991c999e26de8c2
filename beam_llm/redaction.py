"""Keeping API keys and auth headers out of error rows, logs and exceptions.

Client libraries put whatever the service answered into their exception
text, and a misbehaving proxy may echo the request's headers back. Every
message a remote backend lets out (error rows, log lines, load-time
exceptions) goes through `Redactor.redact` first: it removes the secrets it
was given by value, and anything shaped like a credential by pattern.
"""
import re
from typing import Iterable

REDACTED = '[REDACTED]'

# Credential shapes, whatever their value: bearer tokens, API-key headers and
# query parameters, Google access tokens.
_PATTERNS = [
    re.compile(r'(?i)(bearer\s+)[^\s\'",;)}\]]+'),
    re.compile(r'(?i)((?:x-goog-api-key|api[-_]?key|authorization|'
               r'access[-_]?token)["\']?\s*[:=]\s*["\']?)(?!bearer\s)[^\s\'",;)}\]&]+'),
    re.compile(r'(?i)([?&](?:key|access_token)=)[^&\s\'"]+'),
    re.compile(r'ya29\.[\w.-]+'),
]

# Values shorter than this are placeholders ("EMPTY", "none"), not secrets;
# replacing them everywhere would garble messages.
_MIN_SECRET_LEN = 6


class Redactor:
  def __init__(self, secrets: Iterable[str] = ()):
    self._secrets = sorted(
        {s for s in secrets if s and len(s) >= _MIN_SECRET_LEN},
        key=len, reverse=True)

  def add(self, secret: str) -> None:
    if secret and len(secret) >= _MIN_SECRET_LEN and secret not in self._secrets:
      self._secrets = sorted(self._secrets + [secret], key=len, reverse=True)

  def redact(self, text: str) -> str:
    text = str(text)
    for secret in self._secrets:
      text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
      text = pattern.sub(
          lambda m: (m.group(1) if m.groups() else '') + REDACTED, text)
    return text
