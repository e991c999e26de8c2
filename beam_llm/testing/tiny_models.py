"""Tiny random-weight models, saved like hub models, for offline runs.

They load through exactly the code path a hub model does (`from_pretrained`
on a directory), but their weights are random: their text is gibberish.

    python -m beam_llm.testing.tiny_models /tmp/tiny-llm           # causal LM
    python -m beam_llm.testing.tiny_models /tmp/tiny-t5 --seq2seq  # T5-style
"""
import argparse
import os

# A byte-level tokenizer never meets an unknown character (French, emoji).
_CORPUS = [
    'The customer was unhappy about a late delivery and cold fries.',
    'The customer loved the new vegan menu and will order again.',
    'The customer asked when the shop closes on Sundays.',
    '{"sentiment": -1, "summary": "Pizza arrived late."}',
    '{"sentiment": 0, "summary": "Asked about opening hours."}',
    '{"sentiment": 1, "summary": "Happy with the food."}',
    'user_id 331: Sorry to hear that. user_id 221: Thanks!',
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _tokenizer(vocab_size: int):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=['<pad>', '<s>', '</s>', '<unk>'],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(_CORPUS, trainer)
  fast = PreTrainedTokenizerFast(
      tokenizer_object=tok,
      pad_token='<pad>',
      bos_token='<s>',
      eos_token='</s>',
      unk_token='<unk>')
  fast.chat_template = CHAT_TEMPLATE
  return fast


def build_causal_lm(path: str, seed: int = 0, max_positions: int = 2048) -> str:
  """Saves a 2-layer Llama with a trained byte-level BPE tokenizer to `path`."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(seed)
  tokenizer = _tokenizer(400)
  config = LlamaConfig(
      vocab_size=len(tokenizer),
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=max_positions,
      bos_token_id=tokenizer.bos_token_id,
      eos_token_id=tokenizer.eos_token_id,
      pad_token_id=tokenizer.pad_token_id)
  LlamaForCausalLM(config).save_pretrained(path)
  tokenizer.save_pretrained(path)
  return path


def build_seq2seq_lm(path: str, seed: int = 0) -> str:
  """Saves a 2-layer T5 with a trained byte-level BPE tokenizer to `path`."""
  import torch
  from transformers import T5Config, T5ForConditionalGeneration
  torch.manual_seed(seed)
  tokenizer = _tokenizer(400)
  config = T5Config(
      vocab_size=len(tokenizer),
      d_model=32,
      d_ff=64,
      d_kv=8,
      num_layers=2,
      num_decoder_layers=2,
      num_heads=4,
      pad_token_id=tokenizer.pad_token_id,
      eos_token_id=tokenizer.eos_token_id,
      decoder_start_token_id=tokenizer.pad_token_id)
  T5ForConditionalGeneration(config).save_pretrained(path)
  tokenizer.save_pretrained(path)
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('path', help='directory to save the model in')
  parser.add_argument('--seq2seq', action='store_true', help='T5-style model')
  args = parser.parse_args(argv)
  os.makedirs(args.path, exist_ok=True)
  (build_seq2seq_lm if args.seq2seq else build_causal_lm)(args.path)
  print(f'Saved a tiny RANDOM-WEIGHT model (its output is gibberish) to '
        f'{args.path}')


if __name__ == '__main__':
  main()
