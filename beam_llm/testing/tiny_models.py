"""Tiny random-weight models, saved like hub models, for offline runs.

They load through exactly the code path a hub model does (`from_pretrained`
on a directory), but their weights are random: their text is gibberish.

    python -m beam_llm.testing.tiny_models /tmp/tiny-llm           # causal LM
    python -m beam_llm.testing.tiny_models /tmp/tiny-t5 --seq2seq  # T5-style
    python -m beam_llm.testing.tiny_models /tmp/tiny-gemma --gemma # keras-hub
"""
import argparse
import os
from typing import Optional

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


def build_causal_lm(
    path: str,
    seed: int = 0,
    max_positions: int = 2048,
    hidden_size: int = 32,
    num_layers: int = 2,
    vocab_size: Optional[int] = None) -> str:
  """Saves a random Llama (2 layers, hidden 32 unless told otherwise) with a
  trained byte-level BPE tokenizer to `path`. `vocab_size` pads the model's
  vocabulary beyond the tokenizer's, for real-model-sized output layers."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(seed)
  tokenizer = _tokenizer(400)
  heads = max(hidden_size // 64, 4)
  config = LlamaConfig(
      vocab_size=max(vocab_size or 0, len(tokenizer)),
      hidden_size=hidden_size,
      intermediate_size=hidden_size * 2 if hidden_size <= 32 else hidden_size * 8 // 3,
      num_hidden_layers=num_layers,
      num_attention_heads=heads,
      num_key_value_heads=heads // 2 if hidden_size <= 32 else heads,
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


def build_gemma(path: str, seed: int = 0) -> str:
  """Saves a 2-layer keras-hub Gemma with an in-memory SentencePiece word
  model to `path` (a preset directory for GemmaCausalLM.from_preset).

  Uses the Keras backend already chosen (KERAS_BACKEND, default torch).
  """
  import io
  os.environ.setdefault('KERAS_BACKEND', 'torch')
  import keras
  import keras_hub
  import sentencepiece
  keras.utils.set_random_seed(seed)
  words = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter([s.lower() for s in _CORPUS]),
      model_writer=words,
      vocab_size=64,
      model_type='word',
      pad_id=0, bos_id=1, eos_id=2, unk_id=3,
      pad_piece='<pad>', bos_piece='<bos>', eos_piece='<eos>', unk_piece='<unk>',
      user_defined_symbols=['<start_of_turn>', '<end_of_turn>'],
      hard_vocab_limit=False,
      # Its trainer prints its whole spec (~80 lines) at INFO otherwise.
      minloglevel=2)
  tokenizer = keras_hub.models.GemmaTokenizer(proto=words.getvalue())
  backbone = keras_hub.models.GemmaBackbone(
      vocabulary_size=tokenizer.vocabulary_size(),
      num_layers=2, num_query_heads=2, num_key_value_heads=1,
      hidden_dim=16, intermediate_dim=32, head_dim=8)
  preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(
      tokenizer, sequence_length=256)
  keras_hub.models.GemmaCausalLM(
      backbone=backbone, preprocessor=preprocessor).save_to_preset(path)
  return path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('path', help='directory to save the model in')
  kind = parser.add_mutually_exclusive_group()
  kind.add_argument('--seq2seq', action='store_true', help='T5-style model')
  kind.add_argument('--gemma', action='store_true', help='keras-hub Gemma preset')
  args = parser.parse_args(argv)
  os.makedirs(args.path, exist_ok=True)
  build = (build_seq2seq_lm if args.seq2seq else
           build_gemma if args.gemma else build_causal_lm)
  # keras-hub imports TensorFlow, whose C++ banners (and a cuInit "error"
  # on machines without a GPU) go straight to descriptor 2: shown only if
  # the build fails.
  from beam_llm.cli import quiet
  with quiet.captured_stderr():
    build(args.path)
  print(f'Saved a tiny RANDOM-WEIGHT model (its output is gibberish) to '
        f'{args.path}')


if __name__ == '__main__':
  main()
