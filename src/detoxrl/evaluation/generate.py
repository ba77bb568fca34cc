"""The `generate` stage: k sampled continuations per held-out RTP eval prompt.

Batched, left-padded, KV-cached sampling in a short decode loop of our own (see
`sample_continuations` for why not `model.generate`); only the generated continuation is kept.
Prompts are sorted by length so a batch carries little padding.
"""

from __future__ import annotations

from pathlib import Path

from .. import DetoxError, hardware
from ..io import read_jsonl, write_jsonl
from ..models.load import eos_token_ids, load_for_inference
from ..params import GenerateParams


def format_prompt(text: str, tokenizer, params: GenerateParams) -> str:
    """The model input for one RTP prompt: the raw text, or a chat turn asking to continue it."""
    if params.prompt_format == "raw":
        return text
    messages = [{"role": "user", "content": f"{params.chat_instruction}\n\n{text}"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def sample_top_p(logits, temperature: float, top_p: float, generator, tiers: tuple[int, ...] = (256, 4096)):
    """Nucleus sampling, exact, without sorting the whole vocabulary for every row.

    The nucleus is the shortest prefix of tokens by descending probability whose mass reaches top_p.
    A cheap `topk` over the first tier of candidates holds it for most rows; rows whose candidates
    carry less than top_p of the mass move on to the next, wider tier, and finally to a full sort.
    (A full sort and a multinomial over 49k tokens per row cost more than the model's decode step;
    measured on RTP prompts with SmolLM2: 43% of positions need more than 256 candidates, 0.3% more
    than 4096.)
    """
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:  # the whole vocabulary is the nucleus
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    pending = torch.arange(probs.shape[0], device=probs.device)
    for k in (*tiers, probs.shape[-1]):
        k = min(k, probs.shape[-1])
        p, idx = probs[pending].topk(k, dim=-1)  # sorted, descending
        enough = (p.sum(-1) >= top_p) | (k == probs.shape[-1])
        before = p.cumsum(-1) - p  # mass of the tokens ranked above each token
        p = p.masked_fill(before >= top_p, 0.0)  # keep tokens until the nucleus mass is reached
        pick = torch.multinomial(p[enough], 1, generator=generator)
        tokens[pending[enough]] = idx[enough].gather(-1, pick).squeeze(-1)
        pending = pending[~enough]
        if not len(pending):
            break
    return tokens


def sample_tokens(model, input_ids, attention_mask, k: int, max_new_tokens: int, temperature: float,
                  top_p: float, eos_ids: list[int], pad_id: int, generator, collect: bool = False):
    """Sample k continuations of each left-padded prompt row; returns (tokens [rows*k, T], eos [rows*k]).

    One prefill pass per prompt (logits only for the last position), the KV cache repeated k times,
    then a decode loop feeding one token per row until every row has produced EOS or max_new_tokens.
    Prefilling each prompt once instead of k times saves most of the prompt FLOPs, which at 20 new
    tokens are a large share of the total. After a row's EOS its tokens are `pad_id`.

    With `collect`, also returns what PPO would otherwise recompute in a second forward pass: the
    log-prob of each sampled token under softmax(logits / temperature) over the whole vocabulary
    (what the training forward computes; top-p only restricts which tokens are drawn), and the
    final hidden state before each token [rows*k, T, H], for a value head. `model` must then be a
    transformers causal LM (it is run as its decoder plus its output embeddings).
    """
    import torch

    device = input_ids.device
    eos = torch.tensor(eos_ids, device=device)
    mask = attention_mask
    trunk, head = (model.get_decoder(), model.get_output_embeddings()) if collect else (None, None)

    def forward(ids, mask, position_ids, cache):
        """Logits of the last position, the updated cache, and (collect only) its hidden state."""
        if not collect:
            out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=cache,
                        use_cache=True, logits_to_keep=1)
            return out.logits[:, -1], out.cache, None
        out = trunk(input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
        return head(hidden), out.cache, hidden

    with torch.inference_mode():
        logits, cache, hidden = forward(input_ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), None)
        cache.batch_repeat_interleave(k)
        logits = logits.repeat_interleave(k, dim=0)
        hidden = hidden.repeat_interleave(k, dim=0) if collect else None
        mask = mask.repeat_interleave(k, dim=0)
        n_rows = logits.shape[0]
        tokens = torch.full((n_rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
        logprobs, hiddens = [], []
        done = torch.zeros(n_rows, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            nxt = sample_top_p(logits, temperature, top_p, generator).masked_fill(done, pad_id)
            tokens[:, step] = nxt
            if collect:
                logprobs.append(torch.log_softmax(logits.float() / temperature, -1).gather(-1, nxt[:, None]))
                hiddens.append(hidden.float())
            done |= torch.isin(nxt, eos)
            if done.all() or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(n_rows, 1)], dim=1)  # finished rows feed pad tokens; harmless
            logits, cache, hidden = forward(nxt.unsqueeze(1), mask, mask.sum(-1, keepdim=True) - 1, cache)
    if not collect:
        return tokens, done
    # steps not taken (every row ended early) are padding: log-prob 0, hidden state 0
    t = len(logprobs)
    lp = torch.zeros(n_rows, max_new_tokens, device=device)
    lp[:, :t] = torch.cat(logprobs, 1)
    hs = torch.zeros(n_rows, max_new_tokens, hiddens[0].shape[-1], device=device)
    hs[:, :t] = torch.stack(hiddens, 1)
    return tokens, done, lp, hs


def thinking_cut(seq: list[int], delimiter_ids: list[int], budget: int, answer_tokens: int) -> int:
    """How many of a response's tokens to keep under a thinking budget: the thinking up to and including the first
    delimiter, if it ends within `budget` tokens, then at most `answer_tokens` of the answer; else (the thinking did
    not close within its budget) the first `budget` tokens. Sampling is autoregressive, so the kept tokens are
    exactly those a decode stopped at that point would have drawn."""
    width = len(delimiter_ids)
    for end in range(width, min(budget, len(seq)) + 1):
        if seq[end - width:end] == delimiter_ids:
            return min(len(seq), end + answer_tokens)
    return min(len(seq), budget)


def sample_continuations(model, tokenizer, prompts: list[str], params: GenerateParams,
                         progress: bool = True, thinking=None) -> list[list[dict]]:
    """For each prompt string, k samples {text, n_tokens, eos}. Deterministic for the same params.

    `thinking` (the thinking block; generate and chat_eval pass it): with a delimiter and `max_tokens`, the thinking
    may take max_tokens tokens and the answer after the delimiter params.max_new_tokens (thinking_cut); the decode
    runs to their sum and each response is cut after it."""
    import torch
    from tqdm import tqdm

    tokenizer.padding_side = "left"
    eos_ids = eos_token_ids(model, tokenizer)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])  # similar lengths share a batch
    per_batch = max(1, params.batch_size // params.k)  # batch_size counts sequences, k per prompt
    batches = [order[i:i + per_batch] for i in range(0, len(order), per_batch)]
    results: list[list[dict]] = [[] for _ in prompts]
    budget = thinking.max_tokens if thinking is not None and thinking.delimiter is not None else None
    steps = params.max_new_tokens + (budget or 0)
    delimiter_ids = tokenizer(thinking.delimiter, add_special_tokens=False)["input_ids"] if budget else None
    for b, idx in enumerate(tqdm(batches, desc="generate", disable=not progress)):
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)
        tokens, ended = sample_tokens(model, enc["input_ids"], enc["attention_mask"], params.k, steps,
                                      params.temperature, params.top_p, eos_ids, tokenizer.pad_token_id,
                                      torch.Generator(device=model.device).manual_seed(params.seed + b))
        for row, (seq, eos) in enumerate(zip(tokens.tolist(), ended.tolist())):
            n = next(j for j, t in enumerate(seq) if t in eos_ids) + 1 if eos else len(seq)
            if budget:
                cut = thinking_cut(seq[:n], delimiter_ids, budget, params.max_new_tokens)
                n, eos = cut, eos and cut == n
            results[idx[row // params.k]].append({
                "text": tokenizer.decode(seq[:n - eos], skip_special_tokens=True), "n_tokens": n, "eos": eos,
            })
    return results


