"""The one seam between text and image runs (spec §4.2): task loading, public corpus, head class, normalisation and
the command line's defaults. Everything else is the same program; it asks the run's `Modality` and never checks a
modality string itself. Each object extends sub_model_construct's modality of the same name (preprocessor, limits
of the FM, distillation corpus) with the task side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sub_model_construct import corpus as corpus_lib
from sub_model_construct import modality as construction
from sub_model_construct.cli import UsageError
from sub_model_construct.families import Family, max_tokens

from .image_tasks import load_image_task
from .settings import FedSettings
from .tasks import TaskData, TaskError, load_text_task


@dataclass(frozen=True, kw_only=True)
class Modality(construction.Modality):
    script: str  # the command line for this modality
    head: str  # transformers auto class of the FM with its head (classification, or a causal LM's own)
    defaults: dict = field(default_factory=dict)  # flag -> default where this command line differs

    def head_class(self):
        import transformers

        return getattr(transformers, self.head)

    def head_kwargs(self, task: TaskData) -> dict:
        """What the head class is built with: the task's labels (a classification head is new)."""
        return {"num_labels": task.num_labels, "id2label": task.id2label, "label2id": task.label2id}

    def prepare(self, model) -> None:
        """Settings of a built FM or client model for this modality's runs (nothing for a classifier)."""

    def load_task(self, settings: FedSettings, preprocessor, fm_config) -> TaskData:
        raise NotImplementedError

    def public_corpus(self, settings: FedSettings, preprocessor, fm_config):
        """(items, collate) of the public corpus for neuron-level alignment (spec §4.10), loaded once."""
        raise NotImplementedError

    def task(self, settings: FedSettings, preprocessor, fm_config) -> TaskData:
        try:
            return self.load_task(settings, preprocessor, fm_config)
        except TaskError as exc:
            raise UsageError(str(exc)) from exc

    def corpus(self, settings: FedSettings, preprocessor, fm_config):
        try:
            return self.public_corpus(settings, preprocessor, fm_config)
        except corpus_lib.CorpusError as exc:
            raise UsageError(f"alignment requested (--align_interval {settings.align.interval}) but {exc}") from exc


class Text(Modality, construction.Text):
    def load_task(self, settings: FedSettings, tokenizer, fm_config) -> TaskData:
        s = settings
        length = min(s.max_length, max_tokens(fm_config))  # longer sequences would not fit the position embeddings
        return load_text_task(s.task_name, s.dataset_path, tokenizer, length, s.cache_dir, s.dataset_label_name)

    def public_corpus(self, settings: FedSettings, tokenizer, fm_config):
        a = settings.align
        paths = [a.text_corpus_1 or None, a.text_corpus_2 or None]
        if not any(paths):
            raise corpus_lib.CorpusError("alignment needs a public corpus: give --distill_dataset1_path")
        raw = corpus_lib.load_text_corpora(paths, [None, a.text_corpus_2_config])
        blocks = corpus_lib.text_blocks(raw, tokenizer, a.block_size, settings.cache_dir)
        return blocks, corpus_lib.text_collator(tokenizer)


class CausalLM(Text, construction.CausalLM):
    """A decoder LM on the text command line: instruction tasks (lm_tasks.py) scored with the model's own head."""

    def load_task(self, settings: FedSettings, tokenizer, fm_config) -> TaskData:
        from .lm_tasks import load_lm_task

        s = settings
        return load_lm_task(
            s.task_name, s.dataset_path, tokenizer, min(s.max_length, max_tokens(fm_config)), s.cache_dir
        )

    def head_kwargs(self, task: TaskData) -> dict:
        return {}  # the LM head is the FM's own (tied to the input embeddings where the family ties them)

    def prepare(self, model) -> None:
        model.config.use_cache = False  # training and scoring never decode: no key/value cache to build


class Image(Modality, construction.Image):
    def load_task(self, settings: FedSettings, processor, fm_config) -> TaskData:
        size = settings.image_size or fm_config.image_size
        task = load_image_task(
            settings.dataset_path,
            processor,
            size,
            settings.dataset_label_name,
            hflip=settings.hflip,
            min_crop_scale=settings.min_crop_scale,
            num_channels=fm_config.num_channels,
        )
        if size != fm_config.image_size:  # the reference trains ViT at 384 px with interpolated position embeddings
            base_collate = task.collate_fn
            task.collate_fn = lambda rows: {**base_collate(rows), "interpolate_pos_encoding": True}
        return task

    def public_corpus(self, settings: FedSettings, processor, fm_config):
        # the task's normalisation (corpus.image_normalisation), so public and task images look alike to the FM
        transform = corpus_lib.fm_image_transform(processor, fm_config, fm_config.image_size, train=True)
        return corpus_lib.load_image_corpus(settings.align.image_corpus, transform), corpus_lib.image_collate


_IMAGE_DEFAULTS = {
    "dataset_path": "../datasets/cifar-10",
    "per_device_eval_batch_size": 128,
    "align_batch_size": 32,
    "align_learning_rate": 1e-3,
    "align_grad_accum_start": 64,
    "align_grad_accum_min": 8,
}
MODALITIES: dict[str, Modality] = {
    "text": Text(**asdict(construction.TEXT), script="fedtune.py", head="AutoModelForSequenceClassification"),
    "image": Image(
        **asdict(construction.IMAGE),
        script="fedtune_cv.py",
        head="AutoModelForImageClassification",
        defaults=_IMAGE_DEFAULTS,
    ),
}


CAUSAL_LM = CausalLM(**asdict(construction.CAUSAL_LM), script="fedtune.py", head="AutoModelForCausalLM")
BY_NAME: dict[str, Modality] = {**MODALITIES, CAUSAL_LM.name: CAUSAL_LM}  # every run modality, by family modality


def of_family(s: FedSettings, family: Family, modality: Modality) -> Modality:
    """The modality a run of this FM takes on the command line of `modality` (a causal LM: the text one's), or one
    line naming the command line that fine-tunes it."""
    own = BY_NAME[family.modality.name]
    if own.command_line.name != modality.command_line.name:
        raise UsageError(f"{s.model_checkpoint} is a {own.fm_kinds} model ({family.name}): use {own.script}")
    return own
