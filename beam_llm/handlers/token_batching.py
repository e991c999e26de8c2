"""Batching by tokens for models on the worker (HuggingFace, KerasHub).

Beam's RunInference hands the model side a window of rows (a fixed number,
so batching does not start at one row and creep up by doubling, which on a
GPU spends a run in tiny batches). The model side then sorts the window by
prompt length and cuts it into model calls that fit a token budget: a call
costs about rows x (longest prompt + max_new_tokens) tokens of work and
memory, since every row is padded to the longest. Sorting keeps a 40-token
prompt from waiting on a 900-token one.

The budget comes from the device once the model is loaded: on CUDA, from
the memory left free and the model's KV-cache size per token; on CPU, a
fixed figure chosen from measurements (bench/RESULTS.md).
"""
from typing import List, Optional, Sequence

# Rows Beam hands to the model side at once (RunInference's batch). Large
# enough for a GPU's batches, small enough that a window's prompts cost
# little memory; `max_batch_size` above it raises it.
WINDOW_ROWS = 1024
# Padded tokens (prompt + new) per model call on CPU (bench/RESULTS.md,
# "Batching by tokens").
CPU_BATCH_TOKENS = 16384
# On a GPU: the share of the memory free after loading that batches may use
# (the rest: allocator fragmentation, the logits, the decoding masks).
GPU_MEMORY_SHARE = 0.6


def plan_batches(
    lengths: Sequence[int],
    new_tokens: int,
    budget: int,
    max_rows: Optional[int] = None,
    min_rows: Optional[int] = None) -> List[List[int]]:
  """Groups row indices into model calls, shortest prompts first.

  A group's cost is rows x (its longest prompt + new_tokens); groups stay
  within `budget` (a row that alone exceeds it goes alone), hold at most
  `max_rows` rows, and at least `min_rows` where the window has them (the
  user asked for that many; it wins over the budget).
  """
  order = sorted(range(len(lengths)), key=lambda i: lengths[i])
  groups: List[List[int]] = []
  group: List[int] = []
  for i in order:
    cost = (len(group) + 1) * (lengths[i] + new_tokens)
    full = max_rows is not None and len(group) >= max_rows
    over = cost > budget and len(group) >= (min_rows or 1)
    if group and (full or over):
      groups.append(group)
      group = []
    group.append(i)
  if group:
    groups.append(group)
  return groups


def _first(obj, names, default):
  for name in names:
    value = getattr(obj, name, None)
    if value:
      return int(value)
  return default


def cuda_token_budget(config, dtype_bytes: int, free_bytes: int) -> int:
  """Padded tokens per call that fit in `free_bytes` of GPU memory.

  `config` is a transformers config or a keras-hub backbone (their names
  for the same sizes differ). Per token: its KV cache (2 x layers x KV
  heads x head size) plus the activations of one layer during prefill
  (hidden + MLP width, a few copies); only GPU_MEMORY_SHARE of what is
  free is planned for.
  """
  if hasattr(config, 'get_text_config'):
    config = config.get_text_config()
  hidden = _first(config, ('hidden_size', 'd_model', 'hidden_dim'), 1024)
  layers = _first(config, ('num_hidden_layers', 'num_layers'), 24)
  heads = _first(config, ('num_attention_heads', 'num_heads',
                          'num_query_heads'), 16)
  kv_heads = _first(config, ('num_key_value_heads',), heads)
  head_dim = _first(config, ('head_dim',), hidden // heads)
  mlp = _first(config, ('intermediate_size', 'intermediate_dim'), 4 * hidden)
  kv = 2 * layers * kv_heads * head_dim * dtype_bytes
  # transformers' growing cache copies itself at each step: count it twice.
  per_token = 2 * kv + 4 * (hidden + mlp) * dtype_bytes
  return max(int(free_bytes * GPU_MEMORY_SHARE) // per_token, 1)
