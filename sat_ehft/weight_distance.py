"""Figure 5's measurement: how far the backbone has moved from its pretrained weights, after every epoch and
(with `every`) every N optimizer steps over the first 1,000, the span the paper's Figure 5 plots."""

import json
from pathlib import Path

from sat_ehft.atomic import write_text
from sat_ehft.mixins import is_backbone_parameter


def backbone_distance(model, reference):
    """L2 norm of (backbone parameters - reference), over the parameters named in `reference`."""
    params = dict(model.named_parameters())
    return sum(float((params[n].detach().float() - ref).pow(2).sum()) for n, ref in reference.items()) ** 0.5


FIGURE5_STEPS = 1000


class WeightDistanceLog:
    """Figure 5: the backbone's L2 distance from where the stage started (the pretrained weights), in
    STAGE/weight_distance.jsonl: after every epoch ({epoch, step, distance}) and, with `every`, every `every`
    optimizer steps up to step 1,000 ({step, distance}). A row at step s replaces any row at s or later: those
    come from a start that was cut and are trained again."""

    def __init__(self, model, folder, every=0):
        self.path, self.every = Path(folder) / "weight_distance.jsonl", every
        self.start = {n: p.detach().float().clone() for n, p in model.named_parameters() if is_backbone_parameter(n)}
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []

    def _add(self, row, model):
        self.rows = [r for r in self.rows if r["step"] < row["step"]]
        self.rows.append({**row, "distance": backbone_distance(model, self.start)})

    def on_step(self, model, step):
        if self.every and step % self.every == 0 and step <= FIGURE5_STEPS:
            self._add({"step": step}, model)

    def __call__(self, model, record):
        self._add({"epoch": record["epoch"], "step": record["step"]}, model)
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
