"""What the fake LLM server says, per protocol: the prompt a request
carries, the structured-output forms each kind of server takes, and the
bodies of OpenAI, Gemini and Vertex AI answers (beam_llm/testing/
fake_llm_server.py serves them)."""
import json
import time


def prompt_of(path: str, body: dict) -> str:
  """The text a request asks about, for logs and echo replies."""
  if 'messages' in body:
    return '\n'.join(str(m.get('content')) for m in body['messages'])
  if 'prompt' in body:
    return str(body['prompt'])
  if 'instances' in body:
    inst = body['instances'][0] if body['instances'] else {}
    if isinstance(inst, dict):
      if 'prompt' in inst:
        return str(inst['prompt'])
      if 'messages' in inst:
        return '\n'.join(str(m.get('content')) for m in inst['messages'])
    return json.dumps(inst, sort_keys=True)
  if 'contents' in body:
    return '\n'.join(
        p.get('text', '') for c in body['contents'] for p in c.get('parts', []))
  return ''


def form_of(body: dict) -> str:
  fmt = body.get('response_format')
  if isinstance(fmt, dict):
    return fmt.get('type', 'none')
  for field in ('structured_outputs', 'guided_json'):
    if field in body:
      return field
  return 'none'


# What llama-cpp-python's server (0.3.36, checked with
# scripts/check_llama_cpp_server.py) answers with an HTTP 500 to a
# response_format it does not take: its pydantic error and a traceback line.
VALIDATION = (
    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
    "'response_format', 'type'), 'msg': \"Input should be 'text' or "
    "'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' "
    "or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, "
    "in create_chat_completion\n    POST /v1/chat/completions")


# Server -> (forms it takes, status and message of its refusal of others).
STRUCTURED = {
    # OpenAI, and llama.cpp's llama-server: response_format json_schema or
    # json_object.
    'openai': ({'none', 'json_schema', 'json_object'}, 400,
               "Unrecognized request argument supplied: guided_json"),
    # llama-cpp-python's server: json_object (with a `schema`), not
    # json_schema, refused with an HTTP 500 carrying pydantic's message. A
    # vLLM body field passes and is ignored: the answer is unconstrained.
    'llama-cpp-python': ({'none', 'json_object', 'structured_outputs',
                          'guided_json'}, 500, VALIDATION),
    # vLLM: every form.
    'vllm': ({'none', 'json_schema', 'json_object', 'structured_outputs',
              'guided_json'}, 400, ''),
    # A server without structured output that rejects what it does not know.
    'text-only': ({'none'}, 400,
                  "response_format is not supported by this server"),
}


def tokens(text: str) -> int:
  return len(text.split())


def logprobs(text: str, confidence: float, chat: bool) -> dict:
  """One entry per word, their log-probabilities summing to
  log(confidence): chat's `content` form, or completions' lists."""
  import math
  words = text.split() or ['']
  each = math.log(max(confidence, 1e-300)) / len(words)
  if chat:
    return {'content': [{'token': w, 'logprob': each, 'top_logprobs': []}
                        for w in words]}
  return {'tokens': words, 'token_logprobs': [each] * len(words)}


def chat_completion(body, prompt, text):
  return {
      'id': 'chatcmpl-fake', 'object': 'chat.completion', 'created': int(time.time()),
      'model': body.get('model', ''),
      'choices': [{'index': 0, 'finish_reason': 'stop',
                   'message': {'role': 'assistant', 'content': text}}],
      'usage': {'prompt_tokens': tokens(prompt), 'completion_tokens': tokens(text),
                'total_tokens': tokens(prompt) + tokens(text)},
  }


def completion(body, prompt, text):
  return {
      'id': 'cmpl-fake', 'object': 'text_completion', 'created': int(time.time()),
      'model': body.get('model', ''),
      'choices': [{'index': 0, 'finish_reason': 'stop', 'text': text}],
      'usage': {'prompt_tokens': tokens(prompt), 'completion_tokens': tokens(text),
                'total_tokens': tokens(prompt) + tokens(text)},
  }


def gemini(body, prompt, text):
  return {
      'candidates': [{'content': {'role': 'model', 'parts': [{'text': text}]},
                      'finishReason': 'STOP', 'index': 0}],
      'usageMetadata': {'promptTokenCount': tokens(prompt),
                        'candidatesTokenCount': tokens(text),
                        'totalTokenCount': tokens(prompt) + tokens(text)},
  }


def predict(body, prompt, text):
  return {'predictions': [text for _ in body.get('instances') or [None]],
          'deployedModelId': '42'}
