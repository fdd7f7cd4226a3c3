"""Log-likelihood scoring for the causal-LM task (lm_tasks.py): the summed log-probability of each row's labelled
tokens, and the topic scorer's candidate names as continuations of a shared prompt. A topic prompt row is its
article's question followed by one candidate name; scored row by row, every article's question runs once per
candidate. topic_logprobs runs each question once, keeps its keys and values (a KV cache), repeats them once per
candidate and runs the names alone on top: the same numbers, for a fraction of the forward work."""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F

from sub_model_construct.train_loop import over_batches

IGNORE = -100  # the label of a token that carries no loss: prompt and padding


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens (the logits at t predict token t + 1) and their
    count. Computed in float32, whatever the logits' dtype."""
    target = labels[:, 1:]
    logits = logits[:, :-1].float()
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE, reduction="none"
    )
    return -nll.view(target.shape).sum(1), (target != IGNORE).sum(1)


@torch.no_grad()
def dataset_logprobs(model, dataset, collate, batch_size: int, accelerator) -> tuple[np.ndarray, np.ndarray]:
    """sequence_logprobs of every row, in the rows' order; batches are spread over processes and gathered back."""

    def step(batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp, count = sequence_logprobs(logits, batch["labels"])
        return logp.double().cpu().numpy(), count.cpu().numpy()

    everything = over_batches(dataset, collate, batch_size, accelerator, step)
    if not everything:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate([lp for lp, _ in everything]), np.concatenate([c for _, c in everything])


# ------------------------------------------------------------------------------------------------ shared prompts
def takes_a_cache(model) -> bool:
    """Whether `model`'s forward can take a KV cache: a `cache` argument (transformers 5's name for past_key_values)
    or **kwargs, through which PEFT and DDP wrappers pass it on. A bare module that only maps input_ids to logits
    cannot share a prompt and is scored row by row."""
    parameters = inspect.signature(model.forward).parameters.values()
    return any(p.name == "cache" or p.kind is p.VAR_KEYWORD for p in parameters)


def prompt_groups(prompts) -> list[dict]:
    """One row per article of a topic-prompt table (rows article by article, as encode_topic_prompts writes them):
    its question as input_ids / attention_mask / labels (all IGNORE, for the task's collate) and `names`, the
    token ids of each candidate's name, in candidate order. The question is a row's tokens before its labelled
    ones, the same in every row of an article."""
    groups: dict[int, dict] = {}
    for article, candidate, ids, labels in zip(
        prompts["article"], prompts["candidate"], prompts["input_ids"], prompts["labels"]
    ):
        start = next(i for i, label in enumerate(labels) if label != IGNORE)
        group = groups.setdefault(
            article, {"input_ids": ids[:start], "attention_mask": [1] * start, "labels": [IGNORE] * start, "names": {}}
        )
        if ids[:start] != group["input_ids"]:
            raise ValueError(f"the topic prompts of article {article} do not share one question")
        group["names"][candidate] = ids[start:]
    return [{**g, "names": [g["names"][c] for c in sorted(g["names"])]} for _, g in sorted(groups.items())]


def collate_groups(rows: list[dict], collate) -> dict[str, torch.Tensor]:
    """The questions through the task's collate (right padding), and the names as `names` (articles x candidates
    x longest name, padded with token 0, which no labelled token follows) with `name_mask`."""
    width = max(len(n) for r in rows for n in r["names"])
    names = [[list(n) + [0] * (width - len(n)) for n in r["names"]] for r in rows]
    mask = [[[1] * len(n) + [0] * (width - len(n)) for n in r["names"]] for r in rows]
    return {**collate(rows), "names": torch.tensor(names), "name_mask": torch.tensor(mask)}


def continuation_logprobs(model, batch: dict) -> torch.Tensor:
    """(articles, candidates) summed log-probabilities of each name after its article's question: the questions run
    once with a cache, whose rows are repeated once per candidate for the names' own tokens. The names sit right
    after each question's last real token (explicit positions), attending to its real tokens (the question's padding
    masked) and to their own earlier tokens; the last name token is never input, as nothing is read from it."""
    mask, names, name_mask = batch["attention_mask"], batch["names"], batch["name_mask"]
    articles, candidates, width = names.shape
    lengths = mask.sum(1)
    out = model(input_ids=batch["input_ids"], attention_mask=mask, use_cache=True)
    last = out.logits[torch.arange(articles, device=mask.device), lengths - 1].float().log_softmax(-1)
    total = last.gather(1, names[:, :, 0])  # the question's last token predicts each name's first
    if width == 1:
        return total
    cache = out.cache
    cache.batch_repeat_interleave(candidates)
    flat, flat_mask = names.flatten(0, 1), name_mask.flatten(0, 1)
    logits = model(
        input_ids=flat[:, :-1],
        attention_mask=torch.cat([mask.repeat_interleave(candidates, 0), flat_mask[:, :-1]], 1),
        position_ids=lengths.repeat_interleave(candidates)[:, None] + torch.arange(width - 1, device=names.device),
        cache=cache,
        use_cache=True,
    ).logits.float()
    labels = flat[:, 1:].masked_fill(flat_mask[:, 1:] == 0, IGNORE)
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    return total - nll.view(articles, candidates, width - 1).sum(2)


@torch.no_grad()
def topic_logprobs(model, prompts, collate, batch_size: int, accelerator) -> np.ndarray:
    """The summed log-probability of every topic-prompt row's name (dataset_logprobs' first output, in the rows'
    order), each article's question run once for all its candidates; `batch_size` counts articles. Batches of
    articles are spread over processes and gathered back. A model that takes no cache is scored row by row."""
    if not takes_a_cache(model):
        return dataset_logprobs(model, prompts, collate, batch_size, accelerator)[0]
    groups = prompt_groups(prompts)

    def step(batch):
        return continuation_logprobs(model, batch).double().cpu().numpy()

    parts = over_batches(groups, lambda rows: collate_groups(rows, collate), batch_size, accelerator, step)
    if not parts:
        return np.zeros(0)
    grid, articles = np.concatenate(parts), list(prompts["article"])
    order = {article: i for i, article in enumerate(sorted(set(articles)))}
    return grid[[order[a] for a in articles], list(prompts["candidate"])]
