"""Vertex AI text embedding models (text-embedding-005,
text-multilingual-embedding-002, gemini-embedding-001, ...) on the official
google-cloud-aiplatform client (REST), imported on the worker only."""
from typing import List, Optional

from beam_llm import remote
from beam_llm.embeddings.remote import Embeddings
from beam_llm.embeddings.remote import RemoteEmbedder


@remote.with_policy
class VertexAIEmbedder(RemoteEmbedder):
  """`model_handler: {type: VertexAI, config: {...}}`.

  Calls the publisher model's predict method with one instance per text
  (`{content, task_type}`); credentials are the worker's Application Default
  Credentials.

  Args:
    model: The embedding model, e.g. `text-embedding-005`.
    project: Google Cloud project. Defaults to the credentials' project.
    location: Region. Defaults to `us-central1`.
    task_type: What the vectors are for, so the model can tune them:
      `RETRIEVAL_DOCUMENT` when ingesting, `RETRIEVAL_QUERY` for questions,
      or another type the model knows. Defaults to none (the model's own).
    dimensions: Ask for vectors of this size (`outputDimensionality`).
    api_endpoint: Another API host (e.g. a regional or private endpoint, or
      `http://127.0.0.1:PORT` for a local test server, which is called
      without credentials). Defaults to `<location>-aiplatform.googleapis.com`.
    texts_per_request: Most texts sent in one request. Defaults to 32.
  """
  backend = 'VertexAI'

  def __init__(
      self,
      *,
      model: str,
      project: Optional[str] = None,
      location: str = 'us-central1',
      task_type: Optional[str] = None,
      dimensions: Optional[int] = None,
      api_endpoint: Optional[str] = None,
      texts_per_request: int = 32,
      batching: Optional[dict] = None,
      **policy):
    super().__init__(batching or {}, texts_per_request, policy)
    self._model = model
    self._project = project
    self._location = location
    self._task_type = task_type
    self._dimensions = dimensions
    self._api_endpoint = api_endpoint or f'{location}-aiplatform.googleapis.com'

  def describe(self) -> str:
    return f'VertexAI {self._model} ({self._location})'

  def identity(self) -> tuple:
    return (self.backend, self._api_endpoint, self._project, self._location,
            self._model, self._task_type, self._dimensions)

  def connect(self, redactor):
    from google.api_core.client_options import ClientOptions
    from google.cloud import aiplatform_v1
    credentials, project = None, self._project
    if self._api_endpoint.startswith('http://'):
      from google.auth.credentials import AnonymousCredentials
      credentials = AnonymousCredentials()
    elif not project:
      import google.auth
      credentials, project = google.auth.default()
    if not project:
      raise RuntimeError('no project: set model_handler.config.project')
    client = aiplatform_v1.PredictionServiceClient(
        client_options=ClientOptions(api_endpoint=self._api_endpoint),
        transport='rest', credentials=credentials)
    name = (f'projects/{project}/locations/{self._location}/publishers/google/'
            f'models/{self._model}')
    return client, name

  async def send(self, client, texts: List[str], timeout_secs: float
                 ) -> Embeddings:
    # The REST prediction client has no async form.
    return await remote.in_thread(self._predict, client, texts, timeout_secs)

  def _predict(self, client, texts: List[str], timeout_secs: float
               ) -> Embeddings:
    from google.protobuf import json_format
    from google.protobuf import struct_pb2
    client, name = client
    instances = []
    for text in texts:
      instance = {'content': text}
      if self._task_type:
        instance['task_type'] = self._task_type
      instances.append(json_format.ParseDict(instance, struct_pb2.Value()))
    parameters = None
    if self._dimensions:
      parameters = json_format.ParseDict(
          {'outputDimensionality': self._dimensions}, struct_pb2.Value())
    response = client.predict(
        endpoint=name, instances=instances, parameters=parameters,
        timeout=timeout_secs)
    answer = json_format.MessageToDict(response._pb)  # pylint: disable=protected-access
    vectors, tokens = [], 0
    for prediction in answer.get('predictions') or []:
      embeddings = (prediction.get('embeddings') or {}) if isinstance(
          prediction, dict) else {}
      values = embeddings.get('values')
      if not isinstance(values, list):
        raise remote.BadResponse('a prediction has no embeddings.values')
      vectors.append(values)
      tokens += int((embeddings.get('statistics') or {}).get('token_count') or 0)
    return Embeddings(vectors, tokens or None)

  def classify(self, exn: BaseException) -> remote.Failure:
    from google.api_core import exceptions
    if isinstance(exn, exceptions.DeadlineExceeded):
      return remote.Failure(remote.TIMEOUT, str(exn), retryable=True)
    if isinstance(exn, exceptions.GoogleAPICallError) and exn.code:
      response = getattr(exn, 'response', None)
      return remote.classify_status(
          int(exn.code), str(exn),
          remote.retry_after_from_headers(getattr(response, 'headers', None)))
    return remote.generic_failure(exn)
