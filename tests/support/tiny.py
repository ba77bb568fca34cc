"""Tiny, randomly initialised but real transformers models (Llama, Qwen2, GPT-2 decoders; Llama, Qwen3 and DeBERTa-v2
reward models) for fast tests and as CPU stand-ins of the hub models the GPU recipes name."""

from __future__ import annotations

from pathlib import Path


def build_tiny_model(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# the tiny decoders over the character vocabulary (its <pad> 0 and </s> 1)
CHAR_SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, eos_token_id=1, pad_token_id=0, bos_token_id=None)


def _char_tokenizer():
    """30 symbols (<pad> 0, </s> 1, space, a-z, "." for every other character), one token per character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = ["<pad>", "</s>", " "] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["."]
    tk = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="."))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token=".")


def build_tiny_char_model(out: Path, seed: int = 0, tie_word_embeddings: bool = False) -> Path:
    """A tiny Llama over a 30-symbol character vocabulary: each symbol is sampled often enough that an
    RL test can reward one of them and watch its share rise within a few steps."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _char_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=tie_word_embeddings, **CHAR_SIZES)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# The DeepSeek-R1 distills' template, less its system prompt and tool calls: a past assistant turn is rendered
# without its thinking (the text up to `</think>` is dropped) and ends with EOS; the generation prompt opens the
# thinking. So the prompt a training stage renders (ending `<think>\n`) is not a prefix of prompt + answer.
R1_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
               "{% elif m['role'] == 'assistant' %}{% set content = m['content'] %}"
               "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
               "<｜Assistant｜>{{ content }}{{ eos_token }}{% endif %}{% endfor %}"
               "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}")


def build_tiny_qwen2_r1(out: Path, seed: int = 0) -> Path:
    """A stand-in for a DeepSeek-R1 distill: a tiny random Qwen2ForCausalLM (their architecture) whose chat
    template's generation prompt opens `<think>\n`, over the character vocabulary plus R1's markers as added
    (non-special) tokens, so `</think>` is one token that decoding keeps and a random model samples it about once
    in 34 tokens: some responses close their thinking within a few tokens and some do not."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _char_tokenizer()
    tok.add_tokens(["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"])
    tok.chat_template = R1_TEMPLATE
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), tie_word_embeddings=False, **CHAR_SIZES)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_gpt2(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """A tiny random GPT-2 (Conv1D layers, learned positions, `transformer.h` blocks) whose tokenizer, like GPT-2's,
    has no chat template and uses <|endoftext|> as BOS/EOS and no pad token: a stand-in for the base (non-chat)
    models the RLHF papers train (GPT-2, base Llama/Gemma)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = None
    tok.bos_token = tok.eos_token = "<|endoftext|>"
    tok.pad_token = None
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def build_tiny_seqcls(tokenizer_dir: Path, out: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny randomly initialised sequence-classification RM (num_labels=1) with SmolLM2's tokenizer: a
    LlamaForSequenceClassification, or (arch "qwen3") a Qwen3ForSequenceClassification with Qwen3's chat template,
    as Skywork-Reward-V2 is."""
    import torch
    from transformers import (AutoTokenizer, LlamaConfig, LlamaForSequenceClassification, Qwen3Config,
                              Qwen3ForSequenceClassification)

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, num_labels=1, pad_token_id=tok.pad_token_id,
                  eos_token_id=tok.eos_token_id)
    if arch == "qwen3":
        model = Qwen3ForSequenceClassification(Qwen3Config(**common, head_dim=8))
        # Qwen3's chat template shape (Skywork-Reward-V2 is a Qwen3 RM): no system prompt unless given.
        tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}")
    else:
        model = LlamaForSequenceClassification(LlamaConfig(**common))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_deberta(out: Path, texts: list[str], seed: int = 0) -> Path:
    """A tiny DebertaV2ForSequenceClassification with a WordPiece tokenizer over the words of `texts` that encodes
    [CLS] q [SEP] a [SEP] (OpenAssistant's reward-model-deberta-v3 reads question/answer pairs this way) and has no
    chat template."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + sorted({w.strip(".,?!").lower() for t in texts
                                                              for w in t.split()} | {".", ",", "?", "!"})
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]")
    torch.manual_seed(seed)
    config = DebertaV2Config(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=128, num_labels=1, pad_token_id=0,
                             pooler_hidden_size=32, type_vocab_size=2)
    DebertaV2ForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out
