"""Batching by tokens for models on the worker: the plan, and what a
pipeline with default options does with a real (tiny) model."""
import random

import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from beam_llm import GenerateText
from beam_llm.handlers import token_batching
from beam_llm.handlers.huggingface import HuggingFaceHandler
from tests.beam_helpers import run_transform


@settings(max_examples=300, deadline=None)
@given(lengths=st.lists(st.integers(0, 3000), max_size=200),
       new_tokens=st.integers(0, 512),
       budget=st.integers(1, 50000),
       max_rows=st.one_of(st.none(), st.integers(1, 64)),
       min_rows=st.one_of(st.none(), st.integers(1, 8)))
def test_plan_covers_every_row_once_within_caps(
    lengths, new_tokens, budget, max_rows, min_rows):
  if max_rows is not None and min_rows is not None and min_rows > max_rows:
    min_rows = max_rows
  groups = token_batching.plan_batches(
      lengths, new_tokens, budget, max_rows, min_rows)
  assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
  for g in groups:
    assert g
    cost = len(g) * (max(lengths[i] for i in g) + new_tokens)
    if max_rows is not None:
      assert len(g) <= max_rows
    # Over budget only when a row alone exceeds it or min_rows asks for more.
    assert cost <= budget or len(g) <= (min_rows or 1)
  # Shortest first, no overlap in lengths between consecutive calls.
  flat = [lengths[i] for g in groups for i in g]
  assert flat == sorted(flat)


def test_plan_groups_similar_lengths():
  lengths = [900, 40, 880, 35, 910, 42, 38, 890]
  groups = token_batching.plan_batches(lengths, 100, budget=4 * 1010)
  assert [sorted(lengths[i] for i in g) for g in groups] == [
      [35, 38, 40, 42], [880, 890, 900, 910]]


def test_gpu_budget_is_hundreds_of_rows_on_an_h200_for_a_half_billion_model():
  # Qwen2.5-0.5B's shape, bfloat16, ~137 GB free after loading it.
  config = transformers.LlamaConfig(
      hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
      num_key_value_heads=14, intermediate_size=4864, vocab_size=151936)
  budget = token_batching.cuda_token_budget(config, 2, 137 * 2**30)
  rows = budget // (900 + 128)  # The longest prompts of the bench.
  assert 200 <= rows <= 2000
  # Grouped-query attention (2 KV heads, as Qwen has) leaves room for more.
  config.num_key_value_heads = 2
  assert token_batching.cuda_token_budget(config, 2, 137 * 2**30) > 2 * budget


def _handler(model_dir, **batching):
  return HuggingFaceHandler(
      model=model_dir, device='cpu', dtype='float32',
      generation={'max_new_tokens': 5}, batching=batching)


def _prompts(n, seed=0):
  words = 'the customer was unhappy about a late delivery and cold fries'.split()
  rng = random.Random(seed)
  return [' '.join(rng.choice(words) for _ in range(rng.randint(1, 60)))
          for _ in range(n)]


def test_default_window_is_fixed_and_streaming_keeps_its_own(tiny_causal_lm):
  assert _handler(tiny_causal_lm).batch_elements_kwargs() == {
      'min_batch_size': token_batching.WINDOW_ROWS,
      'max_batch_size': token_batching.WINDOW_ROWS}
  # max_batch_size bounds rows per call; the window grows to hold it.
  assert _handler(tiny_causal_lm, max_batch_size=4096).batch_elements_kwargs(
  )['min_batch_size'] == 4096
  streaming = _handler(tiny_causal_lm, max_batch_size=16,
                       max_batch_duration_secs=2)
  assert streaming.batch_elements_kwargs() == {
      'max_batch_size': 16, 'max_batch_duration_secs': 2}


def test_answers_do_not_depend_on_batch_mates_or_order(tiny_causal_lm):
  """Greedy decoding: each row's answer in a token-batched pipeline (rows
  of mixed lengths sharing calls, left-padded) is the answer it gets alone;
  shuffling the input changes nothing."""
  prompts = _prompts(40)
  handler = _handler(tiny_causal_lm)
  model = handler.load_model()
  alone = {p: handler.run_inference([p], model)[0].inference.text
           for p in prompts}

  def run(order, **options):
    rows = [{'i': i, 'prompt': prompts[i]} for i in order]
    outputs, _, metrics = run_transform(GenerateText(
        model_handler={'type': 'HuggingFace', 'config': {
            'model': tiny_causal_lm, 'device': 'cpu', 'dtype': 'float32'}},
        max_new_tokens=5, **options), rows, metrics=True)
    return {r.i: r.response for r in outputs['good']}, metrics

  # A small budget: several calls of several rows each.
  answers, metrics = run(range(40), max_batch_tokens=400)
  assert answers == {i: alone[p] for i, p in enumerate(prompts)}
  calls = metrics['rows_per_call']
  assert calls.count >= 3 and calls.max > 1 and calls.sum == 40
  assert metrics['padded_tokens_per_call'].max <= 400
  order = list(range(40))
  random.Random(1).shuffle(order)
  assert run(order, max_batch_tokens=400)[0] == answers
  # Default options: one window, the CPU budget: all 40 in few calls.
  answers, metrics = run(range(40))
  assert answers == {i: alone[p] for i, p in enumerate(prompts)}
  assert metrics['rows_per_call'].count <= 2


def test_max_batch_size_and_min_batch_size_bound_rows_per_call(tiny_causal_lm):
  rows = [{'i': i, 'prompt': p} for i, p in enumerate(_prompts(30, seed=2))]
  config = {'model': tiny_causal_lm, 'device': 'cpu'}
  _, _, metrics = run_transform(GenerateText(
      model_handler={'type': 'HuggingFace', 'config': config},
      max_new_tokens=2, max_batch_size=4), rows, metrics=True)
  assert metrics['rows_per_call'].max == 4
  # min_batch_size wins over a budget too small for it.
  _, _, metrics = run_transform(GenerateText(
      model_handler={'type': 'HuggingFace', 'config': config},
      max_new_tokens=2, min_batch_size=10, max_batch_tokens=1), rows,
      metrics=True)
  assert metrics['rows_per_call'].min == 10 and metrics['rows_per_call'].count == 3


def test_max_batch_tokens_is_for_models_on_the_worker():
  with pytest.raises(ValueError, match='max_batch_tokens.*models on the worker'):
    GenerateText(
        model_handler={'type': 'OpenAICompatible', 'config': {
            'model': 'm', 'base_url': 'http://127.0.0.1:1/v1'}},
        max_batch_tokens=1000)


def test_cpu_auto_dtype_follows_the_cpu(tiny_causal_lm):
  from beam_llm.handlers.huggingface import cpu_auto_dtype
  with open('/proc/cpuinfo') as f:
    bf16 = any(flag in f.read() for flag in ('avx512_bf16', 'amx_bf16'))
  expected = torch.bfloat16 if bf16 else torch.float32
  assert cpu_auto_dtype(torch) == expected
  model = HuggingFaceHandler(model=tiny_causal_lm, device='cpu',
                             generation={}, batching={}).load_model()
  assert next(model.model.parameters()).dtype == expected
