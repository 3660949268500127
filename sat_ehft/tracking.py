"""Where a stage's scalars go besides its JSONL logs (config `report_to`): TensorBoard, Weights & Biases.

Only rank 0 reports. Weights & Biases follows its own environment (WANDB_MODE=offline writes local files and
needs no account; WANDB_PROJECT, default "sat-ehft"). Its run lives in STAGE/wandb/; the run id is derived from
the stage folder, so a resumed stage reports into the same run, grouped with its run's other stages.
"""

import dataclasses
import hashlib
import os


class TensorBoard:
    def __init__(self, files, config):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(files.tensorboard))

    def log(self, scalars, step):
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self):
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandB:
    def __init__(self, files, config):
        import wandb

        folder = files.folder.resolve()
        run = folder.parent.name
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sat-ehft"), group=run,
                                  name=f"{run}/{folder.name}", id=hashlib.sha256(str(folder).encode()).hexdigest()[:16],
                                  resume="allow", dir=str(folder), config=dataclasses.asdict(config))
        except wandb.errors.Error as err:  # no login, no network: say what to do instead of a traceback
            raise RuntimeError(f"report_to names wandb, but Weights & Biases did not start ({err}). Run `wandb login` "
                               "or set WANDB_API_KEY; WANDB_MODE=offline writes local files to sync later; or drop "
                               "wandb from report_to") from None

    def log(self, scalars, step):
        self.run.log(dict(scalars), step=step)

    def flush(self):
        """wandb writes as it goes."""

    def close(self):
        self.run.finish()


class Trackers:
    """The trackers `config.report_to` names, on rank 0; none on the other ranks."""

    def __init__(self, files, config, rank):
        self.trackers = [TRACKERS[name](files, config) for name in config.report_to] if rank == 0 else []

    def log(self, scalars, step):
        for tracker in self.trackers:
            tracker.log(scalars, step)

    def flush(self):
        for tracker in self.trackers:
            tracker.flush()

    def close(self):
        for tracker in self.trackers:
            tracker.close()


TRACKERS = {"tensorboard": TensorBoard, "wandb": WandB}  # config report_to's names
