"""Start-up of a federated run: task, partition, models with LoRA, public corpus, run folder (spec §4.2–4.4).

Every check that can refuse bad input runs before the run folder is created, so a refused run writes nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from sub_model_construct import corpus as corpus_lib
from sub_model_construct.cli import UsageError
from sub_model_construct.families import UnsupportedModelError, backbone, family_of
from sub_model_construct.sub_model import (
    build_layer_drop_emulator,
    check_derived_from,
    compressed_layers,
    encoder_layer_parameters,
    load_sub_model,
    mebi,
)

from .align import AlignConfig
from .fedparty import (
    ClientTrainer,
    LayerRenamer,
    Server,
    ServerSetup,
    adapter_state,
    check_adapters_match,
    lora_target_regex,
    sample_schedule,
)
from .partition import PartitionError, load_or_create_partition
from .results import RunFolder, run_name

logger = logging.getLogger(__name__)


def seeded_subset(dataset, count: int, seed: int):
    """`count` rows drawn at random (seeded), in their original row order."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return dataset.select(sorted(order[:count]))


def holdout(dataset, share: float, seed: int):
    """The server's validation split: a seeded `share` of an eval split (spec §4.1)."""
    return seeded_subset(dataset, max(1, round(share * len(dataset))), seed)


def local_training_rows(rows: list[int], share: float, seed: int) -> list[int]:
    """A client's training rows once `share` of them is held out as its local validation set (spec §4.1)."""
    if not share:
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    kept = order[int(share * len(rows)) :] or order[-1:]
    return [rows[i] for i in sorted(kept)]


def load_task(args, modality: str):
    from .tasks import TaskError, load_image_task, load_text_task

    try:
        if modality == "text":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.model_checkpoint)
            task = load_text_task(
                args.task_name, args.dataset_path, tokenizer, args.max_length, args.cache_dir, args.dataset_label_name
            )
            return task, tokenizer
        from transformers import AutoConfig, AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(args.model_checkpoint)
        config = AutoConfig.from_pretrained(args.model_checkpoint)
        size = args.image_size or config.image_size
        task = load_image_task(
            args.dataset_path,
            processor,
            size,
            args.dataset_label_name,
            hflip=args.hflip,
            min_crop_scale=args.min_crop_scale,
            num_channels=config.num_channels,
        )
        if size != config.image_size:  # the reference trains ViT at 384 px with interpolated position embeddings
            base_collate = task.collate_fn
            task.collate_fn = lambda rows: {**base_collate(rows), "interpolate_pos_encoding": True}
        return task, processor
    except TaskError as exc:
        raise UsageError(str(exc)) from exc


def load_public_corpus(args, modality: str, tokenizer_or_processor, fm_config):
    """Public corpus for neuron-level alignment (spec §4.10): loaded once at start-up."""
    try:
        if modality == "text":
            paths = [args.distill_dataset1_path or None, args.distill_dataset2_path or None]
            if not any(paths):
                raise corpus_lib.CorpusError("alignment needs a public corpus: give --distill_dataset1_path")
            raw = corpus_lib.load_text_corpora(paths, [None, args.distill_dataset2_config])
            blocks = corpus_lib.text_blocks(raw, tokenizer_or_processor, args.align_block_size, args.cache_dir)
            return blocks, corpus_lib.text_collator(tokenizer_or_processor)
        channels = fm_config.num_channels
        transform = corpus_lib.image_transform(
            fm_config.image_size,
            tokenizer_or_processor.image_mean[:channels],
            tokenizer_or_processor.image_std[:channels],
            channels,
            train=True,
        )
        return corpus_lib.load_image_corpus(args.distill_dataset_path, transform), corpus_lib.image_collate
    except corpus_lib.CorpusError as exc:
        raise UsageError(f"alignment requested (--align_interval {args.align_interval}) but {exc}") from exc


def head_class(modality: str):
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if modality == "text" else AutoModelForImageClassification


def with_lora(model, family, layers, args):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        bias=args.bias,
        target_modules=lora_target_regex(family, layers),
        modules_to_save=list(args.modules_to_save),
    )
    return get_peft_model(model, config)


