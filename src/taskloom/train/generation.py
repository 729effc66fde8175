"""Generation tasks: instruction pairs for a causal LM, the response-only loss, and greedy decoding.

A row {"prompt", "response"} becomes the chat of the base model's own template (user = prompt,
assistant = response). Only the response and the end-of-turn token that closes it are learned:
every prompt and template token has the label -100, so the model is never taught to write
the user's question, and the loss measures exactly what we want it to do better.

Token weighting (`key_weight` > 1) puts more of the loss on the tokens that carry the answer:
- a row may name them: "keys": ["Paris"] (substrings of the response); tokens overlapping a key
  get `key_weight`;
- otherwise a heuristic picks them: response tokens that hold a letter or digit and are not among
  the `COMMON_TOP_K` most frequent response tokens of the rows being encoded (the training split).
  Function words, punctuation and the template are then weighted 1.0, content words `key_weight`.
With `key_weight=1.0` every response token counts the same (weighting off).

    taskloom tasks export chatterbot-gen --out runs/tasks/chatterbot-gen
    taskloom train runs/tasks/chatterbot-gen/task.yaml --out runs/chatterbot-gen

The generation metric is `answer_loss`: the mean negative log-likelihood per response token on
held-out rows, unweighted (lower is better).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from taskloom.errors import UserError

if TYPE_CHECKING:
    import torch

IGNORE = -100
COMMON_TOP_K = 50  # response tokens this frequent are function words, not answer content
_USER, _ANSWER = "\x00taskloom-prompt\x00", "\x00taskloom-response\x00"


def _template(tok) -> tuple[str, str, str]:
    """(head, tail, end) of one chat turn: head + prompt + tail + response + end.

    Rendered once with placeholder contents; a tokenizer without a chat template gets a plain
    "prompt\\n" ... "response<eos>" layout.
    """
    if not getattr(tok, "chat_template", None):
        return "", "\n", tok.eos_token or ""
    user = [{"role": "user", "content": _USER}]
    turn = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template([*user, {"role": "assistant", "content": _ANSWER}], tokenize=False)
    head, tail = turn.split(_USER)
    if not full.startswith(head + _USER + tail + _ANSWER):
        raise ValueError("the chat template does not render the assistant turn after its generation prompt")
    end = full[len(head + _USER + tail + _ANSWER) :].rstrip() or (tok.eos_token or "")
    return head, tail, end


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"] if text else []


def _offsets(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each token's (start, end) characters in it."""
    if getattr(tok, "is_fast", False):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    ids, spans, start = _ids(tok, text), [], 0
    for i in range(len(ids)):  # slow tokenizers: decode growing prefixes
        end = len(tok.decode(ids[: i + 1]))
        spans.append((start, end))
        start = end
    return ids, spans


def common_tokens(tok, rows: list[dict], top_k: int = COMMON_TOP_K) -> set[int]:
    """The `top_k` most frequent token ids over the rows' responses (the heuristic's function words)."""
    counts = Counter(t for r in rows for t in _ids(tok, r["response"]))
    return {t for t, _n in counts.most_common(top_k)}


def _key_mask(tok, response: str, ids: list[int], spans, keys, common: set[int], content: dict) -> list[bool]:
    """Which response tokens carry the answer: those overlapping a key, else the rare content tokens."""
    if keys:
        found = []
        for key in keys:
            start = response.find(key)
            while key and start >= 0:
                found.append((start, start + len(key)))
                start = response.find(key, start + 1)
        return [any(s < ke and ks < e for ks, ke in found) for s, e in spans]
    for t in ids:
        if t not in content:
            content[t] = t not in common and any(ch.isalnum() for ch in tok.decode([t]))
    return [content[t] for t in ids]


