"""The HuggingFace backend on tiny models saved to disk and loaded with
from_pretrained, exactly as a hub model id would be."""
import pytest
import torch
import transformers

from beam_llm import GenerateText
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.huggingface import HuggingFaceHandler
from beam_llm.handlers.huggingface import ModelUnavailable
from tests.beam_helpers import run_transform

PROMPTS = [
    'The customer was unhappy about a late delivery.',
    'Hi',
    'The customer loved the new vegan menu and will order again next week.',
]


def _handler(model, **config):
  generation = {'max_new_tokens': 6}
  generation.update(config.pop('generation', {}))
  return HuggingFaceHandler(model=model, generation=generation, batching={}, **config)


def _reference(model_dir, prompt, seq2seq=False, max_new_tokens=6):
  """Plain transformers, one prompt at a time: the ground truth."""
  return _reference_generation(model_dir, prompt, seq2seq, max_new_tokens).text


def _reference_generation(model_dir, prompt, seq2seq=False, max_new_tokens=6):
  """The ground truth with its token counts: the prompt's tokens, and the
  tokens generated (those after an early stop are padding)."""
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  cls = (transformers.AutoModelForSeq2SeqLM
         if seq2seq else transformers.AutoModelForCausalLM)
  model = cls.from_pretrained(model_dir).eval()
  enc = tok(prompt, return_tensors='pt')
  with torch.inference_mode():
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tok.pad_token_id)
  if not seq2seq:
    out = out[:, enc['input_ids'].shape[1]:]
  return Generation(tok.decode(out[0], skip_special_tokens=True).strip(),
                    enc['input_ids'].shape[1], int((out[0] != tok.pad_token_id).sum()))


def test_causal_lm_batched_generation_matches_one_at_a_time(tiny_causal_lm):
  handler = _handler(tiny_causal_lm)
  model = handler.load_model()
  assert model.tokenizer.padding_side == 'left'
  results = handler.run_inference(PROMPTS, model)
  responses = [r.inference for r in results]
  assert [r.example for r in results] == PROMPTS
  # Left padding + attention mask: the batch answers as single prompts do,
  # and only the new text is returned, never the echoed prompt. Each row's
  # token counts are its own (issue 12: per-row usage), padding excluded.
  assert responses == [_reference_generation(tiny_causal_lm, p) for p in PROMPTS]
  assert all(r.text and r.output_tokens for r in responses)
  assert handler.usage == {'input_tokens': sum(r.input_tokens for r in responses),
                           'output_tokens': sum(r.output_tokens for r in responses)}


def test_seq2seq_t5_generation_matches_plain_transformers(tiny_seq2seq_lm):
  handler = _handler(tiny_seq2seq_lm)
  model = handler.load_model()
  assert model.seq2seq
  responses = [r.inference for r in handler.run_inference(PROMPTS, model)]
  assert responses == [
      _reference_generation(tiny_seq2seq_lm, p, seq2seq=True) for p in PROMPTS]


def test_a_model_without_chat_template_gives_bad_prompt_rows_saying_what_to_set(
    tiny_seq2seq_lm):
  handler = _handler(tiny_seq2seq_lm, use_chat_template=True)
  model = handler.load_model()
  model.tokenizer.chat_template = None  # As real T5 checkpoints ship.
  responses = [r.inference for r in handler.run_inference(
      ['plain text', [{'role': 'user', 'content': 'a message'}]], model)]
  for response in responses:
    assert isinstance(response, GenerationFailure) and response.error_type == 'bad_prompt'
    assert 'no chat template' in response.msg and 'use_chat_template: false' in response.msg


def test_chat_messages_use_the_tokenizer_chat_template(tiny_causal_lm):
  handler = _handler(tiny_causal_lm)
  model = handler.load_model()
  messages = [{'role': 'user', 'content': 'Hi'}]
  templated = model.tokenizer.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True)
  assert templated == '<|user|>\nHi\n<|assistant|>\n'
  [chat] = handler.run_inference([messages], model)
  [plain] = handler.run_inference([templated], model)
  assert chat.inference == plain.inference
  as_user = _handler(tiny_causal_lm, use_chat_template=True)
  [wrapped] = as_user.run_inference(['Hi'], as_user.load_model())
  assert wrapped.inference == plain.inference