def build_models(args, modality: str, task):
    """(FM with LoRA, client model with LoRA, renamer, kd_pairs, client and FM encoder-layer parameters)."""
    from transformers import AutoConfig

    fm_config = AutoConfig.from_pretrained(args.model_checkpoint)
    try:
        family = family_of(fm_config)
    except UnsupportedModelError as exc:
        raise UsageError(str(exc)) from exc
    if family.modality != modality:
        raise UsageError(
            f"{args.model_checkpoint} is a {family.modality} model: use fedtune{'_cv' if family.modality == 'image' else ''}.py"
        )
    labels = {"num_labels": task.num_labels, "id2label": task.id2label, "label2id": task.label2id}
    torch.manual_seed(args.seed)  # the FM's new head and LoRA init become the initial global adapter (spec §4.4)
    fm = head_class(modality).from_pretrained(args.model_checkpoint, **labels)
    n = fm_config.num_hidden_layers
    fm_params = encoder_layer_parameters(fm)  # counted before LoRA is injected: the tables' "Params"
    if args.method == "peft":
        fm_peft = with_lora(fm, family, range(n), args)
        return fm_peft, fm_peft, LayerRenamer(family, list(range(n))), [], fm_params, fm_params
    if args.sub_model_checkpoint:
        sub = load_sub_model(args.sub_model_checkpoint, head_class(modality), **labels)
        check_derived_from(sub.config, fm_config, args.sub_model_checkpoint)
    elif args.method == "fedot":
        bottom, top = args.adapter_layers
        middle = n - bottom - top
        sub = build_layer_drop_emulator(fm, bottom, top, args.emulator_layers or max(1, middle // 2))
    sub_config = backbone(sub).config
    layer_map = list(sub_config.layer_map)
    is_emulator = layer_map != list(range(n))
    if args.method == "fedot" and not is_emulator:
        raise UsageError(
            f"--method fedot needs a layer-drop emulator, but {args.sub_model_checkpoint} keeps all layers"
        )
    if args.method == "pft" and is_emulator:
        raise UsageError(f"--method pft needs an FFN-compressed sub-FM, but {args.sub_model_checkpoint} drops layers")
    retained = list(sub_config.layers_retained)
    if args.retained_layers_idx is not None and args.method == "pft" and sorted(args.retained_layers_idx) != retained:
        raise UsageError(
            f"--retained_layers_idx {args.retained_layers_idx} differs from the sub-FM's layers_retained "
            f"{retained}; leave it out (it is read from the sub-FM config)"
        )
    sub_params = encoder_layer_parameters(sub)
    # FedOT tunes the adapters (bottom/top layers) only; FedPFT tunes attention LoRA in every layer
    sub_lora_layers = retained if args.method == "fedot" else list(range(len(layer_map)))
    fm_peft = with_lora(fm, family, [layer_map[j] for j in sub_lora_layers], args)
    client = with_lora(sub, family, sub_lora_layers, args)
    renamer = LayerRenamer(family, layer_map)
    check_adapters_match(renamer.to_fm(adapter_state(client)), adapter_state(fm_peft))
    compressed = compressed_layers(sub_config) if args.method == "pft" else []
    pairs = [(sub_config.layer_targets[j], j) for j in compressed]
    return fm_peft, client, renamer, pairs, sub_params, fm_params


def run_folder(args, accelerator) -> RunFolder:
    """fed-result/<task>/<sub-FM or FM name>/<run name> (spec §4.12)."""
    model_name = os.path.basename(
        os.path.normpath(
            args.sub_model_checkpoint if args.method != "peft" and args.sub_model_checkpoint else args.model_checkpoint
        )
    )
    if args.method == "fedot" and not args.sub_model_checkpoint:
        model_name = f"fedot-{os.path.basename(os.path.normpath(args.model_checkpoint))}"
    return RunFolder(Path(args.output_root) / args.task_name / model_name / run_name(args), accelerator.is_main_process)


def resolve_resume(args, run: RunFolder) -> tuple[bool, bool] | None:
    """(resume, overwrite) for this run folder; None when `--resume auto` finds the run already finished.
    auto: a finished run is skipped, one with a round checkpoint resumed, anything else started afresh."""
    if args.resume != "auto":
        return bool(args.resume), bool(args.overwrite)
    if run.is_finished():
        return None
    if run.latest_checkpoint() is not None:
        return True, False
    return False, True


def build_server(args, accelerator, modality: str) -> Server | None:
    run = run_folder(args, accelerator)
    decided = resolve_resume(args, run)
    if decided is None:
        if accelerator.is_main_process:
            print(f"{args.method}: finished run found in {run.path}; skipped (--resume auto)")
        return None
    resume, overwrite = decided
    with accelerator.main_process_first():  # the main process fills the tokenisation cache, the others read it
        task, preprocessor = load_task(args, modality)
    if args.test_holdout:  # spec §4.1: evaluate on a seeded validation share of each eval split ("server_val")
        task.eval_splits = {k: holdout(v, args.test_holdout, args.seed) for k, v in task.eval_splits.items()}
    if args.max_eval_samples:  # a seeded random subset (a split stored in label order has one class first)
        task.eval_splits = {
            k: seeded_subset(v, min(args.max_eval_samples, len(v)), args.seed) for k, v in task.eval_splits.items()
        }
    if args.num_clients > len(task.train):
        raise UsageError(
            f"--num_clients {args.num_clients} is larger than the training set ({len(task.train)} examples)"
        )
    valid = {f"{k + '_' if k else ''}{m}" for k in task.eval_splits for m in (*task.metric_names, "loss")}
    default_metric = "accuracy" if "accuracy" in valid else sorted(m for m in valid if m.endswith("accuracy"))[0]
    metric = args.metric_for_best_model or default_metric
    if metric not in valid:
        raise UsageError(f"--metric_for_best_model {metric} is not produced for this task; choose from {sorted(valid)}")
    aligning = args.method == "pft" and 0 < args.align_interval < args.num_rounds
    fm_peft, client, renamer, pairs, client_params, fm_params = build_models(args, modality, task)
    public = collate = None
    if aligning:
        from transformers import AutoConfig

        with accelerator.main_process_first():
            public, collate = load_public_corpus(
                args, modality, preprocessor, AutoConfig.from_pretrained(args.model_checkpoint)
            )
    if run.path.exists() and not (resume or overwrite):
        raise UsageError(
            f"run folder {run.path} exists; pass --resume True (or auto) to continue it or --overwrite True"
        )
    checkpoint = run.latest_checkpoint() if resume else None
    if resume and checkpoint is None:
        raise UsageError(f"--resume: no round checkpoint in {run.path}")
    try:
        with accelerator.main_process_first():
            partition = load_or_create_partition(
                args.task_root,
                args.task_name,
                task.train_labels,
                args.num_clients,
                args.partitioner,
                args.dir_alpha,
                args.diversity,
                args.imbalance,
                args.seed if args.partition_seed is None else args.partition_seed,
                write=accelerator.is_main_process,
                dataset_identity=task.identity,
            )
    except PartitionError as exc:
        raise UsageError(str(exc)) from exc

    run.prepare(resume=resume, overwrite=overwrite)
    fm_peft.to(accelerator.device)
    client.to(accelerator.device)
    world = accelerator.num_processes
    trainer = ClientTrainer(
        model=client,
        datasets=[task.train.select(local_training_rows(idx, args.train_holdout, args.seed)) for idx in partition],
        collate=task.collate_fn,
        micro_batch_size=args.per_device_train_batch_size,
        effective_batch_size=args.per_device_train_batch_size * world * args.gradient_accumulation_steps,
        num_epochs=args.num_epochs,
        max_grad_norm=args.max_grad_norm,
        device=accelerator.device,
        count_layers=[s for _, s in pairs],
    )
    schedule = sample_schedule(
        args.num_clients, args.proportion, args.num_rounds, args.sample, [len(p) for p in partition], args.seed
    )
    align_config = AlignConfig(
        batch_size=args.align_batch_size,
        learning_rate=args.align_learning_rate,
        warmup_ratio=args.align_warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        epochs=args.align_epochs,
        retained_ratio=args.align_retained_ratio,
    )
    info = {
        "client_encoder_layer_parameters": client_params,
        "fm_encoder_layer_parameters": fm_params,
        "metric_for_best_model": metric,
        "aligning": aligning,
        # FedPFT_N/_D and FedOT w/o KD use an undistilled client model (spec §4.13): say which this run had
        "client_model_distilled": None
        if args.method == "peft"
        else bool(args.sub_model_checkpoint)
        and os.path.isfile(os.path.join(args.sub_model_checkpoint, "distill_summary.json")),
    }
    if accelerator.is_main_process:
        logger.info(
            "%s on %s: %d clients, %d per round, client model %s of FM %s encoder-layer parameters",
            args.method,
            args.task_name,
            args.num_clients,
            len(schedule[0]),
            mebi(client_params),
            mebi(fm_params),
        )
    run.write_config({"args": vars(args), **info})
    server = Server(
        ServerSetup(
            args=args,
            accelerator=accelerator,
            task=task,
            fm=fm_peft,
            client_model=client,
            renamer=renamer,
            clients=trainer,
            schedule=schedule,
            run=run,
            metric=metric,
            kd_pairs=pairs,
            public_data=public,
            public_collate=collate,
            align_config=align_config,
        )
    )
    server.info = info
    if checkpoint is not None:
        server.restore(checkpoint)
    return server
