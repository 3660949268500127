"""Figure 5's measurement: how far the backbone has moved from its pretrained weights, after every epoch."""

import json
from pathlib import Path

from sat_ehft.atomic import write_text
from sat_ehft.mixins import is_backbone_parameter


def backbone_distance(model, reference):
    """L2 norm of (backbone parameters - reference), over the parameters named in `reference`."""
    params = dict(model.named_parameters())
    return sum(float((params[n].detach().float() - ref).pow(2).sum()) for n, ref in reference.items()) ** 0.5


class WeightDistanceLog:
    """Figure 5: after every epoch, the backbone's L2 distance from where the stage started (the
    pretrained weights), in STAGE/weight_distance.jsonl."""

    def __init__(self, model, folder):
        self.path = Path(folder) / "weight_distance.jsonl"
        self.start = {n: p.detach().float().clone() for n, p in model.named_parameters() if is_backbone_parameter(n)}
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.is_file() else []

    def __call__(self, model, record):
        self.rows = [r for r in self.rows if r["epoch"] < record["epoch"]]
        self.rows.append({"epoch": record["epoch"], "step": record["step"],
                          "distance": backbone_distance(model, self.start)})
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
