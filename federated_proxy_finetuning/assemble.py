"""Start-up of a federated run (spec §4.2-4.4): task, partition, models with LoRA, aligner, run folder, composed
into a `server.Federation`. A method is a composition: the client model (the FM itself, a sub-FM or an emulator),
a layer renamer (the identity unless the emulator drops layers) and an aligner or none (FedPFT aligns).

Every check that can refuse bad input runs before the run folder is created, so a refused run writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import re
import shutil
from pathlib import Path

import torch

from sub_model_construct import io, reads
from sub_model_construct.cli import UsageError
from sub_model_construct.families import backbone, family_of
from sub_model_construct.sub_model import mebi
from sub_model_construct.typed_settings import as_flags

from .adapters import adapter_state, state_bytes
from .align import activation_threshold, alignment_parameters
from .aligner import Aligner
from .client import ClientTrainer
from .modality import Modality
from .models import build_models, fm_family
from .partition import PartitionError, load_or_create_partition
from .results import RunFolder
from .sampling import sample_schedule
from .server import Federation, Server
from .settings import FedSettings

logger = logging.getLogger(__name__)


def local_training_rows(rows: list[int], share: float, seed: int) -> list[int]:
    """A client's training rows once `share` of them is held out as its local validation set (spec §4.1)."""
    if not share:
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    kept = order[int(share * len(rows)) :] or order[-1:]
    return [rows[i] for i in sorted(kept)]


def trim_eval_splits(task, s: FedSettings) -> None:
    """spec §4.1: a seeded validation share of each eval split ("server_val"); then a seeded random subset (a
    split stored in label order has one class first)."""
    if s.partition.test_holdout:
        share = s.partition.test_holdout
        task.subset_eval(lambda rows: max(1, round(share * rows)), s.seed)
    if s.max_eval_samples:
        task.subset_eval(lambda rows: min(s.max_eval_samples, rows), s.seed)


def best_model_metric(task, s: FedSettings) -> str:
    valid = {f"{k + '_' if k else ''}{m}" for k in task.eval_splits for m in (*task.metric_names, "loss")}
    default = "accuracy" if "accuracy" in valid else sorted(m for m in valid if m.endswith("accuracy"))[0]
    metric = s.metric_for_best_model or default
    if metric not in valid:
        raise UsageError(f"--metric_for_best_model {metric} is not produced for this task; choose from {sorted(valid)}")
    return metric


def resolve_resume(s: FedSettings, run: RunFolder) -> tuple[bool, bool] | None:
    """(resume, overwrite) for this run folder; None when `--resume auto` finds the run already finished.
    auto: a finished run is skipped, one with a round checkpoint resumed, anything else started afresh."""
    if s.resume != "auto":
        return bool(s.resume), bool(s.overwrite)
    if run.is_finished():
        return None
    if run.latest_checkpoint() is not None:
        return True, False
    return False, True


def client_partition(s: FedSettings, task, accelerator) -> list[list[int]]:
    p = s.partition
    try:
        with accelerator.main_process_first():
            return load_or_create_partition(
                p.task_root, s.task_name, task.train_labels, s.num_clients, p.partitioner, p.dir_alpha,
                p.diversity, p.imbalance, s.partition_seed, write=accelerator.is_main_process,
                dataset_identity=task.identity,
            )  # fmt: skip
    except PartitionError as exc:
        raise UsageError(str(exc)) from exc


def client_trainer(s: FedSettings, task, partition, client_model, layers, accelerator) -> ClientTrainer:
    holdout = s.partition.train_holdout
    return ClientTrainer(
        model=client_model,
        datasets=[task.train.select(local_training_rows(rows, holdout, s.seed)) for rows in partition],
        collate=task.collate_fn,
        micro_batch_size=s.per_device_train_batch_size,
        effective_batch_size=s.effective_batch_size,
        num_epochs=s.num_epochs,
        max_grad_norm=s.max_grad_norm,
        device=accelerator.device,
        count_layers=layers,
        count_threshold=activation_threshold(s.align.activation_threshold, family_of(backbone(client_model).config)),
    )


def load_data(s: FedSettings, modality: Modality, accelerator, fm_config):
    """(task, preprocessor): tokenisation is cached by the main process first, read by the others."""
    preprocessor = modality.preprocessor(s.model_checkpoint)
    with accelerator.main_process_first():
        task = modality.task(s, preprocessor, fm_config)
    trim_eval_splits(task, s)
    if s.num_clients > len(task.train):
        raise UsageError(f"--num_clients {s.num_clients} is larger than the training set ({len(task.train)} examples)")
    return task, preprocessor


def extension_source(s: FedSettings, run: RunFolder) -> Path | None:
    """`--resume True` on a run folder that does not exist: the same run with fewer rounds, when there is one, is
    extended to --num_rounds (copied, then continued from its last round checkpoint). Refused with the reason
    where the first rounds would not have been the same had the run been started with --num_rounds."""
    if s.resume is not True or run.path.exists():
        return None
    sources = {}
    for folder in run.path.parent.glob(f"{s.method}-*"):
        match = re.search(r"-rounds(\d+)-", folder.name)
        old = dataclasses.replace(s, num_rounds=int(match.group(1))) if match else None
        if (
            old is not None
            and old.num_rounds < s.num_rounds
            and re.sub(r"-rounds\d+-|-align(True|False)-", "", old.run_name)
            == re.sub(r"-rounds\d+-|-align(True|False)-", "", folder.name)
        ):
            sources[old.num_rounds] = (folder, old)
    if not sources:
        return None
    folder, old = sources[max(sources)]
    why = extension_refusal(old, s)
    if why:
        raise UsageError(f"--resume: {folder} cannot be extended to {s.num_rounds} rounds: {why}")
    if old.run_name != folder.name:
        return None
    return folder