def generate(model_dir: str | Path, base_dir: str | Path, prompts_path: str | Path, out_path: str | Path,
             params: GenerateParams, thinking=None) -> int:
    """Write k continuations per prompt. Under N processes (accelerate launch) each samples every N-th prompt and
    the main process writes all records back in prompt order (samples then differ from a single process's run:
    each process's batches and their seeds differ)."""
    import torch
    from accelerate.utils import gather_object
    from transformers import AutoTokenizer

    if params.engine == "vllm":
        from .vllm_engine import check_available, vllm_samples

        check_available()  # before any work: one sentence naming the param
        if thinking is not None and thinking.max_tokens is not None:
            raise DetoxError("thinking.max_tokens is not implemented for generate.engine: vllm; set "
                             "thinking.max_tokens: null (max_new_tokens then counts thinking and answer) or "
                             "generate.engine: hf")
        records = read_jsonl(prompts_path)
        tokenizer = AutoTokenizer.from_pretrained(model_dir if (Path(model_dir) / "tokenizer_config.json").exists()
                                                  else base_dir)
        prompts = [format_prompt(r["text"], tokenizer, params) for r in records]
        samples = vllm_samples(Path(model_dir), Path(base_dir), prompts, params)
        return write_jsonl(out_path, [{"prompt_id": r["id"], "subset": r["subset"], "sample": j, **s}
                                      for r, ss in zip(records, samples) for j, s in enumerate(ss)])
    state = hardware.process_state()
    torch.manual_seed(params.seed)
    model, tokenizer = load_for_inference(model_dir, base_dir)
    records = read_jsonl(prompts_path)
    mine = list(range(state.process_index, len(records), state.num_processes))
    prompts = [format_prompt(records[i]["text"], tokenizer, params) for i in mine]
    samples = sample_continuations(model, tokenizer, prompts, params, progress=state.is_main_process,
                                   thinking=thinking)
    done = list(zip(mine, samples))
    if state.num_processes > 1:
        done = sorted(gather_object(done))
    if not state.is_main_process:
        return 0
    rows = [
        {"prompt_id": records[i]["id"], "subset": records[i]["subset"], "sample": j, **s}
        for i, ss in done for j, s in enumerate(ss)
    ]
    return write_jsonl(out_path, rows)
