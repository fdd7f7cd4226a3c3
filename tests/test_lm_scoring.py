"""The topic scorer's shared prompts (lm_scoring.topic_logprobs): each article's question run once with a KV cache
and the candidate names scored on top give the per-(article, topic) log-probabilities of scoring every question +
name row on its own (dataset_logprobs), on tiny random LLaMA, Qwen2 and Mistral models, bare and with LoRA, in
batches mixing questions of different lengths and names of one to several tokens, split over two processes too."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import datasets
from federated_proxy_finetuning.lm_scoring import dataset_logprobs, prompt_groups, topic_logprobs
from federated_proxy_finetuning.lm_tasks import collate_lm, encode_topic_prompts
from tests.test_decoder_families import CONFIGS
from tests.test_lm_tasks import CPU, tokenizer  # noqa: F401  (the tokenizer fixture)

TITLES = ["cup", "the award given for music and film by the star", "a chip", "software on a computer of a phone", ""]
NAMES = ["music", "sport and games", "natural science fiction", "art"]


@pytest.fixture
def prompts(tokenizer) -> datasets.Dataset:  # noqa: F811
    rows = datasets.Dataset.from_dict({"title": TITLES, "topic": [0, 1, 2, 3, 1]})
    table = datasets.Dataset.from_dict(encode_topic_prompts(tokenizer, rows, NAMES, 128))
    widths = {len([t for t in r["labels"] if t != -100]) for r in table}
    assert len(widths) > 1 and max(widths) >= 3  # names of different token counts
    assert len({len(g["input_ids"]) for g in prompt_groups(table)}) == len(TITLES)  # questions of different lengths
    return table


def decoder(name: str, vocab: int, lora: bool, attention: str):
    torch.manual_seed(0)
    config = CONFIGS[name](
        hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=vocab, max_position_embeddings=128, tie_word_embeddings=True, attn_implementation=attention,
        initializer_range=0.2,  # sharper than the default 0.02, so a misplaced position or mask shows
    )  # fmt: skip
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    if lora:  # LoRA B initialised at random, so the adapter changes the numbers
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
        model = get_peft_model(model, lora_config)
    return model.eval()


@pytest.mark.parametrize("lora", [False, True], ids=["bare", "lora"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shared_prompts_give_the_per_row_numbers(name, lora, tokenizer, prompts):  # noqa: F811
    collate = lambda rows: collate_lm(rows, pad_id=tokenizer.pad_token_id)  # noqa: E731
    for attention in ("sdpa", "eager"):
        model = decoder(name, len(tokenizer), lora, attention)
        by_row, _ = dataset_logprobs(model, prompts, collate, 7, CPU)
        for batch_size in (1, 3, len(TITLES)):
            shared = topic_logprobs(model, prompts, collate, batch_size, CPU)
            assert shared.shape == by_row.shape
            assert abs(shared - by_row).max() < 1e-4, (attention, batch_size)


def test_processes_share_the_articles_and_gather_them_in_order(tokenizer, prompts, monkeypatch):  # noqa: F811
    """Two ranks as threads, gather_object handing each the union of both ranks' batches as accelerate does."""
    import threading

    import accelerate.utils

    collate = lambda rows: collate_lm(rows, pad_id=tokenizer.pad_token_id)  # noqa: E731
    model = decoder("llama", len(tokenizer), lora=False, attention="sdpa")
    alone = topic_logprobs(model, prompts, collate, 2, CPU)
    barrier, sent, results = threading.Barrier(2), {}, {}

    def gather(mine):
        sent[threading.current_thread().name] = mine
        barrier.wait()
        return sent["0"] + sent["1"]

    def rank(index: int):
        machine = SimpleNamespace(process_index=index, num_processes=2, device="cpu")
        results[index] = topic_logprobs(model, prompts, collate, 2, machine)

    monkeypatch.setattr(accelerate.utils, "gather_object", gather)
    threads = [threading.Thread(target=rank, args=(i,), name=str(i)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [len(sent[r]) for r in "01"] == [2, 1]  # articles 0-4 in batches of 2: batches 0 and 2, then 1
    assert results[0] == pytest.approx(alone, abs=1e-6) and results[1] == pytest.approx(alone, abs=1e-6)


def test_a_subset_keeps_the_rows_order(tokenizer, prompts):  # noqa: F811
    """Articles numbered with gaps and out of the table's first order still land on their rows."""
    collate = lambda rows: collate_lm(rows, pad_id=tokenizer.pad_token_id)  # noqa: E731
    kept = prompts.filter(lambda r: r["article"] in (1, 3)).map(lambda r: {"article": {1: 7, 3: 2}[r["article"]]})
    model = decoder("qwen2", len(tokenizer), lora=False, attention="sdpa")
    by_row, _ = dataset_logprobs(model, kept, collate, 4, CPU)
    assert abs(topic_logprobs(model, kept, collate, 2, CPU) - by_row).max() < 1e-4