def extension_refusal(old: FedSettings, new: FedSettings) -> str | None:
    """Why rounds 1..R_old of `old` differ from those of `new` (None when they are the same)."""
    if new.lr_scheduler_type == 2:
        return "the linear learning-rate decay (--lr_scheduler_type 2) depends on --num_rounds"
    if old.aligning != new.aligning:
        return f"alignment every {new.align.interval} rounds is off with {old.num_rounds} rounds (t >= R)"
    if old.evaluates_in(old.num_rounds) != new.evaluates_in(old.num_rounds):
        return (
            f"round {old.num_rounds} was evaluated as the last round but is not on --eval_interval {new.eval_interval}"
        )
    return None


def check_outputs(s: FedSettings, run: RunFolder, fm_peft, client, aligner) -> None:
    """The run folder and the partition cache can be written, with room for a few round checkpoints."""
    checkpoint = state_bytes(adapter_state(fm_peft))
    if aligner is not None:
        family = family_of(backbone(client).config)
        checkpoint += sum(p.numel() * p.element_size() for _, p in alignment_parameters(client, family, aligner.layers))
    io.check_writable(run.path, "run folder", 4 * checkpoint + (1 << 20))
    io.check_writable(s.partition.task_root, "partition cache folder (--task_root)")


def build_server(s: FedSettings, accelerator, modality: Modality) -> Server | None:
    run = RunFolder(s.run_path, accelerator.is_main_process)
    run.lock.check()  # a run folder in use by another run is refused whatever the flags
    decided = resolve_resume(s, run)
    if decided is None:
        if accelerator.is_main_process:
            print(f"{s.method}: finished run found in {run.path}; skipped (--resume auto)")
        return None
    resume, overwrite = decided
    fm_config = reads.config(s.model_checkpoint)
    _, modality = fm_family(s, modality, fm_config)  # a causal LM on the text command line: the causal-LM modality
    s.check_model_limits(fm_config, modality)
    if s.cache_dir:  # written by the tokenisation, before the outputs are checked below
        io.check_writable(s.cache_dir, "tokenised-data cache folder (--cache_dir)")
    task, preprocessor = load_data(s, modality, accelerator, fm_config)
    metric = best_model_metric(task, s)
    fm_peft, client, renamer, pairs, client_params, fm_params = build_models(s, modality, task, fm_config)
    aligner = None
    if s.aligning:
        with accelerator.main_process_first():
            public, collate = modality.corpus(s, preprocessor, fm_config)
        aligner = Aligner(s.align, pairs, public, collate, s.max_grad_norm, s.seed)
    if run.path.exists() and not (resume or overwrite):
        raise UsageError(
            f"run folder {run.path} exists; pass --resume True (or auto) to continue it or --overwrite True"
        )
    source = extension_source(s, run)
    resumed = RunFolder(source, accelerator.is_main_process) if source else run
    checkpoint = resumed.latest_checkpoint() if resume else None
    if resume and checkpoint is None:
        raise UsageError(f"--resume: no round checkpoint in {run.path}")
    resume_from = None
    if checkpoint is not None:
        keys = ("round", "sync", "grad_accum") if aligner is not None else ("round", "sync")
        resume_from = resumed.read_checkpoint(checkpoint, keys)
        logger.info("resuming from %s (round %d)", checkpoint, resume_from[0]["round"])
    check_outputs(s, run, fm_peft, client, aligner)
    partition = client_partition(s, task, accelerator)
    if accelerator.is_main_process:
        run.lock.acquire()
    try:
        return start(s, accelerator, run, source, resume_from, resume, overwrite, task, partition, metric,
                     (fm_peft, client, renamer, client_params, fm_params), aligner)  # fmt: skip
    except BaseException:
        run.lock.release()
        raise


def hardware(accelerator) -> dict:
    """Where the run's numbers come from (config.json): device, its name, processes and torch threads."""
    device = accelerator.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return {
        "device": str(device),
        "name": name,
        "processes": accelerator.num_processes,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def start(s, accelerator, run, source, resume_from, resume, overwrite, task, partition, metric, models, aligner):
    """Everything that writes: the run folder (a copy of the run it extends), config.json, the server."""
    fm_peft, client, renamer, client_params, fm_params = models
    if source is not None and accelerator.is_main_process:
        with io.atomic_folder(run.path) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        logger.info("extending %s to %d rounds in %s", source, s.num_rounds, run.path)
    accelerator.wait_for_everyone()
    run.prepare(resume=resume, overwrite=overwrite)
    fm_peft.to(accelerator.device)
    client.to(accelerator.device)
    trainer = client_trainer(s, task, partition, client, aligner.layers if aligner else [], accelerator)
    schedule = sample_schedule(s.num_clients, s.proportion, s.num_rounds, s.sample, [len(x) for x in partition], s.seed)
    info = {
        "client_encoder_layer_parameters": client_params,
        "fm_encoder_layer_parameters": fm_params,
        "metric_for_best_model": metric,
        "aligning": s.aligning,
        "client_model_distilled": s.client_model_distilled,
    }
    if accelerator.is_main_process:
        layers = "decoder" if task.modality == "causal-lm" else "encoder"
        logger.info(
            "%s on %s: %d clients, %d per round, client model %s of FM %s %s-layer parameters",
            s.method, s.task_name, s.num_clients, len(schedule[0]), mebi(client_params), mebi(fm_params), layers,
        )  # fmt: skip
    run.write_config({"args": as_flags(s), **info, "hardware": hardware(accelerator)})
    return Server(
        Federation(
            s, accelerator, task, fm_peft, client, renamer, trainer, schedule, run, metric, aligner, info,
            resume_from=resume_from,
        )
    )  # fmt: skip
