"""The command line: a LightningCLI over every module and data module of the project.

``train.py`` calls :func:`train_main`. Configs name a model and a data module by ``class_path``; the data
module's class count and names are linked into the model, the resolved config is saved into each run's
own folder, the best checkpoint is kept by ModelCheckpoint, and wandb logs offline by default (a CSV
logger takes over when ``WANDB_MODE=disabled`` or wandb is missing).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from explainer.checkpoint import check_resume_checkpoint
from explainer.precision import PrecisionOption, resolve_precision
from explainer.resume import ReproducibleResume, RunCheckpoint
from explainer.runs import finish_loggers, run_dir

DEFAULT_RUNS_DIR = "runs"


DEFAULT_RUN_NAME = "explainer"
RUN_NAMES = {
    "ClassifierModule": "classifier",
    "ExplainerModule": "explainer",
    "RealTimeSaliencyModule": "rtsal",
    "FastSHAPModule": "fastshap",
    "PrototypeModule": "prototypes",
    "InfillerModule": "infiller",
}
"""The folder under ``runs/`` of each stage's runs (with the default logger)."""


def default_logger(save_dir: str = DEFAULT_RUNS_DIR, name: str = DEFAULT_RUN_NAME) -> dict[str, Any]:
    """The default logger, as a config: wandb offline, or CSV when wandb is disabled or missing.

    ``WANDB_MODE=online`` logs online; ``WANDB_MODE=disabled`` (or no wandb installed) selects CSV.
    """
    mode = os.environ.setdefault("WANDB_MODE", "offline")
    if mode == "disabled" or importlib.util.find_spec("wandb") is None:
        return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": save_dir, "name": name}}
    return {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"save_dir": save_dir, "project": name, "offline": mode != "online", "log_model": False},
    }


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run's own folder (never over another run's)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        folder = str(trainer.strategy.broadcast(str(run_dir(trainer))))
        if trainer.is_global_zero:
            fs = get_filesystem(folder)
            fs.makedirs(folder, exist_ok=True)
            self.parser.save(
                self.config,
                os.path.join(folder, self.config_filename),
                skip_none=False,
                overwrite=self.overwrite,
                multifile=self.multifile,
            )
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class ExplainerCLI(LightningCLI):
    """LightningCLI with the project's links and defaults.

    * ``data.num_classes`` and ``data.class_names`` are linked into the model's init args;
    * ``checkpoint.*`` configures the ModelCheckpoint (default: best ``val/loss``);
    * the default logger is wandb offline (see :func:`default_logger`);
    * ``trainer.precision`` also takes ``auto-mixed`` (bf16-mixed on GPUs with bfloat16, 16-mixed on other GPUs,
      32-true on CPU; see :mod:`explainer.precision`), resolved before the Trainer is built.
    """

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # LightningCLI's own, with trainer.precision typed to take auto-mixed as well
        parser.add_class_arguments(
            self.trainer_class, "trainer", fail_untyped=False, instantiate=False, sub_configs=True, skip={"precision"}
        )
        parser.add_argument(
            "--trainer.precision",
            type=PrecisionOption,
            default=None,
            help="Lightning's precision (32-true, bf16-mixed, 16-mixed, ...), or auto-mixed: bf16-mixed on GPUs "
            "with bfloat16, 16-mixed on other GPUs, 32-true on CPU",
        )
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(
            self._datamodule_class,
            "data",
            subclass_mode=self.subclass_mode_data,
            required=self.datamodule_class is not None,
        )

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if subcommand:
            path = self.config[subcommand].get("ckpt_path")
            if path and Path(path).is_file():
                check_resume_checkpoint(path, self.config[subcommand].get("model"))
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        # the default logger files each run under the stage it trains: runs/classifier, runs/explainer, ...
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand) if subcommand else self.config
        logger = config.get("trainer", {}).get("logger") if config is not None else None
        init_args = getattr(logger, "init_args", None)
        trainer = config.get("trainer") if config is not None else None
        if trainer is not None and trainer.get("precision") is not None:  # auto-mixed as this machine's precision
            trainer["precision"] = resolve_precision(trainer["precision"])
        model = config.get("model") if config is not None else None
        model_class = str(getattr(model, "class_path", "") or "")
        for key in ("name", "project"):  # CSVLogger's name, WandbLogger's project
            if init_args is not None and getattr(init_args, key, None) == DEFAULT_RUN_NAME:
                setattr(init_args, key, RUN_NAMES.get(model_class.rsplit(".", 1)[-1], DEFAULT_RUN_NAME))

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-{epoch:02d}-{step}",
            }
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> pl.Trainer:
        # a RichProgressBar unless progress bars are off or another one is configured
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        if config.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in [*configured, *callbacks]
        ):
            callbacks = [*callbacks, RichProgressBar()]
        if not any(isinstance(c, ReproducibleResume) for c in [*configured, *callbacks]):
            callbacks = [*callbacks, ReproducibleResume()]
        return super()._instantiate_trainer(config, callbacks)


def make_cli(args: list[str] | None = None, run: bool = True) -> ExplainerCLI:
    """Builds (and by default runs) the CLI.

    Args:
        args: the arguments (``None`` reads ``sys.argv``), e.g. ``["fit", "--config", "configs/..."]``.
        run: run the subcommand; with ``False``, ``args`` hold no subcommand and only objects are built.

    Returns:
        The CLI, whose ``trainer``, ``model`` and ``datamodule`` can be inspected after the run.
    """
    return ExplainerCLI(
        model_class=None,
        datamodule_class=None,
        save_config_callback=SaveRunConfig,
        trainer_defaults={
            "logger": default_logger(),
            "default_root_dir": DEFAULT_RUNS_DIR,
            "log_every_n_steps": 10,
        },
        seed_everything_default=0,
        args=args,
        run=run,
    )


def train_main(args: list[str] | None = None) -> ExplainerCLI:
    """The entry point of ``train.py``: ``fit``, ``validate``, ``test`` or ``predict`` from configs."""
    return make_cli(args)


__all__ = [
    "ExplainerCLI",
    "finish_loggers",
    "RichProgressBar",
    "SaveRunConfig",
    "default_logger",
    "make_cli",
    "run_dir",
    "train_main",
]
