"""What differs between text and image FMs, as one object per modality: the preprocessor, the public corpus
(reading it, holding items out, batching), the limits an FM's config sets on the flags, and the command line that
distils it (spec §3). Family rows name their modality with one of these objects; distillation asks it and never
checks a modality string; federated_proxy_finetuning's modality objects extend these with the task side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import reads
from .cli import UsageError


@dataclass
class Corpus:
    train: object  # text: the raw corpus (cut into blocks later); image: the training images
    tag: str  # its name in the output folder
    preprocessor: object  # tokenizer or image processor
    image_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class Modality:
    name: str  # the flags' modality ("text" or "image": typed_settings.option(modality=...)) or "causal-lm"
    distill_script: str  # the command line that distils FMs of this modality
    processor: str  # transformers auto class of the FM's tokenizer or image processor
    fm_kinds: str  # the FMs, as a command line's description names them
    distill_defaults: dict = field(default_factory=dict)  # distillation flag -> default where it differs

    @property
    def command_line(self) -> Modality:
        """The modality whose command lines and public corpus serve this one (a causal LM: text)."""
        return self

    def preprocessor(self, checkpoint: str):
        import transformers

        return reads.preprocessor(getattr(transformers, self.processor), checkpoint)

    def check_limits(self, config, block: tuple[str, int] | None, image_size: int | None) -> None:
        """Ranges that depend on the FM: `block` = (flag, tokens) of public-corpus blocks, `image_size` of crops."""

    def head_labels(self, num_labels: int) -> dict:
        """What the head class is built with in the benchmark: a classifier's labels."""
        return {"num_labels": num_labels}

    def config_shape(self, image_size: int, num_labels: int) -> dict:
        """Config fields of a random-weight FM of this modality beyond the layer shape (the benchmark's)."""
        return self.head_labels(num_labels)

    def head_width(self, config) -> int:
        """Outputs per token of the head, for the benchmark's FLOPs: 0 for a classifier, whose head reads one token
        per example (negligible next to the layers)."""
        return 0

    def random_inputs(
        self, batch: int, seq: int, image_size: int, generator: torch.Generator, vocab: int = 1000
    ) -> dict:
        """A batch of random model inputs: token ids of `seq` positions below `vocab` (0-4 left to special tokens),
        or RGB images of `image_size` pixels."""
        ids = torch.randint(5, min(1000, vocab), (batch, seq), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def random_batch(
        self, batch: int, seq: int, image_size: int, num_labels: int, generator: torch.Generator, vocab: int = 1000
    ) -> dict:
        """Random inputs with their labels: a class per example (a classifier's)."""
        labels = torch.randint(0, num_labels, (batch,), generator=generator)
        return {**self.random_inputs(batch, seq, image_size, generator, vocab), "labels": labels}

    def load_corpus(self, s, config) -> Corpus:
        """The public corpus for layer-level distillation (DistillSettings `s`), refused with one line."""
        raise NotImplementedError

    def split_corpus(self, s, corpus: Corpus, config, accelerator):
        """(held-out items, training items, collate): the first shuffled items are held out for the report."""
        raise NotImplementedError


class Text(Modality):
    def check_limits(self, config, block: tuple[str, int] | None, image_size: int | None) -> None:
        from .families import UnsupportedModelError, max_tokens

        try:
            limit = max_tokens(config)
        except UnsupportedModelError:
            return  # refused with the supported families where the models are built
        if block is not None and block[1] > limit:
            raise UsageError(f"{block[0]} must be in [1, {limit}] for this FM, got {block[1]}")

    def load_corpus(self, s, config) -> Corpus:
        from . import corpus as corpus_lib  # datasets is imported where a corpus is read, not with the families

        paths = [s.dataset1_path or None, s.dataset2_path or None]
        try:
            raw = corpus_lib.load_text_corpora(paths, [s.dataset1_config, s.dataset2_config])
        except corpus_lib.CorpusError as exc:
            raise UsageError(str(exc)) from exc
        return Corpus(raw, corpus_lib.corpus_name(paths), self.preprocessor(s.model_checkpoint))

    def split_corpus(self, s, corpus: Corpus, config, accelerator):
        from . import corpus as corpus_lib  # datasets is imported where a corpus is read, not with the families

        cache = s.cache_dir or str(Path(s.sub_model_dir) / ".cache")
        with accelerator.main_process_first():
            blocks = corpus_lib.text_blocks(
                corpus.train,
                corpus.preprocessor,
                s.block_size,
                cache,
                num_proc=s.num_proc,
                truncate_at=s.max_seq_length,
            )
        blocks = blocks.shuffle(seed=s.seed)
        n_eval = min(s.eval_blocks, len(blocks) // 10)
        heldout, data = blocks.select(range(n_eval)), blocks.select(range(n_eval, len(blocks)))
        return heldout, data, corpus_lib.text_collator(corpus.preprocessor)


class CausalLM(Text):
    @property
    def command_line(self) -> Modality:
        return TEXT

    def head_labels(self, num_labels: int) -> dict:
        return {}  # the LM head is the FM's own: no classes

    def config_shape(self, image_size: int, num_labels: int) -> dict:
        return {"tie_word_embeddings": True}  # the decoder rows' LM head is the input embeddings (families.py)

    def head_width(self, config) -> int:
        return config.vocab_size  # the LM head scores every token against the vocabulary

    def random_batch(
        self, batch: int, seq: int, image_size: int, num_labels: int, generator: torch.Generator, vocab: int = 1000
    ) -> dict:
        """Random token ids, labelled with themselves (the model shifts them: next-token prediction)."""
        inputs = self.random_inputs(batch, seq, image_size, generator, vocab)
        return {**inputs, "labels": inputs["input_ids"].clone()}


class Image(Modality):
    def config_shape(self, image_size: int, num_labels: int) -> dict:
        return {**self.head_labels(num_labels), "image_size": image_size}

    def random_inputs(
        self, batch: int, seq: int, image_size: int, generator: torch.Generator, vocab: int = 1000
    ) -> dict:
        return {"pixel_values": torch.randn(batch, 3, image_size, image_size, generator=generator)}

    def check_limits(self, config, block: tuple[str, int] | None, image_size: int | None) -> None:
        if image_size is not None and image_size < config.patch_size:
            raise UsageError(f"--image_size must be at least the FM's patch size {config.patch_size}, got {image_size}")

    def load_corpus(self, s, config) -> Corpus:
        from . import corpus as corpus_lib  # datasets is imported where a corpus is read, not with the families

        processor = self.preprocessor(s.model_checkpoint)
        size = s.image_size or config.image_size
        try:
            transform = corpus_lib.fm_image_transform(processor, config, size, train=True)
            images = corpus_lib.load_image_corpus(s.distill_dataset_path, transform)
        except corpus_lib.CorpusError as exc:
            raise UsageError(str(exc)) from exc
        return Corpus(images, corpus_lib.corpus_name([s.distill_dataset_path]), processor, size)

    def split_corpus(self, s, corpus: Corpus, config, accelerator):
        from . import corpus as corpus_lib  # datasets is imported where a corpus is read, not with the families

        transform = corpus_lib.fm_image_transform(corpus.preprocessor, config, corpus.image_size, train=False)
        eval_images = corpus_lib.load_image_corpus(s.distill_dataset_path, transform)
        order = torch.randperm(len(corpus.train), generator=torch.Generator().manual_seed(s.seed)).tolist()
        n_eval = min(s.eval_blocks, len(order) // 10)
        heldout = torch.utils.data.Subset(eval_images, order[:n_eval])
        return heldout, torch.utils.data.Subset(corpus.train, order[n_eval:]), corpus_lib.image_collate


TEXT = Text(name="text", distill_script="distill.py", processor="AutoTokenizer", fm_kinds="BERT/RoBERTa")
# the ViT reference distils without the weight term
IMAGE = Image(
    name="image",
    distill_script="distill_vit.py",
    processor="AutoImageProcessor",
    fm_kinds="ViT",
    distill_defaults={"distill_alpha": 0.0},
)
CAUSAL_LM = CausalLM(name="causal-lm", distill_script="distill.py", processor="AutoTokenizer", fm_kinds="causal LM")
COMMAND_LINES: dict[str, Modality] = {m.name: m for m in (TEXT, IMAGE)}  # the modalities a command line takes