def encode_rows(
    tok, rows: list[dict], max_length: int, key_weight: float = 1.0, common: set[int] | None = None
) -> list[dict]:
    """Each row -> {"input_ids", "labels", "weights"}: the prompt masked (-100), the response learned.

    Too long a row loses the end of its prompt's content first (the template stays), then the end
    of its response. The heuristic's frequent tokens come from `rows` (pass the whole training
    split at once) unless `common` gives them.
    """
    head, tail, end = _template(tok)
    head_ids, tail_ids, end_ids = _ids(tok, head), _ids(tok, tail), _ids(tok, end)
    weighting = key_weight != 1.0
    if weighting and common is None and not all(r.get("keys") for r in rows):
        common = common_tokens(tok, rows)
    out: list[dict] = []
    content: dict[int, bool] = {}  # token id -> carries content (shared across rows)
    for row in rows:
        content_ids = _ids(tok, row["prompt"])
        resp_ids, spans = _offsets(tok, row["response"])
        answer = resp_ids + end_ids
        room = max_length - len(head_ids) - len(tail_ids)
        if room < 1:
            fixed = len(head_ids) + len(tail_ids)
            raise UserError(f"max_length {max_length}: too short for the chat template ({fixed} tokens) and a response")
        answer = answer[:room]
        content_ids = content_ids[: room - len(answer)]
        prompt_ids = head_ids + content_ids + tail_ids
        if weighting:
            keys = _key_mask(tok, row["response"], resp_ids, spans, row.get("keys"), common or set(), content)
            resp_w = [key_weight if k else 1.0 for k in keys] + [1.0] * len(end_ids)
        else:
            resp_w = [1.0] * (len(resp_ids) + len(end_ids))
        out.append(
            {
                "input_ids": prompt_ids + answer,
                "labels": [IGNORE] * len(prompt_ids) + answer,
                "weights": [0.0] * len(prompt_ids) + resp_w[: len(answer)],
            }
        )
    return out


def collate(examples: list[dict], pad_id: int, device="cpu") -> dict:
    """Right-pad to the batch's longest row: input_ids, attention_mask, labels (-100), weights (0)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)

    def pad(key: str, value, dtype):
        return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples], dtype=dtype, device=device)

    mask = torch.tensor(
        [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples], device=device
    )
    return {
        "input_ids": pad("input_ids", pad_id, torch.long),
        "attention_mask": mask,
        "labels": pad("labels", IGNORE, torch.long),
        "weights": pad("weights", 0.0, torch.float32),
    }


def _response_nll(model, batch):
    """(nll, weight) of every response token, flattened.

    The LM head (49k-word vocabulary) runs on the response positions only, which saves ~20 % of a
    training step; a wrapper whose forward must run (DistributedDataParallel) or a model with its
    own logits path (soft-capping) gets the plain forward instead.
    """
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    sel = labels != IGNORE
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(model, "module") and getattr(base.config, "final_logit_softcapping", None) is None:
        decoder = base.get_decoder()
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits = base.get_output_embeddings()(hidden.last_hidden_state[:, :-1][sel])
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits[:, :-1][sel]
    nll = F.cross_entropy(logits.float(), labels[sel], reduction="none")
    return nll, batch["weights"][:, 1:][sel]


def generation_loss(model, batch) -> torch.Tensor:
    """Weighted mean cross-entropy over the batch's response tokens (prompt tokens never count).
    `batch`: one collated batch, or a list of them (one batch's length-aware chunks)."""
    parts = [_response_nll(model, b) for b in (batch if isinstance(batch, list) else [batch])]
    total = sum((nll * w).sum() for nll, w in parts)
    return total / sum(w.sum() for _, w in parts).clamp(min=1e-9)


def answer_loss(tok, model, rows: list[dict], max_length: int = 128, batch_size: int = 16) -> float:
    """Mean NLL per response token (end-of-turn included) on held-out rows, unweighted; lower is better."""
    import torch

    device = next(model.parameters()).device
    examples = sorted(encode_rows(tok, rows, max_length), key=lambda e: len(e["input_ids"]))
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                nll, _w = _response_nll(model, collate(examples[i : i + batch_size], tok.pad_token_id, device))
                total += float(nll.sum())
                count += nll.numel()
    finally:
        model.train(was_training)
    return total / max(count, 1)


def generate(
    tok, model, prompts: list[str], max_tokens: int = 32, temperature: float = 0.0, batch_size: int = 16
) -> list[str]:
    """The model's reply to each prompt, in the training chat layout; greedy unless temperature > 0."""
    import torch

    head, tail, end = _template(tok)
    head_ids, tail_ids, end_ids = _ids(tok, head), _ids(tok, tail), _ids(tok, end)
    stop = [i for i in {*(end_ids[:1]), tok.eos_token_id} if i is not None]
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    was_training = model.training
    model.eval()
    replies: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            seqs = [head_ids + _ids(tok, p) + tail_ids for p in prompts[i : i + batch_size]]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)  # left padding
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            with torch.no_grad():
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                    pad_token_id=pad, eos_token_id=stop, **sampling,
                )  # fmt: skip
            replies += [tok.decode(o[width:], skip_special_tokens=True).strip() for o in out]
    finally:
        model.train(was_training)
    return replies