def test_one_bad_row_does_not_fail_its_batch(tiny_causal_lm):
  handler = _handler(tiny_causal_lm, max_input_tokens=30)
  model = handler.load_model()
  batch = ['Hi', 'word ' * 200, None, '', 'The customer was unhappy.']
  responses = [r.inference for r in handler.run_inference(batch, model)]
  assert isinstance(responses[0], Generation) and isinstance(responses[4], Generation)
  assert responses[1].error_type == 'prompt_too_long'
  assert responses[2].error_type == 'bad_prompt'
  assert responses[3].error_type == 'bad_prompt'


def test_an_option_every_row_fails_on_fails_the_pipeline(tiny_causal_lm):
  # An option transformers rejects makes every generate call fail alike:
  # a config error, not three error rows (issue 12: bugs surface as bugs).
  handler = _handler(tiny_causal_lm,
                     generation={'generation_config': {'no_such_option': 1}})
  with pytest.raises(Exception, match='no_such_option'):
    handler.run_inference(PROMPTS, handler.load_model())


def test_dtype_and_device_are_honoured(tiny_causal_lm):
  model = _handler(tiny_causal_lm, dtype='bfloat16', device='cpu').load_model()
  assert next(model.model.parameters()).dtype == torch.bfloat16
  assert str(model.device) == 'cpu'
  [r] = _handler(tiny_causal_lm).run_inference(['Hi'], model)
  assert isinstance(r.inference, Generation) and r.inference.text


def test_sampling_parameters_reach_generate(tiny_causal_lm):
  handler = _handler(
      tiny_causal_lm, generation={'temperature': 1.5, 'top_k': 50, 'max_new_tokens': 12})
  model = handler.load_model()
  torch.manual_seed(0)
  sampled = {handler.run_inference(['Hi'], model)[0].inference.text for _ in range(5)}
  plain = _handler(tiny_causal_lm)
  plain_model = plain.load_model()
  greedy = {plain.run_inference(['Hi'], plain_model)[0].inference.text for _ in range(3)}
  assert len(greedy) == 1  # Greedy by default: deterministic.
  assert len(sampled) > 1  # Temperature turns sampling on.


def test_generate_text_transform_end_to_end(tiny_causal_lm):
  rows = [{'chat_id': i, 'prompt': p} for i, p in enumerate(PROMPTS)]
  rows.append({'chat_id': 99, 'prompt': 'word ' * 300})
  out, types = run_transform(
      GenerateText(
          model_handler={'type': 'HuggingFace', 'config': {
              'model': tiny_causal_lm, 'max_input_tokens': 100}},
          max_new_tokens=6, max_batch_size=2, usage_fields=True,
          error_handling={'output': 'failed'}),
      rows)
  good = {r.chat_id: (r.response, r.input_tokens, r.output_tokens) for r in out['good']}
  reference = {i: _reference_generation(tiny_causal_lm, p) for i, p in enumerate(PROMPTS)}
  assert good == {i: (g.text, g.input_tokens, g.output_tokens)
                  for i, g in reference.items()}
  [failed] = out['failed']
  assert failed.element.chat_id == 99
  assert failed.error_type == 'prompt_too_long'
  assert dict(types['good']._fields)['response'] is str


def test_unreachable_hub_model_fails_at_build_time_with_guidance(tmp_path, monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  handler = _handler('Qwen/Qwen2.5-0.5B-Instruct')
  with pytest.raises(ModelUnavailable) as info:
    handler.check_at_build()
  assert 'not in the local cache' in str(info.value)
  assert '--jinja_variables' in str(info.value)


def test_missing_local_directory_is_named(tmp_path):
  with pytest.raises(ModelUnavailable, match='no such local directory'):
    _handler(str(tmp_path / 'nope')).check_at_build()
  with pytest.raises(ModelUnavailable, match='holds no config.json'):
    _handler(str(tmp_path)).check_at_build()
