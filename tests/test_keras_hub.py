"""The KerasHub backend on a tiny Gemma the test builds (2-layer backbone,
SentencePiece word model trained in memory), saved with save_to_preset and
loaded with from_preset: the path a user's preset takes."""
import os

import pytest

from beam_llm import GenerateText
from beam_llm.handlers.keras_hub_lm import GEMMA_CHAT_TEMPLATE, KerasHubHandler
from tests.beam_helpers import run_transform

os.environ.setdefault('KERAS_BACKEND', 'torch')


def _handler(preset, **config):
  generation = {'max_new_tokens': 5}
  generation.update(config.pop('generation', {}))
  return KerasHubHandler(preset=preset, generation=generation, batching={}, **config)


def _reference(preset, prompt, max_new_tokens=5):
  import keras_hub
  lm = keras_hub.models.GemmaCausalLM.from_preset(preset)
  lm.compile(sampler='greedy')
  n = len(lm.preprocessor.tokenizer(prompt)) + 1
  return str(lm.generate([prompt], max_length=n + max_new_tokens, strip_prompt=True)[0]).strip()


def test_batched_generate_returns_only_new_text(tiny_gemma):
  handler = _handler(tiny_gemma)
  model = handler.load_model()
  prompts = ['the customer was unhappy', 'the customer loved the new vegan menu']
  responses = [r.inference for r in handler.run_inference(prompts, model)]
  assert all(r.text for r in responses)
  # Per-row token counts: the prompt's (with the start token) and the answer's.
  tokenizer = model.lm.preprocessor.tokenizer
  assert [(r.input_tokens, r.output_tokens) for r in responses] == [
      (len(tokenizer(p)) + 1, len(tokenizer(r.text))) for p, r in zip(prompts, responses)]
  assert handler.usage == {'input_tokens': sum(r.input_tokens for r in responses),
                           'output_tokens': sum(r.output_tokens for r in responses)}
  # Greedy and alone in its batch, a prompt's answer is what keras-hub gives.
  for prompt in prompts:
    [alone] = handler.run_inference([prompt], model)
    assert alone.inference.text == _reference(tiny_gemma, prompt)
    assert not alone.inference.text.startswith(prompt)  # The prompt is stripped.


def test_chat_messages_use_gemma_turns(tiny_gemma):
  handler = _handler(tiny_gemma)
  model = handler.load_model()
  messages = [{'role': 'system', 'content': 'be brief'},
              {'role': 'user', 'content': 'the pizza'}]
  text = model._chat.render(messages=messages, add_generation_prompt=True)
  assert text == ('<start_of_turn>user\nbe brief\n\nthe pizza<end_of_turn>\n'
                  '<start_of_turn>model\n')
  [chat] = handler.run_inference([messages], model)
  [plain] = handler.run_inference([text], model)
  assert chat.inference == plain.inference


def test_too_long_prompt_fails_alone(tiny_gemma):
  handler = _handler(tiny_gemma, max_length=40)
  responses = [r.inference for r in handler.run_inference(
      ['the customer', 'the ' * 100, None], handler.load_model())]
  assert responses[0].text
  assert responses[1].error_type == 'prompt_too_long'
  assert responses[2].error_type == 'bad_prompt'


def test_sampler_and_dtype_from_config(tiny_gemma):
  model = _handler(tiny_gemma, sampler='top_k', dtype='bfloat16').load_model()
  assert model.lm.backbone.dtype_policy.name == 'bfloat16'
  import keras_hub
  assert isinstance(model.lm.sampler, keras_hub.samplers.TopKSampler)


def test_keras_backend_clash_is_a_clear_error(tiny_gemma):
  _handler(tiny_gemma).load_model()  # Loads keras on the torch backend.
  with pytest.raises(RuntimeError, match="already loaded with the 'torch' backend"):
    _handler(tiny_gemma, keras_backend='jax').load_model()


def test_generate_text_transform_with_keras(tiny_gemma):
  rows = [{'chat_id': i, 'prompt': p} for i, p in enumerate(
      ['the customer was unhappy', 'hi', 'the ' * 300])]
  out, _ = run_transform(
      GenerateText(model_handler={'type': 'KerasNLP', 'config': {'preset': tiny_gemma}},
                   max_new_tokens=4, error_handling={'output': 'failed'}),
      rows)
  assert sorted(r.chat_id for r in out['good']) == [0, 1]
  assert [e.element.chat_id for e in out['failed']] == [2]


def test_missing_preset_directory_fails_at_build(tmp_path):
  from beam_llm.handlers.keras_presets import PresetUnavailable
  with pytest.raises(PresetUnavailable, match='holds no config.json'):
    _handler(str(tmp_path)).check_at_build()


def test_response_schema_is_rejected_for_keras():
  from beam_llm._config import ConfigError
  with pytest.raises(ConfigError, match="option 'response_schema' is not supported by the KerasNLP backend"):
    GenerateText(model_handler={'type': 'KerasNLP', 'config': {'preset': 'x'}},
                 response_schema={'type': 'object', 'properties': {'a': {'type': 'string'}}})


def test_tensorflow_keras_backend(tiny_gemma):
  # Keras fixes its backend once per process, so this runs in a fresh one.
  import subprocess
  import sys
  code = (
      'from beam_llm.handlers.keras_hub_lm import KerasHubHandler\n'
      f'h = KerasHubHandler(preset={tiny_gemma!r}, keras_backend="tensorflow", '
      'generation={"max_new_tokens": 3}, batching={})\n'
      'm = h.load_model()\n'
      'import keras\n'
      'print("BACKEND", keras.config.backend())\n'
      'print("OUT", [type(r.inference).__name__ for r in '
      'h.run_inference(["the customer was unhappy", "hi"], m)])\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300)
  assert 'BACKEND tensorflow' in result.stdout, result.stderr[-2000:]
  assert "OUT ['Generation', 'Generation']" in result.stdout
